//! The OpenAPI 3.1 document of the whole HTTP API (but the dashboard's
//! pages), served at `/v1/openapi.json` and kept as `docs/openapi.json`.
//!
//! It is generated, not written: utoipa gathers the `#[utoipa::path]`
//! description each handler carries and the schemas of the types the
//! handlers take and return (`SubmitRequest`, `JobView`, `ErrorBody`, ...),
//! so a field added to a type is in the document at once. A test compares
//! the document a real pod serves with `docs/openapi.json`, and
//! `scripts/api-fuzz` runs schemathesis against a pod with it.

use super::{cluster, files, jobs};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::sync::OnceLock;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The bytes of a binary file (a segment, a picture).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // a schema only: the files are streamed from storage
pub struct FileBytes(Vec<u8>);

/// An OpenAPI document (this one).
#[derive(ToSchema)]
#[schema(value_type = Object)]
#[allow(dead_code)] // a schema only
pub struct OpenApiDocument(serde_json::Value);

#[derive(OpenApi)]
#[openapi(
    info(
        title = "segswarm",
        description = "The HTTP API every segswarm pod serves: jobs, their events, the HLS files, the cluster view, metrics and probes. Any pod answers for any job. With `SEGSWARM_API_TOKEN` set, `/v1/*` (but this document) needs `Authorization: Bearer <token>`. Errors are `{\"error\": {\"code\", \"message\"}}`.",
        license(name = "Apache-2.0"),
    ),
    paths(
        jobs::submit,
        jobs::list,
        jobs::show,
        jobs::cancel,
        jobs::events,
        cluster::cluster,
        files::serve,
        serve,
        super::metrics,
        super::healthz,
        super::readyz,
    ),
    modifiers(&BearerToken),
    tags(
        (name = "jobs", description = "Submit, follow, list and cancel jobs"),
        (name = "hls", description = "The HLS packages, made on demand when a file is missing"),
        (name = "cluster", description = "What a pod sees of the cluster"),
        (name = "operations", description = "Metrics, probes and this document"),
    ),
)]
struct ApiDoc;

/// Adds the bearer token scheme the `/v1/*` operations name.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document as pretty JSON with a final newline, as `docs/openapi.json`
/// holds it; built once.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut text = ApiDoc::openapi().to_pretty_json().unwrap_or_else(|err| {
            format!("{{\"error\": \"the OpenAPI document does not serialize: {err}\"}}")
        });
        text.push('\n');
        text
    })
}

/// This document.
#[utoipa::path(
    get, path = "/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = OpenApiDocument)),
)]
pub(super) async fn serve() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_openapi_3_1_with_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::document()).unwrap();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        let paths = doc["paths"].as_object().unwrap();
        for (path, method) in [
            ("/v1/jobs", "post"),
            ("/v1/jobs", "get"),
            ("/v1/jobs/{id}", "get"),
            ("/v1/jobs/{id}", "delete"),
            ("/v1/jobs/{id}/events", "get"),
            ("/v1/cluster", "get"),
            ("/hls/{id}/{path}", "get"),
            ("/v1/openapi.json", "get"),
            ("/metrics", "get"),
            ("/healthz", "get"),
            ("/readyz", "get"),
        ] {
            assert!(
                paths[path][method].is_object(),
                "{method} {path} is documented"
            );
        }
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in [
            "SubmitRequest",
            "JobView",
            "JobStatus",
            "ErrorBody",
            "ClusterView",
        ] {
            assert!(schemas.contains_key(name), "schema {name}");
        }
        // Unknown fields are refused by the API, and the schema says so.
        assert_eq!(schemas["SubmitRequest"]["additionalProperties"], false);
    }
}
