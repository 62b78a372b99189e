//! A pod's view of a job converges, and requests never get ahead of it
//! (issue 16, points 3 and 5), with real pods, Redis and ffmpeg:
//! - a player that asks for `master.m3u8` or a media playlist right after
//!   `POST /v1/jobs`, on the pod that plans the job or on another one, waits
//!   for the plan and gets the playlist; a job whose plan never comes gets
//!   503 with `Retry-After` once the segment wait is over, never 404;
//! - a pod cut off from Redis while the others finish the job sees it done
//!   from storage: its API says `done`, its event stream opened before the
//!   cut delivers one terminal event and closes, and the cluster sends one
//!   `done` webhook, also after the pod is back.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use common::cluster::{hold_wrapper, job_id, unit_count};
use common::pod::{metric_value, which};
use common::relay::RedisRelay;
use common::webhook::{self, webhook_receiver};
use common::{gen_clip, validate_hls, wait_for, ClipSpec, Cluster, TestDir};

const JOB_LIMIT: Duration = Duration::from_secs(180);

/// An `ffprobe` wrapper in `<dir>/probe-bin`: a source whose path contains
/// `slow` is probed after `delay`; one whose path contains `never` is never
/// probed (the wrapper waits for as long as the pod that ran it lives).
fn probe_wrapper(dir: &Path, delay: Duration) -> std::path::PathBuf {
    let bin = dir.join("probe-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = format!(
        "#!/bin/sh\n\
         case \"$*\" in\n\
         *never*) while kill -0 $PPID 2>/dev/null; do sleep 0.1; done; exit 1;;\n\
         *slow*) sleep {delay};;\n\
         esac\n\
         exec '{real}' \"$@\"\n",
        delay = delay.as_secs_f64(),
        real = which("ffprobe").display()
    );
    let path = bin.join("ffprobe");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// `GET url`: (status, Retry-After header, body).
async fn get(client: &reqwest::Client, url: String) -> (u16, Option<String>, String) {
    let resp = client
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, retry, resp.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playlists_asked_for_before_the_plan_wait_for_it_on_every_pod() {
    let dir = TestDir::new("converge-before-plan");
    let slow = dir.join("slow-source.mp4");
    gen_clip(&slow, &ClipSpec::new(6.0).size(320, 240));
    let never = dir.join("never-source.mp4");
    std::fs::copy(&slow, &never).unwrap();
    let probe_bin = probe_wrapper(dir.path(), Duration::from_secs(1));
    let wait_seconds = 3;
    let mut cluster = Cluster::new(dir.path())
        .env("SEGSWARM_SLOTS", "1")
        .env("SEGSWARM_SEGMENT_WAIT", wait_seconds.to_string());
    let builder = cluster.builder("pod-a").path_prefix(&probe_bin);
    cluster.start_with("pod-a", builder).await;
    cluster.start("pod-b").await;

    // On demand, probed 1 s late: a player asks at once, on both pods.
    let job = cluster
        .pod("pod-a")
        .submit(json!({
            "source": slow.to_str().unwrap(),
            "mode": "on_demand",
            "ladder": ["240p"],
        }))
        .await;
    let id = job_id(&job);
    assert!(job["duration"].is_null(), "planned already: {job}");
    let mut asks = Vec::new();
    for name in ["pod-a", "pod-b"] {
        for path in ["master.m3u8", "240p/index.m3u8"] {
            let pod = cluster.pod(name);
            let (client, url) = (pod.client().clone(), pod.url(&format!("/hls/{id}/{path}")));
            asks.push((
                name,
                path,
                tokio::spawn(async move { get(&client, url).await }),
            ));
        }
    }
    for (name, path, ask) in asks {
        let (status, _, body) = ask.await.unwrap();
        println!("{name} {path}: {status}");
        assert_eq!(status, 200, "{name} {path}: {body}\n{}", cluster.logs());
        assert!(body.starts_with("#EXTM3U"), "{name} {path}: {body}");
    }
    let planned = cluster.pod("pod-b").job(&id).await;
    assert_eq!(planned["mode"], "on_demand", "{planned}");

    // A plan that never comes: 503 with Retry-After after the segment
    // wait, on the pod that probes and on one that waits for its plan.
    let stuck = cluster
        .pod("pod-a")
        .submit(json!({ "source": never.to_str().unwrap(), "mode": "on_demand" }))
        .await;
    let stuck_id = job_id(&stuck);
    for name in ["pod-a", "pod-b"] {
        let pod = cluster.pod(name);
        let asked = Instant::now();
        let (status, retry, body) = get(
            pod.client(),
            pod.url(&format!("/hls/{stuck_id}/master.m3u8")),
        )
        .await;
        let waited = asked.elapsed();
        println!("{name}, plan never made: {status} after {waited:?}, Retry-After {retry:?}");
        assert_eq!(status, 503, "{name}: {body}");
        assert!(body.contains("not_ready"), "{name}: {body}");
        let retry: u64 = retry.expect("Retry-After").parse().expect("seconds");
        assert!(retry >= 1, "{name}: Retry-After {retry}");
        assert!(
            waited >= Duration::from_secs(wait_seconds) - Duration::from_millis(200),
            "{name} answered after {waited:?}, before the segment wait"
        );
        // A file that is not in any plan of a known job: still 404.
        let (status, _, _) =
            get(pod.client(), pod.url(&format!("/hls/{id}/nope/index.m3u8"))).await;
        assert_eq!(status, 404, "{name}: an unplanned playlist");
    }
    let (status, _, _) = get(
        cluster.pod("pod-b").client(),
        cluster
            .pod("pod-b")
            .url(&format!("/hls/{}/master.m3u8", uuid_like())),
    )
    .await;
    assert_eq!(status, 404, "an unknown job");
}

/// A job id that no pod knows.
fn uuid_like() -> &'static str {
    "00000000-0000-4000-8000-000000000000"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_cut_off_from_redis_converges_and_the_job_ends_once() {
    let dir = TestDir::new("converge-cut");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(12.0).size(320, 240));
    let (hook_url, hooks) = webhook_receiver(false);
    // pod-a's segment encodes never finish: all it makes is what others
    // make, and what it knows of the job while cut off comes from storage.
    std::fs::create_dir_all(dir.join("wrap-a")).unwrap();
    let wrapper_a = hold_wrapper(&dir.join("wrap-a"), "seg_", Duration::from_secs(600));
    let mut cluster = Cluster::new(dir.path())
        .env("SEGSWARM_SLOTS", "1")
        .env("SEGSWARM_CLAIM_TTL_MS", "2000");
    let relay = RedisRelay::start(
        format!("127.0.0.1:{}", cluster.redis.port())
            .parse()
            .unwrap(),
    );
    cluster.start("pod-b").await;
    cluster.start("pod-c").await;
    let builder = cluster
        .builder("pod-a")
        .env("REDIS_URL", relay.url())
        .path_prefix(&wrapper_a.bin_dir);
    cluster.start_with("pod-a", builder).await;

    let job = cluster
        .pod("pod-b")
        .submit(json!({
            "source": source.to_str().unwrap(),
            "ladder": ["240p"],
            "callback_url": hook_url,
        }))
        .await;
    let id = job_id(&job);
    assert!(
        wait_for(Duration::from_secs(60), || !wrapper_a
            .matching("seg_")
            .is_empty())
        .await,
        "pod-a never started an encode\n{}",
        cluster.logs()
    );
    let stream = cluster.pod("pod-a").events(&id).await;
    let events = tokio::spawn(stream.collect(JOB_LIMIT));

    relay.cut();
    let cut = Instant::now();
    let pod_a = cluster.pod("pod-a");
    let mut local = false;
    while !local && cut.elapsed() < Duration::from_secs(20) {
        let metrics = pod_a.metrics().await;
        local = metric_value(&metrics, "segswarm_mode", &[("mode", "local")]) == Some(1.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        local,
        "pod-a did not fall back to local mode after the cut\n{}",
        pod_a.log_text()
    );
    println!("pod-a local {:?} after the cut", cut.elapsed());

    // The others finish (pod-a's held unit is taken over after the TTL).
    for name in ["pod-b", "pod-c"] {
        let job = cluster.pod(name).wait_terminal(&id, JOB_LIMIT).await;
        assert_eq!(job["status"], "done", "{name}: {job}");
    }
    let others_done = cut.elapsed();
    // pod-a, still cut off, sees it done from storage.
    let job_a = pod_a.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(job_a["status"], "done", "pod-a: {job_a}");
    assert_eq!(job_a["progress"].as_f64(), Some(100.0), "pod-a: {job_a}");
    let units = unit_count(&job_a);
    println!(
        "others done {others_done:?} after the cut, pod-a done {:?} after it ({units} units)",
        cut.elapsed()
    );
    let events = events.await.expect("SSE task");
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    println!("pod-a's stream (opened before the cut): {names:?}");
    let terminal = ["done", "partial", "failed", "canceled"];
    assert_eq!(names.last(), Some(&"done"), "{names:?}");
    assert_eq!(
        names.iter().filter(|n| terminal.contains(n)).count(),
        1,
        "one terminal event: {names:?}"
    );
    let metrics = pod_a.metrics().await;
    assert_eq!(
        metric_value(&metrics, "segswarm_mode", &[("mode", "local")]),
        Some(1.0),
        "pod-a must still be cut off here"
    );

    // Back: pod-a settles with the registry which pod ended the job.
    relay.restore();
    cluster
        .wait_mode("distributed", Duration::from_secs(30))
        .await;
    assert!(
        wait_for(Duration::from_secs(15), || pod_a
            .log_text()
            .contains("Redis answers again"))
        .await,
        "pod-a not back\n{}",
        pod_a.log_text()
    );
    // Two rescans of the registry (every 5 s) after the return.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let delivered = webhook::events(&hooks);
    println!("webhooks: {delivered:?}");
    assert_eq!(
        delivered
            .iter()
            .filter(|e| terminal.contains(&e.as_str()))
            .count(),
        1,
        "one terminal webhook for the job: {delivered:?}"
    );
    assert!(delivered.iter().any(|e| e == "done"), "{delivered:?}");
    // A new stream on pod-a replays one end too.
    let replay = pod_a
        .events(&id)
        .await
        .collect(Duration::from_secs(10))
        .await;
    let names: Vec<&str> = replay.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names.iter().filter(|n| terminal.contains(n)).count(),
        1,
        "replayed: {names:?}"
    );
    validate_hls(&cluster.job_dir(&id), &source);
}
