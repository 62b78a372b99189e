//! Several real pods in cluster mode: one redis-server, one shared storage
//! folder, a distinct `SEGSWARM_WORKER_ID` each. A job submitted to any pod
//! is worked on by all of them, each unit encoded once; any pod answers for
//! any job (status, events, cancel); a player's request for a segment that
//! another pod is encoding is answered from the pub/sub notice; a killed pod's
//! units are taken over after the claim TTL, a stopped pod's at once; a Redis
//! outage or FLUSHALL mid-job loses nothing.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::cluster::{
    claims, done_units, job_id, output_stamps, unit_count, unit_of, wait_planned,
};
use common::webhook::{self, webhook_receiver};
use common::{
    ffmpeg_processes_mentioning, gen_clip, has_metric, hold_wrapper, metric_value, seg_files,
    validate_hls, wait_for, ClipSpec, Cluster, FfmpegWrapper, Pod, TestDir,
};

const JOB_LIMIT: Duration = Duration::from_secs(240);

/// Every metric family the Redis coordinator adds to `/metrics`.
const COORD_METRICS: [&str; 11] = [
    "segswarm_claims_total",
    "segswarm_claim_seconds",
    "segswarm_lease_renewals_total",
    "segswarm_leases_lost_total",
    "segswarm_takeovers_total",
    "segswarm_unit_waits_total",
    "segswarm_unit_wait_seconds",
    "segswarm_pubsub_reconnects_total",
    "segswarm_redis_up",
    "segswarm_mode",
    "segswarm_fallbacks_total",
];

