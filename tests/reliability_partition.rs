//! Network partitions (issue 16): three pods, each on a host of its own (a
//! network namespace with a veth link, `tests/common/netns.rs`), one Redis
//! on the test's host. Mid-job, the path to Redis is cut with iptables
//! inside a pod's namespace: one pod (DROP, then REJECT), then the majority,
//! 15 s each. The promises checked all along (every 100 ms,
//! `tests/common/finality.rs`):
//! - every published file keeps the inode of its first publish to the end;
//! - no media playlist ever shrinks or loses ENDLIST, the master never
//!   drops a rendition.
//!
//! And at the end: the job is done on every pod and valid, every SSE stream
//! opened before the cuts delivered exactly one terminal event and ended,
//! exactly one terminal webhook was delivered. What it measured (time to
//! local mode, time back, duplicate outputs) is printed on `FIGURE:` lines
//! for docs/reliability.md.
//!
//! Needs root (network namespaces, iptables): without, it says why and
//! passes, except under CI (`CI=true`), where it fails.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;

use common::cluster::{job_id, traced_wrapper, unit_count, wait_planned};
use common::finality::FinalityWatch;
use common::netns::{or_skip, Cut, PodHost};
use common::webhook::{self, webhook_receiver_on};
use common::{
    gen_clip, metric_value, validate_hls, wait_for, ClipSpec, Cluster, RedisServer, TestDir,
};

const JOB_LIMIT: Duration = Duration::from_secs(300);
const CUT_FOR: Duration = Duration::from_secs(15);
const TERMINAL: [&str; 4] = ["done", "partial", "failed", "canceled"];
const PODS: [&str; 3] = ["pod-a", "pod-b", "pod-c"];

/// Whether `pod` reports coordination mode `mode` now.
async fn in_mode(cluster: &Cluster, pod: &str, mode: &str) -> bool {
    let metrics = cluster.pod(pod).metrics().await;
    metric_value(&metrics, "segswarm_mode", &[("mode", mode)]) == Some(1.0)
}

