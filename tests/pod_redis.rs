//! A pod with `REDIS_URL`: claims go through a real redis-server, and when
//! Redis goes away mid-job the pod falls back to local claims, finishes the
//! job with valid output, and returns to distributed mode once Redis answers.

mod common;

use std::time::Duration;

use serde_json::json;

use common::{gen_clip, metric_value, validate_hls, wait_for, ClipSpec, Pod, RedisServer, TestDir};

const JOB_LIMIT: Duration = Duration::from_secs(240);

/// Units of a finished job as the API reports it: every video segment of
/// every rendition, each audio track and the thumbnail.
fn unit_count(job: &serde_json::Value) -> usize {
    let video: u64 = job["renditions"]
        .as_array()
        .expect("renditions")
        .iter()
        .map(|r| r["total"].as_u64().unwrap_or(0))
        .sum();
    video as usize + job["audio_tracks"].as_u64().unwrap_or(0) as usize + 1
}

async fn gauge(pod: &Pod, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(&pod.metrics().await, name, labels).unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unit_is_claimed_through_redis() {
    let dir = TestDir::new("pod-redis");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(6.0).size(640, 360));
    let redis = RedisServer::start();
    let pod = Pod::start(
        &dir.join("storage"),
        &[
            ("SEGSWARM_SOURCE_ROOTS", dir.path().to_str().unwrap()),
            ("REDIS_URL", &redis.url()),
        ],
    )
    .await;
    assert_eq!(
        gauge(&pod, "segswarm_mode", &[("mode", "distributed")]).await,
        1.0
    );

    let job = pod
        .submit(json!({ "source": source.to_str().unwrap() }))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let job = pod.wait_terminal(&id, JOB_LIMIT).await;
    assert_eq!(job["status"], "done", "{job}");
    let units = unit_count(&job);

    let metrics = pod.metrics().await;
    let won = metric_value(&metrics, "segswarm_claims_total", &[("result", "won")]);
    assert_eq!(won, Some(units as f64), "one won claim per unit");
    assert_eq!(
        metric_value(&metrics, "segswarm_fallbacks_total", &[]),
        Some(0.0)
    );
    // The done set in Redis holds every unit, under the job's hash tag.
    let done: i64 = redis.command(&["SCARD", &format!("segswarm:{{{id}}}:done")]);
    assert_eq!(done, units as i64, "units marked done in Redis");
    // Cluster-wide keys aside (the active jobs, the pods' heartbeats).
    for key in redis.keys("segswarm:*") {
        if key == "segswarm:jobs" || key == "segswarm:pods" {
            continue;
        }
        assert!(
            key.contains(&format!("{{{id}}}")),
            "key without the job's hash tag: {key}"
        );
    }
    validate_hls(&pod.job_dir(&id), &source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_mid_job_falls_back_and_returns() {
    let dir = TestDir::new("pod-redis-outage");
    let source = dir.join("source.mp4");
    // Noisy at the medium preset: long enough to stop Redis mid-job.
    gen_clip(&source, &ClipSpec::new(16.0).size(640, 360).noisy());
    let mut redis = RedisServer::start();
    let pod = Pod::start(
        &dir.join("storage"),
        &[
            ("SEGSWARM_SOURCE_ROOTS", dir.path().to_str().unwrap()),
            ("REDIS_URL", &redis.url()),
            ("SEGSWARM_PRESET", "medium"),
        ],
    )
    .await;
    let job = pod
        .submit(json!({ "source": source.to_str().unwrap() }))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let first_segment = pod.job_dir(&id).join("240p").join("seg_00000.ts");
    assert!(
        wait_for(JOB_LIMIT, || first_segment.is_file()).await,
        "no segment was made"
    );

    redis.stop();
    let mut local = false;
    for _ in 0..100 {
        if gauge(&pod, "segswarm_mode", &[("mode", "local")]).await == 1.0 {
            local = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(local, "the pod did not switch to local mode within 10 s");
    assert!(gauge(&pod, "segswarm_fallbacks_total", &[]).await >= 1.0);

    let job = pod.wait_terminal(&id, JOB_LIMIT).await;
    assert_eq!(job["status"], "done", "{job}");
    let failed = metric_value(&pod.metrics().await, "segswarm_units_failed_total", &[]);
    assert!(
        failed.unwrap_or(0.0) == 0.0,
        "units failed during the outage: {failed:?}"
    );
    validate_hls(&pod.job_dir(&id), &source);

    redis.start_again();
    let mut distributed = false;
    for _ in 0..100 {
        if gauge(&pod, "segswarm_mode", &[("mode", "distributed")]).await == 1.0 {
            distributed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        distributed,
        "the pod did not return to distributed mode within 10 s"
    );
    assert_eq!(gauge(&pod, "segswarm_redis_up", &[]).await, 1.0);
}