/// Polls `GET /v1/jobs/<id>` on `pod` until it answers 200; returns the time
/// it took, or None after `limit`.
async fn wait_known(pod: &Pod, id: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        let (status, _) = pod.get_json(&format!("/v1/jobs/{id}")).await;
        if status == 200 {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The parent pid of a process, from /proc.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pods_share_one_job_and_answer_for_it() {
    let dir = TestDir::new("cluster-share");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(60.0).size(640, 360));
    let (hook_url, hooks) = webhook_receiver(false);
    let mut cluster = Cluster::new(dir.path()).env("SEGSWARM_SLOTS", "1");
    for name in ["pod-a", "pod-b", "pod-c"] {
        cluster.start(name).await;
    }
    for (name, pod) in cluster.running() {
        let metrics = pod.metrics().await;
        assert_eq!(
            metric_value(&metrics, "segswarm_mode", &[("mode", "distributed")]),
            Some(1.0),
            "{name} is not in distributed mode:\n{metrics}"
        );
    }

    let job = cluster
        .pod("pod-a")
        .submit(json!({
            "source": source.to_str().unwrap(),
            "ladder": ["144p", "240p", "360p"],
            "segment_duration": 2,
            "callback_url": hook_url,
        }))
        .await;
    let id = job_id(&job);
    // Every pod answers for the job at once (the registry is in Redis).
    for name in ["pod-b", "pod-c"] {
        let took = wait_known(cluster.pod(name), &id, Duration::from_secs(5)).await;
        let took = took.unwrap_or_else(|| panic!("{name} does not know job {id} after 5 s"));
        println!("{name} answered for the job {took:?} after it was submitted to pod-a");
        assert!(
            took < Duration::from_secs(2),
            "{name} took {took:?} to answer for a job submitted to pod-a"
        );
    }
    let events_c = cluster.pod("pod-c").events(&id).await;
    let events_b = cluster.pod("pod-b").events(&id).await;
    let collect_c = tokio::spawn(events_c.collect(JOB_LIMIT));
    let collect_b = tokio::spawn(events_b.collect(JOB_LIMIT));

    let planned = wait_planned(cluster.pod("pod-b"), &id).await;
    let units = unit_count(&planned);
    let renditions: Vec<&str> = planned["renditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(renditions, ["144p", "240p", "360p"], "{planned}");
    assert_eq!(
        units,
        3 * 30 + 1 + 1,
        "3 renditions x 30 segments + audio + thumbnail"
    );

    // Mid-job, pod-c reports the progress that the others make.
    let mut seen_progress = false;
    while !seen_progress {
        let job = cluster.pod("pod-c").job(&id).await;
        let progress = job["progress"].as_f64().unwrap_or(0.0);
        if progress > 0.0 && progress < 100.0 {
            seen_progress = true;
        } else if job["status"] == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen_progress,
        "pod-c never reported progress between 0 and 100"
    );

    let job = cluster.pod("pod-a").wait_terminal(&id, JOB_LIMIT).await;
    assert_eq!(job["status"], "done", "{job}");
    for (name, job) in cluster
        .wait_status_everywhere(&id, &["done"], Duration::from_secs(10))
        .await
    {
        assert_eq!(job["progress"].as_f64(), Some(100.0), "{name}: {job}");
        assert_eq!(unit_count(&job), units, "{name}: {job}");
    }

    // Each unit was won exactly once, cluster-wide, and every pod worked.
    let won = cluster
        .metric_per_pod("segswarm_claims_total", &[("result", "won")])
        .await;
    let completed = cluster
        .metric_per_pod("segswarm_units_completed_total", &[])
        .await;
    println!("won claims per pod: {won:?}; units completed per pod: {completed:?}");
    let won_total: f64 = won.iter().map(|(_, v)| v).sum();
    assert_eq!(
        won_total, units as f64,
        "won claims over the pods {won:?} must equal the {units} units"
    );
    let completed_total: f64 = completed.iter().map(|(_, v)| v).sum();
    assert_eq!(
        completed_total, units as f64,
        "units completed over the pods {completed:?} must equal the {units} units"
    );
    for (name, value) in &won {
        assert!(*value > 0.0, "{name} won no claim: {won:?}");
    }
    let done: i64 = cluster
        .redis
        .command(&["SCARD", &format!("segswarm:{{{id}}}:done")]);
    assert_eq!(done, units as i64, "units marked done in Redis");

    // Every coordinator metric is on every pod's /metrics.
    for (name, pod) in cluster.running() {
        let metrics = pod.metrics().await;
        for family in COORD_METRICS {
            assert!(
                has_metric(&metrics, family),
                "{name}: no {family}:\n{metrics}"
            );
        }
        for result in ["won", "held", "already_done", "error"] {
            assert!(
                metric_value(&metrics, "segswarm_claims_total", &[("result", result)]).is_some(),
                "{name}: no segswarm_claims_total{{result=\"{result}\"}}"
            );
        }
        for mode in ["distributed", "local"] {
            assert!(
                metric_value(&metrics, "segswarm_mode", &[("mode", mode)]).is_some(),
                "{name}: no segswarm_mode{{mode=\"{mode}\"}}"
            );
        }
        let claim_rounds = metric_value(&metrics, "segswarm_claim_seconds_count", &[]);
        assert!(
            claim_rounds.unwrap_or(0.0) > 0.0,
            "{name}: claim latency never observed: {claim_rounds:?}"
        );
        assert_eq!(
            metric_value(&metrics, "segswarm_redis_up", &[]),
            Some(1.0),
            "{name}"
        );
    }

    // Webhooks fire once per event cluster-wide.
    assert!(
        wait_for(Duration::from_secs(20), || {
            webhook::events(&hooks).iter().any(|event| event == "done")
        })
        .await,
        "no done webhook: {:?}",
        webhook::events(&hooks)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let delivered = webhook::events(&hooks);
    for event in ["playable", "done"] {
        assert_eq!(
            delivered.iter().filter(|e| *e == event).count(),
            1,
            "the {event} webhook must be delivered once cluster-wide: {delivered:?}"
        );
    }

    let report = validate_hls(&cluster.job_dir(&id), &source);
    assert_eq!(report.rendition_names(), ["144p", "240p", "360p"]);
    // The events, on pods that did not take the submission: in order, each
    // emitted once cluster-wide, ending with done.
    for (name, collect) in [("pod-c", collect_c), ("pod-b", collect_b)] {
        let events = collect.await.expect("SSE task");
        let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
        println!("{name} events: {names:?}");
        assert_eq!(names.last(), Some(&"done"), "{name}: {names:?}");
        for once in ["done", "playable", "thumbnail_ready"] {
            assert_eq!(
                names.iter().filter(|n| **n == once).count(),
                1,
                "{name}: exactly one {once} event cluster-wide: {names:?}"
            );
        }
        let story: Vec<(Option<u64>, &str, f64)> = events
            .iter()
            .map(|e| {
                let progress = e.data["progress"].as_f64().unwrap_or(-1.0);
                (e.id, e.event.as_str(), progress)
            })
            .collect();
        let mut last_id = 0;
        let mut last_progress = 0.0;
        for event in &events {
            assert_eq!(event.data["id"], id.as_str(), "{name}: {:?}", event);
            if let Some(event_id) = event.id {
                assert!(event_id > last_id, "{name}: event ids go back: {story:?}");
                last_id = event_id;
            }
            let progress = event.data["progress"].as_f64().unwrap_or(0.0);
            assert!(
                progress >= last_progress,
                "{name}: progress went from {last_progress} to {progress} at {}: {story:?}",
                event.event
            );
            last_progress = progress;
        }
        // One progress event per step cluster-wide: never the same value twice.
        let steps: Vec<f64> = story
            .iter()
            .filter(|(_, event, _)| *event == "progress")
            .map(|(_, _, progress)| *progress)
            .collect();
        for pair in steps.windows(2) {
            assert!(
                pair[1] > pair[0],
                "{name}: progress {} sent again (two pods emitted the same step): {story:?}",
                pair[1]
            );
        }
        let progress_events = names.iter().filter(|n| **n == "progress").count();
        assert!(
            progress_events <= 50,
            "{name}: {progress_events} progress events (at most one per 2 % step)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_on_one_pod_stops_ffmpeg_on_another() {
    let dir = TestDir::new("cluster-cancel");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(16.0).size(640, 360).noisy());
    let mut cluster = Cluster::new(dir.path())
        .env("SEGSWARM_SLOTS", "1")
        .env("SEGSWARM_PRESET", "medium");
    cluster.start("pod-a").await;
    cluster.start("pod-b").await;
    let job = cluster
        .pod("pod-a")
        .submit(json!({ "source": source.to_str().unwrap() }))
        .await;
    let id = job_id(&job);
    let job_dir = cluster.job_dir(&id);
    let needle = job_dir.to_str().unwrap().to_string();
    let pid_a = cluster.pod("pod-a").pid();

    // Wait for a video encode of pod-a.
    assert!(
        wait_for(Duration::from_secs(120), || {
            ffmpeg_processes_mentioning(&needle)
                .iter()
                .any(|(pid, cmd)| parent_of(*pid) == Some(pid_a) && cmd.contains("p-seg_"))
        })
        .await,
        "pod-a never encoded a segment of the job\n{}",
        cluster.logs()
    );

    let canceled_at = Instant::now();
    let resp = cluster
        .pod("pod-b")
        .request(reqwest::Method::DELETE, &format!("/v1/jobs/{id}"))
        .send()
        .await
        .expect("DELETE on pod-b");
    assert_eq!(resp.status().as_u16(), 200, "DELETE /v1/jobs/{id} on pod-b");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "canceled", "{body}");

    let stopped = wait_for(Duration::from_secs(2), || {
        ffmpeg_processes_mentioning(&needle).is_empty()
    })
    .await;
    assert!(
        stopped,
        "ffmpeg of the job still running 2 s after DELETE on pod-b: {:?}\n{}",
        ffmpeg_processes_mentioning(&needle),
        cluster.logs()
    );
    println!(
        "every ffmpeg of the job gone {:?} after DELETE on pod-b",
        canceled_at.elapsed()
    );
    for (name, job) in cluster
        .wait_status_everywhere(&id, &["canceled"], Duration::from_secs(3))
        .await
    {
        assert_eq!(job["status"], "canceled", "{name}: {job}");
    }
    // No unit starts afterwards, on any pod.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        ffmpeg_processes_mentioning(&needle).is_empty(),
        "an encode of the canceled job started again: {:?}",
        ffmpeg_processes_mentioning(&needle)
    );
    for (name, pod) in cluster.running() {
        assert_eq!(pod.job(&id).await["status"], "canceled", "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_handoff_is_woken_by_pubsub() {
    let dir = TestDir::new("cluster-handoff");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(12.0).size(640, 360));
    let segment = "240p-seg_00003.ts";
    std::fs::create_dir_all(dir.join("wrap-a")).unwrap();
    std::fs::create_dir_all(dir.join("wrap-b")).unwrap();
    // pod-a's encode of that segment waits 2 s before ffmpeg runs.
    let wrapper_a = hold_wrapper(&dir.join("wrap-a"), segment, Duration::from_secs(2));
    let wrapper_b = FfmpegWrapper::new(&dir.join("wrap-b"), None, false);
    let mut cluster = Cluster::new(dir.path())
        .env("SEGSWARM_PREFETCH_SEGMENTS", "0")
        .env("SEGSWARM_SLOTS", "1");
    let builder = cluster.builder("pod-a").path_prefix(&wrapper_a.bin_dir);
    cluster.start_with("pod-a", builder).await;
    let builder = cluster.builder("pod-b").path_prefix(&wrapper_b.bin_dir);
    cluster.start_with("pod-b", builder).await;

    let job = cluster
        .pod("pod-a")
        .submit(json!({
            "source": source.to_str().unwrap(),
            "mode": "on_demand",
            "ladder": ["240p", "360p"],
            "segment_duration": 2,
        }))
        .await;
    let id = job_id(&job);
    let job_dir = cluster.job_dir(&id);
    assert!(
        wait_known(cluster.pod("pod-b"), &id, Duration::from_secs(5))
            .await
            .is_some(),
        "pod-b does not know the job"
    );
    // Let the background units (audio, thumbnail) finish so that the
    // machine is quiet during the measurement.
    assert!(
        wait_for(Duration::from_secs(60), || job_dir
            .join("audio/0/index.m3u8")
            .is_file()
            && job_dir.join("thumbnail.webp").is_file()
            && ffmpeg_processes_mentioning(job_dir.to_str().unwrap())
                .is_empty())
        .await,
        "audio and thumbnail of the on-demand job not made\n{}",
        cluster.logs()
    );

    let target = job_dir.join("240p/seg_00003.ts");
    assert!(!target.exists(), "segment 3 made before any request");
    // Record when the file appears, polling every millisecond.
    let watched = target.clone();
    let appeared = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if watched.exists() {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    });

    let path = format!("/hls/{id}/240p/seg_00003.ts");
    let url_a = cluster.pod("pod-a").url(&path);
    let client_a = cluster.pod("pod-a").client().clone();
    let request_a = tokio::spawn(async move {
        let resp = client_a.get(url_a).send().await.expect("GET on pod-a");
        let status = resp.status().as_u16();
        (status, resp.bytes().await.unwrap())
    });
    assert!(
        wait_for(Duration::from_secs(30), || !wrapper_a
            .matching(segment)
            .is_empty())
        .await,
        "pod-a did not start encoding {segment}\n{}",
        cluster.logs()
    );
    assert!(!target.exists(), "segment 3 done before pod-b was asked");

    let url_b = cluster.pod("pod-b").url(&path);
    let client_b = cluster.pod("pod-b").client().clone();
    let asked_b = Instant::now();
    let request_b = tokio::spawn(async move {
        let resp = client_b.get(url_b).send().await.expect("GET on pod-b");
        let answered = Instant::now();
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap();
        (status, body, answered, Instant::now())
    });
    let (status_b, body_b, answered_b, body_done_b) = request_b.await.unwrap();
    let (status_a, body_a) = request_a.await.unwrap();
    let appeared = appeared.join().unwrap().expect("segment 3 never appeared");
    assert_eq!(status_a, 200, "pod-a's answer");
    assert_eq!(status_b, 200, "pod-b's answer");
    assert!(
        appeared > asked_b,
        "the segment appeared before pod-b was asked: the hold was too short"
    );
    let on_disk = std::fs::read(&target).unwrap();
    assert_eq!(body_a.as_ref(), on_disk.as_slice(), "pod-a's body");
    assert_eq!(body_b.as_ref(), on_disk.as_slice(), "pod-b's body");

    // pod-b never encoded the unit: it waited for pod-a's notice.
    assert!(
        wrapper_b.matching(segment).is_empty(),
        "pod-b encoded {segment} itself: {:?}",
        wrapper_b.matching(segment)
    );
    assert_eq!(
        wrapper_a.matching(segment).len(),
        1,
        "pod-a encoded {segment} once"
    );
    let latency = answered_b.saturating_duration_since(appeared);
    let body_latency = body_done_b.saturating_duration_since(appeared);
    println!(
        "hand-off latency: pod-b answered {latency:?} after the segment appeared \
         (body complete after {body_latency:?}); pod-b waited {:?} in all",
        answered_b - asked_b
    );
    assert!(
        latency < Duration::from_millis(50),
        "pod-b answered {latency:?} after the segment appeared (limit 50 ms)\n{}",
        cluster.logs()
    );

    let metrics = cluster.pod("pod-b").metrics().await;
    let value =
        |name: &str, labels: &[(&str, &str)]| metric_value(&metrics, name, labels).unwrap_or(0.0);
    assert!(value("segswarm_unit_waits_total", &[]) >= 1.0, "{metrics}");
    assert!(
        value("segswarm_unit_wait_seconds_count", &[]) >= 1.0,
        "{metrics}"
    );
    assert!(
        value("segswarm_claims_total", &[("result", "held")]) >= 1.0,
        "pod-b's first claim of the unit was held by pod-a:\n{metrics}"
    );
    assert!(
        value("segswarm_claims_total", &[("result", "already_done")]) >= 1.0,
        "pod-b claims again after the notice and finds the unit done:\n{metrics}"
    );
}

/// A cluster where pod-a holds claims on video units (its ffmpeg wrapper
/// holds every segment encode for `hold`) while pod-b and pod-c, started
/// after it, did everything else and are idle. Returns the cluster, the job
/// id, the source, the unit count and pod-a's claim keys.
async fn pod_a_holding_units(
    dir: &TestDir,
    claim_ttl_ms: u64,
    hold: Duration,
    others: &[&str],
) -> (Cluster, String, PathBuf, usize, Vec<String>) {
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(8.0).size(640, 360));
    std::fs::create_dir_all(dir.join("wrap-a")).unwrap();
    let wrapper_a = hold_wrapper(&dir.join("wrap-a"), "p-seg_", hold);
    let mut cluster = Cluster::new(dir.path())
        .env("SEGSWARM_SLOTS", "1")
        .env("SEGSWARM_CLAIM_TTL_MS", claim_ttl_ms.to_string())
        .env("SEGSWARM_SHUTDOWN_GRACE", "10");
    let builder = cluster.builder("pod-a").path_prefix(&wrapper_a.bin_dir);
    cluster.start_with("pod-a", builder).await;
    let job = cluster
        .pod("pod-a")
        .submit(json!({ "source": source.to_str().unwrap() }))
        .await;
    let id = job_id(&job);
    assert!(
        wait_for(Duration::from_secs(60), || !wrapper_a
            .matching("p-seg_")
            .is_empty())
        .await,
        "pod-a never started a segment\n{}",
        cluster.logs()
    );
    let units = unit_count(&wait_planned(cluster.pod("pod-a"), &id).await);
    let held: Vec<String> = claims(&cluster, &id)
        .into_iter()
        .filter(|(_, v)| v.ends_with(" pod-a") && v.len() > " pod-a".len())
        .map(|(k, _)| k)
        .collect();
    assert!(
        held.iter().any(|k| unit_of(k).starts_with("video/")),
        "pod-a holds no video claim: {:?}",
        claims(&cluster, &id)
    );
    for name in others {
        cluster.start(name).await;
    }
    // The others finish everything pod-a does not hold, then idle.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let held_now = claims(&cluster, &id)
            .values()
            .filter(|v| v.ends_with(" pod-a"))
            .count();
        let done = done_units(&cluster, &id).len();
        if done + held_now == units && held_now > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the other pods did not finish the free units: {done} done, claims {:?}\n{}",
            claims(&cluster, &id),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held: Vec<String> = claims(&cluster, &id)
        .into_iter()
        .filter(|(_, v)| v.ends_with(" pod-a"))
        .map(|(k, _)| k)
        .collect();
    (cluster, id, source, units, held)
}

/// Polls the claim keys until every one of `keys` is held by another worker
/// than pod-a or its unit is done; returns the time of the first and of the
/// last such change after `since`.
async fn wait_taken(
    cluster: &Cluster,
    id: &str,
    keys: &[String],
    since: Instant,
    limit: Duration,
) -> (Duration, Duration) {
    let mut first = None;
    let mut taken = vec![false; keys.len()];
    loop {
        let done = done_units(cluster, id);
        for (i, key) in keys.iter().enumerate() {
            if taken[i] {
                continue;
            }
            let value: Option<String> = cluster.redis.command(&["GET", key]);
            let by_other = value
                .as_deref()
                .is_some_and(|v| !v.ends_with(" pod-a") && v.contains(' '));
            if by_other || done.iter().any(|u| u == unit_of(key)) {
                taken[i] = true;
                first.get_or_insert(since.elapsed());
            }
        }
        if taken.iter().all(|t| *t) {
            return (first.unwrap(), since.elapsed());
        }
        assert!(
            since.elapsed() < limit,
            "claims {keys:?} not taken by another pod within {limit:?}: {:?}\n{}",
            claims(cluster, id),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pod_units_are_taken_over_after_the_ttl() {
    let dir = TestDir::new("cluster-kill9");
    let ttl = Duration::from_millis(2000);
    let (mut cluster, id, source, units, held) = pod_a_holding_units(
        &dir,
        ttl.as_millis() as u64,
        Duration::from_secs(40),
        &["pod-b", "pod-c"],
    )
    .await;
    println!("pod-a holds {held:?}");
    // A live holder keeps its claims past the TTL (leases are renewed).
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    let now = claims(&cluster, &id);
    for key in &held {
        assert!(
            now.get(key).is_some_and(|v| v.ends_with(" pod-a")),
            "pod-a's claim {key} was lost while pod-a was alive: {now:?}"
        );
    }

    let killed = Instant::now();
    cluster.kill("pod-a");
    let (first, last) = wait_taken(&cluster, &id, &held, killed, ttl * 5).await;
    println!("after kill -9: first unit taken over after {first:?}, all after {last:?}");
    assert!(
        first >= ttl / 2,
        "a killed pod's claim was taken after {first:?}, before its TTL ran out"
    );

    for (name, job) in cluster
        .wait_status_everywhere(&id, &["done", "partial", "failed"], JOB_LIMIT)
        .await
    {
        assert_eq!(job["status"], "done", "{name}: {job}");
        assert_eq!(unit_count(&job), units);
    }
    let takeovers = cluster.metric_sum("segswarm_takeovers_total", &[]).await;
    assert!(
        takeovers >= held.len() as f64,
        "takeovers on the survivors: {takeovers}, pod-a held {}",
        held.len()
    );
    let failed = cluster.metric_sum("segswarm_units_failed_total", &[]).await;
    assert_eq!(failed, 0.0, "units failed on the survivors");
    validate_hls(&cluster.job_dir(&id), &source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_claims_to_another_pod_at_once() {
    let dir = TestDir::new("cluster-sigterm");
    // The default TTL: a take-over within 1 s can only come from a release.
    let (mut cluster, id, source, units, held) =
        pod_a_holding_units(&dir, 30_000, Duration::from_secs(25), &["pod-b"]).await;
    println!("pod-a holds {held:?}");
    let stopped = Instant::now();
    cluster.sigterm("pod-a");
    let (first, last) = wait_taken(&cluster, &id, &held, stopped, Duration::from_secs(10)).await;
    println!("after SIGTERM: first unit taken by pod-b after {first:?}, all after {last:?}");
    assert!(
        last < Duration::from_secs(1),
        "pod-a's released claims were taken after {last:?} (limit 1 s)"
    );
    assert!(
        cluster.wait_exit("pod-a", Duration::from_secs(12)).await,
        "pod-a did not exit after SIGTERM"
    );
    let job = cluster.pod("pod-b").wait_terminal(&id, JOB_LIMIT).await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(unit_count(&job), units);
    validate_hls(&cluster.job_dir(&id), &source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_three_pods_go_local_and_come_back() {
    let dir = TestDir::new("cluster-outage");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(12.0).size(640, 360).noisy());
    let mut cluster = Cluster::new(dir.path())
        .env("SEGSWARM_SLOTS", "1")
        .env("SEGSWARM_PRESET", "medium");
    for name in ["pod-a", "pod-b", "pod-c"] {
        cluster.start(name).await;
    }
    let job = cluster
        .pod("pod-a")
        .submit(json!({ "source": source.to_str().unwrap() }))
        .await;
    let id = job_id(&job);
    let job_dir = cluster.job_dir(&id);
    let first = job_dir.join("240p/seg_00000.ts");
    assert!(
        wait_for(JOB_LIMIT, || first.is_file()).await,
        "no segment was made\n{}",
        cluster.logs()
    );
    for (name, pod) in cluster.running() {
        assert!(
            wait_known(pod, &id, Duration::from_secs(5)).await.is_some(),
            "{name} does not know the job"
        );
    }

    cluster.redis.stop();
    let took = cluster.wait_mode("local", Duration::from_secs(10)).await;
    println!("every pod in local mode {took:?} after Redis stopped");
    for (name, value) in cluster
        .metric_per_pod("segswarm_fallbacks_total", &[])
        .await
    {
        assert!(value >= 1.0, "{name}: fallbacks {value}");
    }
    for (name, value) in cluster.metric_per_pod("segswarm_redis_up", &[]).await {
        assert_eq!(value, 0.0, "{name}: segswarm_redis_up during the outage");
    }

    for (name, job) in cluster
        .wait_status_everywhere(&id, &["done", "partial", "failed"], JOB_LIMIT)
        .await
    {
        assert_eq!(job["status"], "done", "{name}: {job}");
    }
    for (name, value) in cluster
        .metric_per_pod("segswarm_units_failed_total", &[])
        .await
    {
        assert_eq!(value, 0.0, "{name}: units failed during the outage");
    }
    validate_hls(&job_dir, &source);

    cluster.redis.start_again();
    let took = cluster
        .wait_mode("distributed", Duration::from_secs(10))
        .await;
    println!("every pod distributed again {took:?} after Redis came back");
    for (name, value) in cluster.metric_per_pod("segswarm_redis_up", &[]).await {
        assert_eq!(value, 1.0, "{name}: segswarm_redis_up after the outage");
    }
    assert!(
        every_pod_at_least(&cluster, "segswarm_pubsub_reconnects_total", 1.0).await,
        "pub/sub reconnects per pod: {:?}",
        cluster
            .metric_per_pod("segswarm_pubsub_reconnects_total", &[])
            .await
    );
    let errors = cluster
        .metric_sum("segswarm_claims_total", &[("result", "error")])
        .await;
    // Whether a claim meets the outage depends on which Redis call fails
    // first (pub/sub, a renewal or a claim), so this one is only reported.
    println!("claims that met the outage: {errors}");
    for (name, pod) in cluster.running() {
        assert_eq!(
            pod.job(&id).await["status"],
            "done",
            "{name} after Redis returned"
        );
    }
}

/// Waits up to 10 s until every running pod reports `name` ≥ `at_least`.
async fn every_pod_at_least(cluster: &Cluster, name: &str, at_least: f64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let values = cluster.metric_per_pod(name, &[]).await;
        if values.iter().all(|(_, v)| *v >= at_least) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_mid_job_keeps_finished_units() {
    let dir = TestDir::new("cluster-flushall");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(12.0).size(640, 360).noisy());
    let mut cluster = Cluster::new(dir.path())
        .env("SEGSWARM_SLOTS", "1")
        .env("SEGSWARM_PRESET", "medium")
        .env("SEGSWARM_CLAIM_TTL_MS", "3000");
    for name in ["pod-a", "pod-b", "pod-c"] {
        cluster.start(name).await;
    }
    let job = cluster
        .pod("pod-b")
        .submit(json!({ "source": source.to_str().unwrap() }))
        .await;
    let id = job_id(&job);
    let job_dir = cluster.job_dir(&id);
    let needle = job_dir.to_str().unwrap().to_string();
    let lowest = job_dir.join("240p");
    assert!(
        wait_for(JOB_LIMIT, || seg_files(&lowest).len() >= 2
            && ffmpeg_processes_mentioning(&needle)
                .iter()
                .any(|(_, cmd)| cmd.contains("p-seg_")))
        .await,
        "the job did not get going\n{}",
        cluster.logs()
    );
    let renewals = cluster
        .metric_sum("segswarm_lease_renewals_total", &[("result", "renewed")])
        .await;
    assert!(renewals >= 1.0, "no lease renewal before FLUSHALL");

    let before = output_stamps(&job_dir, &["240p", "360p"]);
    let done_before = done_units(&cluster, &id).len();
    cluster.redis.flushall();
    println!(
        "FLUSHALL with {} outputs on storage and {done_before} units done in Redis",
        before.len()
    );

    for (name, job) in cluster
        .wait_status_everywhere(&id, &["done", "partial", "failed"], JOB_LIMIT)
        .await
    {
        assert_eq!(job["status"], "done", "{name}: {job}");
    }
    let after = output_stamps(&job_dir, &["240p", "360p"]);
    for (path, stamp) in &before {
        assert_eq!(
            after.get(path),
            Some(stamp),
            "{} was re-encoded or removed after FLUSHALL",
            path.display()
        );
    }
    let lost = cluster.metric_sum("segswarm_leases_lost_total", &[]).await;
    println!("leases lost at FLUSHALL: {lost}");
    assert!(
        lost >= 1.0,
        "an encode in flight at FLUSHALL lost its lease, but no pod counted it"
    );
    for (name, value) in cluster
        .metric_per_pod("segswarm_units_failed_total", &[])
        .await
    {
        assert_eq!(value, 0.0, "{name}: failed units");
    }
    validate_hls(&job_dir, &source);
}
