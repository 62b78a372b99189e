//! The dashboard at `/`, in a real browser against a real pod: headless
//! Chromium (tests/browser/dashboard.mjs) submits a job from the page, sees
//! its progress bar move and reach done, plays it with the pod's hls.js to
//! the end, cancels a second job, and never talks to another host. With a
//! token configured, the page asks for it and then lists the jobs.
//! `GET /v1/cluster` is checked in local mode and, with two pods sharing
//! Redis, to list the other pod's claims too.
//!
//! The screenshot goes to the test's scratch folder, or to
//! `docs/dashboard.png` with `SEGSWARM_UPDATE_SCREENSHOT=1`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::browser::run_node_json;
use common::{gen_clip, ClipSpec, Cluster, Pod, TestDir};
use serde_json::{json, Value};

fn screenshot_path(dir: &TestDir) -> PathBuf {
    if std::env::var("SEGSWARM_UPDATE_SCREENSHOT").as_deref() == Ok("1") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png")
    } else {
        dir.join("dashboard.png")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_serves_its_files_from_the_pod() {
    let dir = TestDir::new("dashboard-files");
    let pod = Pod::start(&dir.join("data"), &[("SEGSWARM_API_TOKEN", "s3cret")]).await;
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
        ("/ui/hls.min.js", "text/javascript; charset=utf-8"),
    ] {
        // The page is public even with a token: it holds no data.
        let resp = pod.client().get(pod.url(path)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "GET {path}");
        assert_eq!(resp.headers()["content-type"], content_type, "GET {path}");
        assert_eq!(resp.headers()["cache-control"], "no-cache", "GET {path}");
        let body = resp.text().await.unwrap();
        // hls.js mentions URLs in its messages; the page's own files load
        // nothing from anywhere but the pod.
        if path != "/ui/hls.min.js" {
            assert!(!body.contains("://"), "{path} refers to another host");
        }
    }
    let resp = pod
        .client()
        .get(pod.url("/v1/cluster"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401, "/v1/cluster needs the token");
    let (status, cluster) = pod.get_json("/v1/cluster").await;
    assert_eq!(status, 200);
    assert_eq!(cluster["mode"], "local");
    assert!(cluster["worker_id"].as_str().is_some_and(|w| !w.is_empty()));
    assert_eq!(cluster["holders"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_submits_follows_plays_and_cancels() {
    let dir = TestDir::new("dashboard");
    let sources = dir.join("sources");
    std::fs::create_dir_all(&sources).unwrap();
    let first = sources.join("first.mp4");
    let second = sources.join("second.mp4");
    gen_clip(&first, &ClipSpec::new(6.0));
    // Long and noisy, so it is still running when the page cancels it.
    gen_clip(&second, &ClipSpec::new(60.0).noisy());
    let pod = Pod::start(
        &dir.join("data"),
        &[
            ("SEGSWARM_SOURCE_ROOTS", sources.to_str().unwrap()),
            ("SEGSWARM_PRESET", "ultrafast"),
            ("SEGSWARM_LADDER", "240p"),
            ("SEGSWARM_SEGMENT_DURATION", "2"),
        ],
    )
    .await;
    let screenshot = screenshot_path(&dir);
    let config = json!({
        "base": pod.url(""),
        "scenario": "full",
        "source1": first,
        "source2": second,
        "screenshot": screenshot,
    });
    let (ok, result) =
        tokio::task::spawn_blocking(move || run_node_json("dashboard.mjs", &[&config.to_string()]))
            .await
            .unwrap();
    assert!(ok, "dashboard.mjs failed: {result:#}\n{}", pod.log_text());
    assert_eq!(result["pageErrors"], json!([]), "{result:#}");
    assert_eq!(result["mode"], "local");

    // Job 1: the bar moved through intermediate values up to 100.
    let id1 = result["job1"].as_str().unwrap();
    let values: Vec<f64> = result["job1Progress"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_f64())
        .collect();
    assert!(
        values.windows(2).all(|w| w[0] <= w[1]),
        "progress went back: {values:?}"
    );
    assert!(
        values.iter().any(|&v| v > 0.0 && v < 100.0),
        "progress bar never showed a value between 0 and 100: {values:?}"
    );
    assert_eq!(values.last().copied(), Some(100.0), "{values:?}");
    assert_eq!(result["job1BarValue"], 100.0);
    assert_eq!(result["job1Renditions"], json!(["240p 3/3"]), "{result:#}");
    assert_eq!(pod.job(id1).await["status"], "done");

    // Played to the end with hls.js; the selector lists auto plus the level.
    assert_eq!(result["played"]["ended"], true, "{result:#}");
    let played = &result["played"];
    let (time, duration) = (
        played["currentTime"].as_f64().unwrap(),
        played["duration"].as_f64().unwrap(),
    );
    assert!((time - duration).abs() < 0.25, "{played}");
    assert!((duration - 6.0).abs() < 0.25, "{played}");
    let options = result["qualityOptions"].as_array().unwrap();
    assert_eq!(options[0], "auto");
    assert!(
        options[1].as_str().unwrap().starts_with("240p"),
        "{options:?}"
    );

    // Job 2 was canceled from the page, while it ran.
    let id2 = result["job2"].as_str().unwrap();
    assert_ne!(id1, id2);
    let before = result["job2StatusBeforeCancel"].as_str().unwrap();
    assert!(
        ["queued", "processing", "playable"].contains(&before),
        "{before}"
    );
    assert_eq!(result["job2CancelHidden"], true);
    let job2 = pod.wait_terminal(id2, Duration::from_secs(30)).await;
    assert_eq!(job2["status"], "canceled");

    // Only the pod was contacted.
    assert_eq!(
        result["foreignRequests"],
        json!([]),
        "the page contacted another host"
    );
    let requests = result["requests"].as_array().unwrap();
    for needed in ["/ui/hls.min.js", "/master.m3u8", "/v1/cluster"] {
        assert!(
            requests
                .iter()
                .any(|r| r.as_str().unwrap().contains(needed)),
            "no request for {needed}: {requests:?}"
        );
    }

    // Readable at phone width: nothing wider than the screen.
    let phone = &result["phone"];
    assert!(
        phone["scrollWidth"].as_u64() <= phone["clientWidth"].as_u64(),
        "horizontal scrolling at 360 px: {phone}"
    );
    let png = std::fs::read(&screenshot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG"),
        "not a PNG: {}",
        screenshot.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_asks_for_the_token_then_lists_jobs() {
    let dir = TestDir::new("dashboard-token");
    let sources = dir.join("sources");
    std::fs::create_dir_all(&sources).unwrap();
    let clip = sources.join("clip.mp4");
    gen_clip(&clip, &ClipSpec::new(4.0));
    let pod = Pod::start(
        &dir.join("data"),
        &[
            ("SEGSWARM_SOURCE_ROOTS", sources.to_str().unwrap()),
            ("SEGSWARM_LADDER", "240p"),
            ("SEGSWARM_API_TOKEN", "s3cret-token"),
        ],
    )
    .await;
    let job = pod
        .submit(json!({ "source": clip, "ladder": "240p" }))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let config = json!({
        "base": pod.url(""),
        "scenario": "token",
        "token": "s3cret-token",
        "expectJob": id,
    });
    let (ok, result) =
        tokio::task::spawn_blocking(move || run_node_json("dashboard.mjs", &[&config.to_string()]))
            .await
            .unwrap();
    assert!(ok, "dashboard.mjs failed: {result:#}\n{}", pod.log_text());
    assert_eq!(result["askedForToken"], true);
    assert_eq!(result["listed"], json!([id]));
    assert_eq!(result["mode"], "local");
    assert_eq!(result["tokenPanelHidden"], true);
    assert_eq!(result["storedToken"], "s3cret-token");
    assert_eq!(result["foreignRequests"], json!([]));
    assert_eq!(result["pageErrors"], json!([]));
    pod.wait_terminal(&id, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_endpoint_lists_other_pods_claims_from_redis() {
    let dir = TestDir::new("dashboard-cluster");
    let clip = dir.join("long.mp4");
    gen_clip(&clip, &ClipSpec::new(60.0).noisy());
    let mut cluster = Cluster::new(dir.path()).env("SEGSWARM_LADDER", "240p");
    cluster.start("pod-a").await;
    cluster.start("pod-b").await;
    let job = cluster.pod("pod-a").submit(json!({ "source": clip })).await;
    let id = job["id"].as_str().unwrap().to_string();

    // Pod b reports both pods' claims: its own from its worker, pod a's
    // from Redis.
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && seen.len() < 2 {
        let (status, view) = cluster.pod("pod-b").get_json("/v1/cluster").await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["mode"], "distributed", "{view}");
        assert_eq!(view["worker_id"], "pod-b");
        assert_eq!(view["error"], Value::Null, "{view}");
        for holder in view["holders"].as_array().unwrap() {
            assert_eq!(holder["job"], id.as_str(), "{holder}");
            seen.insert(holder["worker_id"].as_str().unwrap().to_string());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen,
        BTreeSet::from(["pod-a".to_string(), "pod-b".to_string()]),
        "holders seen from pod-b\n{}",
        cluster.logs()
    );
    let (status, _) = cluster
        .pod("pod-a")
        .request(reqwest::Method::DELETE, &format!("/v1/jobs/{id}"))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 200);
}
