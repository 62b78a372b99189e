//! The deployment helpers work as documented: `scripts/cluster` runs Redis
//! and three pods on loopback sharing one storage folder — a job submitted
//! to one pod is followed on another and its HLS is served by a third — and
//! stops them all; every environment variable the code reads is documented
//! in docs/configuration.md and settable in the Helm chart and the compose
//! file.

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use common::{gen_clip, validate_hls, ClipSpec, TestDir};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A base port with `count` free ports after it (scripts/cluster numbers
/// pods from its base port up).
fn free_port_range(count: u16) -> u16 {
    for attempt in 0..200u16 {
        let base = 20_000 + (std::process::id() as u16 % 2_000) * 10 + attempt * 23;
        let all_free = (0..count).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no range of {count} free ports found");
}

fn cluster(args: &[&str]) -> std::process::Output {
    Command::new(repo().join("scripts/cluster"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run scripts/cluster")
}

/// Stops the cluster even when the test fails half-way.
struct ClusterGuard(String);

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        let _ = cluster(&["stop", "--dir", &self.0]);
    }
}

/// Every process id listed in the cluster's pid file.
fn cluster_pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

/// A process that exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

async fn fetch(client: &reqwest::Client, url: &str) -> Vec<u8> {
    let response = client.get(url).send().await.expect("GET");
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    response.bytes().await.expect("body").to_vec()
}

/// Downloads the job's HLS tree from one pod into `into`, following the
/// playlists.
async fn download_hls(client: &reqwest::Client, base: &str, into: &Path) {
    let master = fetch(client, &format!("{base}/master.m3u8")).await;
    std::fs::create_dir_all(into).unwrap();
    std::fs::write(into.join("master.m3u8"), &master).unwrap();
    let master_text = String::from_utf8_lossy(&master).into_owned();
    let mut playlists: Vec<String> = master_text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    for line in master_text.lines().filter(|l| l.contains("URI=\"")) {
        if let Some(uri) = line
            .split("URI=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        {
            playlists.push(uri.to_string());
        }
    }
    for playlist in playlists {
        let bytes = fetch(client, &format!("{base}/{playlist}")).await;
        let path = into.join(&playlist);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let folder = playlist.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        for segment in String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let relative = format!("{folder}/{segment}");
            let data = fetch(client, &format!("{base}/{relative}")).await;
            std::fs::write(into.join(&relative), data).unwrap();
        }
    }
    let thumbnail = fetch(client, &format!("{base}/thumbnail.webp")).await;
    std::fs::write(into.join("thumbnail.webp"), thumbnail).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_script_submit_on_one_follow_on_another_fetch_from_a_third() {
    let dir = TestDir::new("cluster-script");
    let sources = dir.join("sources");
    std::fs::create_dir_all(&sources).unwrap();
    let source = sources.join("clip.mp4");
    gen_clip(&source, &ClipSpec::new(8.0).size(640, 360));
    let state = dir.join("cluster");
    let state_text = state.to_str().unwrap().to_string();
    let base = free_port_range(4);
    let redis_port = base + 3;
    let started = cluster(&[
        "start",
        "-n",
        "3",
        "--dir",
        &state_text,
        "--base-port",
        &base.to_string(),
        "--redis-port",
        &redis_port.to_string(),
        "--source-roots",
        sources.to_str().unwrap(),
        "--",
        "SEGSWARM_PRESET=ultrafast",
    ]);
    let _guard = ClusterGuard(state_text.clone());
    let stdout = String::from_utf8_lossy(&started.stdout);
    assert!(
        started.status.success(),
        "scripts/cluster start failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let urls: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with("pod "))
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    assert_eq!(urls.len(), 3, "three pod URLs printed:\n{stdout}");

    let client = reqwest::Client::new();
    let submitted: Value = client
        .post(format!("{}/v1/jobs", urls[0]))
        .json(&json!({
            "source": source.to_str().unwrap(),
            "ladder": "240p,360p",
            "segment_duration": 2,
        }))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("job JSON");
    let id = submitted["id"].as_str().expect("job id").to_string();

    // Follow on the second pod: its event stream ends with `done`.
    let events_url = format!("{}/v1/jobs/{id}/events", urls[1]);
    let deadline = Instant::now() + Duration::from_secs(180);
    let response = loop {
        let response = client.get(&events_url).send().await.expect("events");
        if response.status().is_success() {
            break response;
        }
        assert!(Instant::now() < deadline, "pod 2 never knew job {id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    let mut names = Vec::new();
    while let Ok(Some(chunk)) = tokio::time::timeout(
        deadline.saturating_duration_since(Instant::now()),
        stream.next(),
    )
    .await
    {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        names = text
            .lines()
            .filter_map(|l| l.strip_prefix("event:"))
            .map(|n| n.trim().to_string())
            .collect();
        if names.last().is_some_and(|n| n == "done" || n == "failed") {
            break;
        }
    }
    assert_eq!(
        names.last().map(String::as_str),
        Some("done"),
        "events on pod 2: {names:?}"
    );
    let once: BTreeSet<&String> = names.iter().filter(|n| *n != "progress").collect();
    assert_eq!(
        once.len(),
        names.iter().filter(|n| *n != "progress").count(),
        "an event was announced twice: {names:?}"
    );

    // Fetch the HLS from the third pod and check it end to end.
    let fetched = dir.join("fetched");
    download_hls(&client, &format!("{}/hls/{id}", urls[2]), &fetched).await;
    // job.json is never served over HTTP; the validator reads the plan.
    std::fs::copy(
        state.join("storage/jobs").join(&id).join("job.json"),
        fetched.join("job.json"),
    )
    .expect("copy job.json");
    validate_hls(&fetched, &source);

    // Every pod claimed through Redis: together they won every unit once.
    let mut won = 0.0;
    for url in &urls {
        let metrics = String::from_utf8(fetch(&client, &format!("{url}/metrics")).await).unwrap();
        won += common::metric_value(&metrics, "segswarm_claims_total", &[("result", "won")])
            .unwrap_or(0.0);
    }
    let job: Value = client
        .get(format!("{}/v1/jobs/{id}", urls[2]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let units = job["renditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["total"].as_f64().unwrap())
        .sum::<f64>()
        + job["audio_tracks"].as_f64().unwrap()
        + 1.0;
    assert_eq!(won, units, "won claims over all pods vs units");

    let pids = cluster_pids(&state);
    assert_eq!(pids.len(), 4, "redis and three pods in the pid file");
    let stopped = cluster(&["stop", "--dir", &state_text]);
    assert!(stopped.status.success());
    for pid in pids {
        assert!(
            !alive(pid),
            "process {pid} still runs after scripts/cluster stop"
        );
    }
}

/// Names of the environment variables the code reads.
fn env_vars_read_by_the_code() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut folders = vec![repo().join("src")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for marker in ["env = \"", "env::var(\"", "from_env(\""] {
                for rest in text.split(marker).skip(1) {
                    if let Some(name) = rest.split('"').next() {
                        if !name.is_empty()
                            && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
                        {
                            names.insert(name.to_string());
                        }
                    }
                }
            }
        }
    }
    names
}

fn all_text_under(folder: &Path) -> String {
    let mut text = String::new();
    let mut folders = vec![folder.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else if let Ok(content) = std::fs::read_to_string(&path) {
                text.push_str(&content);
            }
        }
    }
    text
}

#[test]
fn every_env_var_is_in_the_chart_the_compose_file_and_the_docs() {
    let names = env_vars_read_by_the_code();
    assert!(
        names.contains("REDIS_URL") && names.contains("SEGSWARM_STORAGE_DIR"),
        "the scan found the code's variables: {names:?}"
    );
    let docs = std::fs::read_to_string(repo().join("docs/configuration.md")).unwrap();
    let compose = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let chart = all_text_under(&repo().join("helm/segswarm"));
    let mut missing = Vec::new();
    for name in &names {
        for (place, text) in [
            ("docs/configuration.md", &docs),
            ("docker-compose.yml", &compose),
            ("helm/segswarm", &chart),
        ] {
            if !text.contains(name.as_str()) {
                missing.push(format!("{name} in {place}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not documented or settable: {missing:?}"
    );
}
