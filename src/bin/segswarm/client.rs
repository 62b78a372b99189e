//! `segswarm submit` and `segswarm status`: small clients of a pod's API.

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use std::process::ExitCode;

/// Where the pod's API is and how to authenticate.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Base URL of a pod.
    #[arg(long, env = "SEGSWARM_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Bearer token, when the pod requires one.
    #[arg(long, env = "SEGSWARM_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// Source path (under the pod's SEGSWARM_SOURCE_ROOTS) or http(s) URL.
    pub source: String,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Ladder, e.g. `240p,360p,720p`.
    #[arg(long)]
    pub ladder: Option<String>,
    #[arg(long)]
    pub segment_duration: Option<u32>,
    #[arg(long)]
    pub priority: Option<i32>,
    /// `ingest` (encode everything now) or `on_demand`.
    #[arg(long)]
    pub mode: Option<String>,
    #[arg(long)]
    pub callback_url: Option<String>,
    /// Follow the job's events until it ends.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Job id.
    pub job: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

fn request(
    client: &reqwest::Client,
    method: reqwest::Method,
    server: &ServerArgs,
    path: &str,
) -> reqwest::RequestBuilder {
    let url = format!("{}{}", server.server.trim_end_matches('/'), path);
    let builder = client.request(method, url);
    match &server.token {
        Some(token) => builder.bearer_auth(token),
        None => builder,
    }
}

/// Turns an API response into its JSON body, or an error with the API's
/// message.
async fn json_of(response: reqwest::Response) -> anyhow::Result<serde_json::Value> {
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    let message = body["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| body.to_string());
    anyhow::bail!("{status}: {message}")
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::new();
    // A relative path means "here", not the pod's working folder.
    let source = match std::path::Path::new(&args.source) {
        path if !args.source.contains("://") && path.is_relative() && path.exists() => {
            std::path::absolute(path)
                .map(|p| p.display().to_string())
                .unwrap_or(args.source.clone())
        }
        _ => args.source.clone(),
    };
    let mut body = serde_json::json!({ "source": source });
    if let Some(ladder) = &args.ladder {
        body["ladder"] = ladder.as_str().into();
    }
    if let Some(seconds) = args.segment_duration {
        body["segment_duration"] = seconds.into();
    }
    if let Some(priority) = args.priority {
        body["priority"] = priority.into();
    }
    if let Some(mode) = &args.mode {
        body["mode"] = mode.as_str().into();
    }
    if let Some(url) = &args.callback_url {
        body["callback_url"] = url.as_str().into();
    }
    let response = request(&client, reqwest::Method::POST, &args.server, "/v1/jobs")
        .json(&body)
        .send()
        .await
        .with_context(|| format!("connecting to {}", args.server.server))?;
    let job = json_of(response).await?;
    println!("{}", serde_json::to_string_pretty(&job)?);
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let id = job["id"]
        .as_str()
        .context("the pod answered without a job id")?;
    follow(&client, &args.server, id).await
}

/// Prints a job's events until it ends; the exit code follows its status.
async fn follow(
    client: &reqwest::Client,
    server: &ServerArgs,
    id: &str,
) -> anyhow::Result<ExitCode> {
    let response = request(
        client,
        reqwest::Method::GET,
        server,
        &format!("/v1/jobs/{id}/events"),
    )
    .send()
    .await
    .context("following job events")?;
    if !response.status().is_success() {
        json_of(response).await?;
        anyhow::bail!("the event stream ended at once");
    }
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut last_event = String::new();
    while let Some(chunk) = stream.next().await {
        buffer.push_str(&String::from_utf8_lossy(
            &chunk.context("reading job events")?,
        ));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut event = "";
            let mut data = "";
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    event = value.trim();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data = value.trim();
                }
            }
            if event.is_empty() {
                continue;
            }
            let job: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
            println!("{event} {:.1}%", job["progress"].as_f64().unwrap_or(0.0));
            if let Some(error) = job["error"].as_str() {
                if matches!(event, "failed" | "partial") {
                    eprintln!("{event}: {error}");
                }
            }
            last_event = event.to_string();
        }
    }
    Ok(match last_event.as_str() {
        "done" => ExitCode::SUCCESS,
        "partial" => ExitCode::from(3),
        _ => ExitCode::FAILURE,
    })
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::new();
    let response = request(
        &client,
        reqwest::Method::GET,
        &args.server,
        &format!("/v1/jobs/{}", args.job),
    )
    .send()
    .await
    .with_context(|| format!("connecting to {}", args.server.server))?;
    let job = json_of(response).await?;
    println!("{}", serde_json::to_string_pretty(&job)?);
    Ok(ExitCode::SUCCESS)
}