/// Waits until every pod of `pods` reports `mode`; how long that took.
async fn wait_mode(cluster: &Cluster, pods: &[&str], mode: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut all = true;
        for pod in pods {
            all &= in_mode(cluster, pod, mode).await;
        }
        if all {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{pods:?} not all in {mode} mode within {limit:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Cuts `pods` off Redis for [`CUT_FOR`], then heals; prints the figures.
async fn partition(
    cluster: &Cluster,
    namespaces: &[PodHost],
    pods: &[&str],
    how: Cut,
    id: &str,
    redis_port: u16,
) {
    let job = cluster.pod("pod-a").job(id).await;
    assert!(
        !TERMINAL.iter().any(|t| job["status"] == *t),
        "the job must still run when {pods:?} are cut ({how:?}), or this part checks nothing: \
         {job}"
    );
    let cut_at = Instant::now();
    for pod in pods {
        namespace_of(namespaces, pod).cut(redis_port, how);
    }
    let local = wait_mode(cluster, pods, "local", CUT_FOR).await;
    tokio::time::sleep(CUT_FOR.saturating_sub(cut_at.elapsed())).await;
    let progress = cluster.pod("pod-a").job(id).await["progress"].clone();
    for pod in pods {
        namespace_of(namespaces, pod).heal();
    }
    let back = wait_mode(cluster, pods, "distributed", Duration::from_secs(30)).await;
    eprintln!(
        "FIGURE: partition {pods:?} {how:?} for {:.0} s: local {:.2} s after the cut, \
         distributed again {:.2} s after the heal (job at {progress}% at the heal)",
        CUT_FOR.as_secs_f64(),
        local.as_secs_f64(),
        back.as_secs_f64()
    );
}

fn namespace_of<'a>(namespaces: &'a [PodHost], pod: &str) -> &'a PodHost {
    let index = PODS.iter().position(|p| *p == pod).expect("a known pod");
    &namespaces[index]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_never_replace_a_published_file_or_shrink_a_playlist() {
    let dir = TestDir::new("partition");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(120.0).size(640, 360));
    // Every video encode is held 2.5 s: the job runs long enough for three
    // 15-second cuts without loading the machine.
    let wrapper = traced_wrapper(
        &dir.join("wrap"),
        &dir.join("encodes.log"),
        Some(("scale=", Duration::from_millis(2500))),
    );
    let made: Result<Vec<PodHost>, String> = (1..=PODS.len() as u8).map(PodHost::new).collect();
    let Some(namespaces) = or_skip(made, "partition") else {
        return;
    };
    let redis = RedisServer::start_also_on(
        &namespaces
            .iter()
            .map(PodHost::host_addr)
            .collect::<Vec<_>>(),
    );
    let redis_port = redis.port();
    let mut cluster = Cluster::with_redis(dir.path(), redis)
        .env("SEGSWARM_SLOTS", "1")
        .env("SEGSWARM_CLAIM_TTL_MS", "3000");
    for (name, ns) in PODS.iter().zip(&namespaces) {
        let builder = cluster
            .builder(name)
            .in_netns(ns.placement())
            .env("REDIS_URL", cluster.redis.url_via(ns.host_addr()))
            .path_prefix(&wrapper.bin_dir);
        cluster.start_with(name, builder).await;
    }
    wait_mode(&cluster, &PODS, "distributed", Duration::from_secs(10)).await;
    // Pods reach the receiver at their link's host address (the first
    // link's: the host answers on every address it owns).
    let (hook_url, hooks) = webhook_receiver_on(std::net::Ipv4Addr::UNSPECIFIED, false);
    let hook_url = hook_url.replace("0.0.0.0", &namespaces[0].host_addr().to_string());

    let job = cluster
        .pod("pod-a")
        .submit(json!({
            "source": source.to_str().unwrap(),
            "segment_duration": 2,
            "callback_url": hook_url,
        }))
        .await;
    let id = job_id(&job);
    let units = unit_count(&wait_planned(cluster.pod("pod-a"), &id).await);
    let job_dir = cluster.job_dir(&id);
    let watch = FinalityWatch::start(&job_dir, Duration::from_millis(100));
    let mut streams = Vec::new();
    for name in PODS {
        let stream = cluster.pod(name).events(&id).await;
        streams.push((name, tokio::spawn(stream.collect(JOB_LIMIT))));
    }
    assert!(
        wait_for(JOB_LIMIT, || common::seg_files(&job_dir.join("360p")).len()
            >= 4)
        .await,
        "the job did not get going\n{}",
        cluster.logs()
    );

    partition(
        &cluster,
        &namespaces,
        &["pod-a"],
        Cut::Drop,
        &id,
        redis_port,
    )
    .await;
    partition(
        &cluster,
        &namespaces,
        &["pod-a"],
        Cut::Reject,
        &id,
        redis_port,
    )
    .await;
    partition(
        &cluster,
        &namespaces,
        &["pod-b", "pod-c"],
        Cut::Drop,
        &id,
        redis_port,
    )
    .await;

    let job = cluster.pod("pod-a").wait_terminal(&id, JOB_LIMIT).await;
    assert_eq!(job["status"], "done", "{job}\n{}", cluster.logs());
    for (name, job) in cluster
        .wait_status_everywhere(&id, &TERMINAL, Duration::from_secs(30))
        .await
    {
        assert_eq!(job["status"], "done", "{name}: {job}\n{}", cluster.logs());
        assert_eq!(unit_count(&job), units, "{name}: {job}");
    }
    let report = watch.finish();
    assert!(
        report.violations.is_empty(),
        "published files replaced or playlists shrunk ({} polls):\n{}\n{}",
        report.polls,
        report.violations.join("\n"),
        cluster.logs()
    );
    validate_hls(&job_dir, &source);

    for (name, stream) in streams {
        let events = tokio::time::timeout(Duration::from_secs(30), stream)
            .await
            .unwrap_or_else(|_| panic!("{name}'s SSE stream did not end 30 s after done"))
            .expect("SSE collector panicked");
        let terminal: Vec<&str> = events
            .iter()
            .map(|e| e.event.as_str())
            .filter(|e| TERMINAL.contains(e))
            .collect();
        assert_eq!(terminal, ["done"], "{name}: terminal SSE events");
    }
    // A late duplicate delivery would come within the webhook retry time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let delivered = webhook::events(&hooks);
    let terminal: Vec<&String> = delivered
        .iter()
        .filter(|e| TERMINAL.contains(&e.as_str()))
        .collect();
    assert_eq!(terminal, ["done"], "terminal webhooks: {delivered:?}");

    let duplicates = cluster
        .metric_sum("segswarm_duplicate_outputs_total", &[])
        .await;
    let unconfirmed = cluster
        .metric_sum("segswarm_unconfirmed_publishes_total", &[])
        .await;
    eprintln!(
        "FIGURE: partition: job of {units} units done on every pod; {} files, {} playlist \
         versions seen in {} polls, none replaced or shrunk; duplicate outputs dropped {}, \
         publishes without a confirmed lease {}",
        report.files.len(),
        report.playlist_versions,
        report.polls,
        duplicates,
        unconfirmed
    );
}
