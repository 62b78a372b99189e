//! What an operator of a deployment relies on, against real pods:
//! - the OpenAPI document a pod serves is `docs/openapi.json` (regenerate it
//!   with `SEGSWARM_WRITE_OPENAPI=1 cargo test --release --test
//!   pod_operations openapi`), and every operation it lists is routed;
//! - `SEGSWARM_LOG_FORMAT=json` writes one JSON object per line, with an
//!   `info` line per unit the pod finished (job, unit, seconds, worker); a
//!   wrong value stops the pod with a message;
//! - what a SIGKILLed pod left in a job's `.tmp/` is swept by another pod
//!   once the job is done, though nobody ever starts that job again.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use common::{gen_clip, wait_for, ClipSpec, Pod, RedisServer, TestDir};

const JOB_LIMIT: Duration = Duration::from_secs(240);

fn docs_openapi() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_openapi_document_is_docs_openapi_json_and_every_operation_is_routed() {
    let dir = TestDir::new("openapi");
    let pod = Pod::start(&dir.join("storage"), &[("SEGSWARM_API_TOKEN", "t0ken")]).await;
    // Public, like the dashboard: no token needed for the document.
    let response = pod
        .client()
        .get(pod.url("/v1/openapi.json"))
        .send()
        .await
        .expect("GET /v1/openapi.json");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let served_text = response.text().await.unwrap();
    let served: Value = serde_json::from_str(&served_text).expect("the document is JSON");
    if std::env::var_os("SEGSWARM_WRITE_OPENAPI").is_some() {
        std::fs::write(docs_openapi(), &served_text).expect("write docs/openapi.json");
    }
    let kept: Value = serde_json::from_str(
        &std::fs::read_to_string(docs_openapi()).expect("read docs/openapi.json"),
    )
    .expect("docs/openapi.json is JSON");
    assert!(
        served == kept,
        "docs/openapi.json differs from what a pod serves: regenerate it with \
         SEGSWARM_WRITE_OPENAPI=1 cargo test --release --test pod_operations openapi"
    );
    assert!(served["openapi"].as_str().unwrap().starts_with("3.1."));

    // Every documented operation reaches a handler: neither the router's
    // fallback (404 "no such route") nor a 405.
    let unknown_job = uuid::Uuid::new_v4().to_string();
    let mut operations = 0;
    for (path, item) in served["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let target = path
                .replace("{id}", &unknown_job)
                .replace("{path}", "master.m3u8");
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let request = pod.request(method.clone(), &target);
            let request = if method == reqwest::Method::POST {
                request.json(&json!({ "source": "/nowhere/clip.mp4" }))
            } else {
                request
            };
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            assert!(
                status != 405 && !body.contains("no such route"),
                "{method} {target} is documented but not routed: {status} {body}"
            );
            operations += 1;
        }
    }
    assert_eq!(operations, 11, "operations in the document");
    // The token is enforced where the document says it is.
    let status = pod
        .client()
        .get(pod.url("/v1/jobs"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    assert_eq!(
        served["paths"]["/v1/jobs"]["get"]["security"],
        json!([{ "bearer": [] }])
    );
}

/// Every line of `log` as JSON; panics on a line that is not an object.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
            assert!(value.is_object(), "log line is not an object: {line}");
            value
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_every_unit_a_pod_finished() {
    let dir = TestDir::new("json-logs");
    let source = dir.join("clip.mp4");
    gen_clip(&source, &ClipSpec::new(4.0).size(320, 240));
    let pod = Pod::builder(&dir.join("storage"))
        .env("SEGSWARM_LOG_FORMAT", "json")
        .env("SEGSWARM_WORKER_ID", "pod-json")
        .env("SEGSWARM_SOURCE_ROOTS", dir.path().to_str().unwrap())
        .env("SEGSWARM_LADDER", "240p")
        .start()
        .await;
    let job = pod
        .submit(json!({ "source": source.to_str().unwrap() }))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let job = pod.wait_terminal(&id, JOB_LIMIT).await;
    assert_eq!(job["status"], "done", "{job}");
    let segments = job["renditions"][0]["total"].as_u64().unwrap() as usize;
    let units = segments + 2; // + the audio track and the thumbnail

    let lines = json_lines(&pod.log_text());
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["timestamp"].is_string()));
    let finished: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "unit done")
        .collect();
    let names: BTreeSet<String> = finished
        .iter()
        .map(|l| l["unit"].as_str().expect("unit field").to_string())
        .collect();
    assert_eq!(finished.len(), units, "one line per unit: {finished:?}");
    assert_eq!(names.len(), units, "each unit once: {names:?}");
    assert!(
        names.contains("thumbnail") && names.contains("audio/0"),
        "{names:?}"
    );
    assert!(names.contains("video/240p/0"), "{names:?}");
    for line in &finished {
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["job"], id.as_str());
        assert_eq!(line["worker"], "pod-json");
        assert!(line["seconds"].as_f64().is_some_and(|s| s > 0.0), "{line}");
    }

    // A format the pod does not know stops it with a message.
    let (status, output) = Pod::builder(&dir.join("other"))
        .env("SEGSWARM_LOG_FORMAT", "xml")
        .run_until_exit(Duration::from_secs(20));
    let status = status.expect("the pod exits");
    assert!(!status.success());
    assert!(output.contains("xml"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pods_tmp_files_are_swept_once_the_job_is_done() {
    let dir = TestDir::new("tmp-sweep");
    let source = dir.join("clip.mp4");
    gen_clip(&source, &ClipSpec::new(12.0).size(640, 360));
    let redis = RedisServer::start();
    let storage = dir.join("storage");
    let start = |name: &'static str| {
        Pod::builder(&storage)
            .env("REDIS_URL", redis.url())
            .env("SEGSWARM_WORKER_ID", name)
            .env("SEGSWARM_SOURCE_ROOTS", dir.path().to_str().unwrap())
            .env("SEGSWARM_CLAIM_TTL_MS", "2000")
            // The sweep's "nobody writes this any more" age.
            .env("SEGSWARM_STALL_TIMEOUT", "5")
            .env("SEGSWARM_SLOTS", "1")
            .start()
    };
    let pod_a = start("pod-a").await;
    let pod_b = start("pod-b").await;
    let job = pod_a
        .submit(json!({ "source": source.to_str().unwrap() }))
        .await;
    let id = job["id"].as_str().unwrap().to_string();

    // Kill pod-a while it holds a claim whose in-progress file exists.
    let claim_pattern = format!("segswarm:{{{id}}}:claim:*");
    let tmp = storage.join("jobs").join(&id).join(".tmp");
    let mut victim_token = None;
    let found = wait_for(Duration::from_secs(120), || {
        for key in redis.keys(&claim_pattern) {
            let value: Option<String> = redis.command(&["GET", &key]);
            if let Some((token, "pod-a")) = value.as_deref().and_then(|v| v.split_once(' ')) {
                let exists = std::fs::read_dir(&tmp)
                    .map(|entries| {
                        entries
                            .flatten()
                            .any(|e| e.file_name().to_string_lossy().starts_with(token))
                    })
                    .unwrap_or(false);
                if exists {
                    victim_token = Some(token.to_string());
                    return true;
                }
            }
        }
        false
    })
    .await;
    assert!(found, "pod-a never held a unit with a file in .tmp/");
    kill(Pid::from_raw(pod_a.pid() as i32), Signal::SIGKILL).expect("SIGKILL pod-a");
    let token = victim_token.unwrap();

    let job = pod_b.wait_terminal(&id, JOB_LIMIT).await;
    assert_eq!(job["status"], "done", "{job}");
    let left_by_a = |token: &str| {
        std::fs::read_dir(&tmp)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(token))
                    .count()
            })
            .unwrap_or(0)
    };
    // The kill stranded pod-a's file: nobody publishes or removes it but
    // the sweep (ffmpeg, in its own process group, may outlive the pod and
    // finish writing it).
    let swept = wait_for(Duration::from_secs(60), || {
        std::fs::read_dir(&tmp)
            .map(|mut entries| entries.next().is_none())
            .unwrap_or(true)
    })
    .await;
    assert!(
        swept,
        ".tmp/ of the done job still holds {} file(s) of pod-a and others: {:?}",
        left_by_a(&token),
        std::fs::read_dir(&tmp)
            .map(|e| e.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
            .unwrap_or_default()
    );
    assert!(
        pod_b
            .log_text()
            .contains("removed stale in-progress files of an ended job"),
        "pod-b says what it swept:\n{}",
        pod_b.log_text()
    );
}
