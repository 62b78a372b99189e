//! Things going wrong on a pod, injected without mocks: an `ffmpeg` wrapper
//! that fails chosen encodes, a cancel in the middle of an encode, and a
//! webhook receiver that fails its first delivery.

mod common;

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use common::webhook::webhook_receiver;
use common::{
    decode_errors, ffmpeg_processes_mentioning, gen_clip, has_metric, metric_value, validate_hls,
    wait_for, ClipSpec, FfmpegWrapper, Pod, TestDir,
};

const JOB_LIMIT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_ffmpeg_then_purge_removes_the_job() {
    let dir = TestDir::new("pod-cancel");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(20.0).size(640, 360).noisy());
    let pod = Pod::start(
        &dir.join("storage"),
        &[
            ("SEGSWARM_SOURCE_ROOTS", dir.path().to_str().unwrap()),
            ("SEGSWARM_PRESET", "medium"),
        ],
    )
    .await;
    let job = pod
        .submit(json!({ "source": source.to_str().unwrap() }))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let job_dir = pod.job_dir(&id);
    let needle = job_dir.to_str().unwrap().to_string();
    let events = pod.events(&id).await;

    // Wait for a video encode of this job to be running.
    assert!(
        wait_for(JOB_LIMIT, || ffmpeg_processes_mentioning(&needle)
            .iter()
            .any(|(_, cmd)| cmd.contains("p-seg_")))
        .await,
        "no video encode of the job started"
    );
    let resp = pod
        .client()
        .delete(pod.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "DELETE a running job");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "canceled", "{body}");
    let canceled_at = Instant::now();
    let gone = wait_for(Duration::from_secs(2), || {
        ffmpeg_processes_mentioning(&needle).is_empty()
    })
    .await;
    assert!(
        gone,
        "ffmpeg of the canceled job still running {:?} after cancel: {:?}",
        canceled_at.elapsed(),
        ffmpeg_processes_mentioning(&needle)
    );
    let events = events.collect(Duration::from_secs(10)).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.last(), Some(&"canceled"), "SSE: {names:?}");
    assert_eq!(pod.job(&id).await["status"], "canceled");
    // Nothing starts again afterwards.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        ffmpeg_processes_mentioning(&needle).is_empty(),
        "an encode of the canceled job started again"
    );
    let status: Value =
        serde_json::from_slice(&std::fs::read(job_dir.join("status.json")).unwrap()).unwrap();
    assert_eq!(status["status"], "canceled", "status.json: {status}");

    // Canceling again is a conflict; purging removes everything.
    let resp = pod
        .client()
        .delete(pod.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 409);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "conflict", "{body}");
    let resp = pod
        .client()
        .delete(pod.url(&format!("/v1/jobs/{id}?purge=true")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "purge");
    assert!(!job_dir.exists(), "purge left {}", job_dir.display());
    let (status, body) = pod.get_json(&format!("/v1/jobs/{id}")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let resp = pod
        .client()
        .get(pod.url(&format!("/hls/{id}/master.m3u8")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_rendition_ends_partial_and_lower_one_plays() {
    let dir = TestDir::new("pod-partial");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(6.0).size(640, 360));
    let wrapper = FfmpegWrapper::new(dir.path(), Some("-360p-seg_"), false);
    let pod = Pod::builder(&dir.join("storage"))
        .env("SEGSWARM_SOURCE_ROOTS", dir.path().to_str().unwrap())
        .env("SEGSWARM_RETRY_BACKOFF_MS", "100")
        .path_prefix(&wrapper.bin_dir)
        .start()
        .await;
    let job = pod
        .submit(json!({ "source": source.to_str().unwrap(), "ladder": "240p,360p" }))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let events = pod.events(&id).await.collect(JOB_LIMIT).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.last(), Some(&"partial"), "SSE: {names:?}");

    let job = pod.job(&id).await;
    assert_eq!(job["status"], "partial", "{job}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(error.contains("360p"), "error should name 360p: {error:?}");
    for r in job["renditions"].as_array().unwrap() {
        if r["name"] == "240p" {
            assert_eq!(r["done"], r["total"], "240p complete: {r}");
        } else {
            assert_eq!(r["done"], 0, "360p never succeeds: {r}");
        }
    }
    assert!(
        !wrapper.matching("-360p-seg_").is_empty(),
        "360p was attempted"
    );
    // The failure was retried alone, and did not take 240p down with it.
    let report = validate_hls(&pod.job_dir(&id), &source);
    assert_eq!(
        report.rendition_names(),
        ["240p"],
        "master lists only the complete rendition"
    );
    let errors = decode_errors(&pod.url(&format!("/hls/{id}/master.m3u8")));
    assert!(errors.trim().is_empty(), "partial job plays:\n{errors}");

    let metrics = pod.metrics().await;
    assert!(has_metric(&metrics, "segswarm_units_failed_total"));
    assert!(
        metric_value(
            &metrics,
            "segswarm_units_failed_total",
            &[("rendition", "360p")]
        )
        .unwrap_or(0.0)
            >= 3.0,
        "360p failures counted (3 attempts):\n{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "segswarm_jobs", &[("status", "partial")]),
        Some(1.0)
    );

    // A finished job cannot be canceled.
    let resp = pod
        .client()
        .delete(pod.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 409);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempt_is_retried_after_backoff() {
    let dir = TestDir::new("pod-retry");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(6.0).size(640, 360));
    let wrapper = FfmpegWrapper::new(dir.path(), Some("-240p-seg_00001.ts"), true);
    let backoff = 1500;
    let pod = Pod::builder(&dir.join("storage"))
        .env("SEGSWARM_SOURCE_ROOTS", dir.path().to_str().unwrap())
        .env("SEGSWARM_RETRY_BACKOFF_MS", backoff.to_string())
        .path_prefix(&wrapper.bin_dir)
        .start()
        .await;
    let job = pod
        .submit(json!({ "source": source.to_str().unwrap() }))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let job = pod.wait_terminal(&id, JOB_LIMIT).await;
    assert_eq!(
        job["status"], "done",
        "one failed attempt is retried: {job}"
    );

    let attempts = wrapper.matching("-240p-seg_00001.ts");
    assert!(
        attempts.len() >= 2,
        "240p segment 1 should run twice: {attempts:?}"
    );
    let gap = attempts[1].0 - attempts[0].0;
    assert!(
        gap >= backoff as f64 / 1000.0 * 0.9,
        "the retry came {gap:.3} s after the failure, backoff is {backoff} ms"
    );
    let metrics = pod.metrics().await;
    assert!(
        metric_value(&metrics, "segswarm_units_failed_total", &[]).unwrap_or(0.0) >= 1.0,
        "the failed attempt is counted:\n{metrics}"
    );
    validate_hls(&pod.job_dir(&id), &source);
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_and_retried() {
    let dir = TestDir::new("pod-webhook");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(4.0).size(640, 360));
    let (url, received) = webhook_receiver(true);
    let secret = "s3cret-for-tests";
    let pod = Pod::start(
        &dir.join("storage"),
        &[
            ("SEGSWARM_SOURCE_ROOTS", dir.path().to_str().unwrap()),
            ("SEGSWARM_WEBHOOK_SECRET", secret),
        ],
    )
    .await;
    let job = pod
        .submit(json!({ "source": source.to_str().unwrap(), "callback_url": url }))
        .await;
    assert_eq!(job["callback_url"], url.as_str());
    let id = job["id"].as_str().unwrap().to_string();
    let job = pod.wait_terminal(&id, JOB_LIMIT).await;
    assert_eq!(job["status"], "done", "{job}");

    let delivered = |event: &str| {
        received.lock().unwrap().iter().any(|(status, headers, _)| {
            *status == 200 && headers.get("x-segswarm-event").map(String::as_str) == Some(event)
        })
    };
    assert!(
        wait_for(Duration::from_secs(30), || delivered("done")
            && delivered("playable"))
        .await,
        "playable and done not both delivered: {:?}",
        received
            .lock()
            .unwrap()
            .iter()
            .map(|(s, h, _)| (*s, h.get("x-segswarm-event").cloned()))
            .collect::<Vec<_>>()
    );
    let requests = received.lock().unwrap().clone();
    for (_, headers, body) in &requests {
        let payload: Value = serde_json::from_slice(body).expect("webhook body is JSON");
        let event = payload["event"].as_str().expect("event field");
        assert_eq!(
            headers.get("x-segswarm-event").map(String::as_str),
            Some(event)
        );
        assert!(
            ["playable", "done"].contains(&event),
            "unexpected webhook {event}"
        );
        assert_eq!(payload["job"]["id"], id.as_str());
        let signature = headers
            .get("x-segswarm-signature")
            .expect("signature header with a secret set");
        assert_eq!(
            signature,
            &hmac_hex(secret, body),
            "signature does not verify with the secret"
        );
        assert_ne!(
            signature,
            &hmac_hex("wrong-secret", body),
            "signature verifies with a wrong secret"
        );
        if event == "done" {
            assert_eq!(payload["job"]["status"], "done");
            assert_eq!(payload["job"]["progress"].as_f64(), Some(100.0));
        }
    }
    // The first delivery got a 500 and was sent again, byte for byte.
    let (first_status, _, first_body) = &requests[0];
    assert_eq!(*first_status, 500);
    assert!(
        requests[1..]
            .iter()
            .any(|(status, _, body)| *status == 200 && body == first_body),
        "the delivery answered 500 was not retried"
    );
    let metrics = pod.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "segswarm_webhook_deliveries_total",
            &[("result", "delivered")]
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{metrics}"
    );
    assert!(
        metric_value(
            &metrics,
            "segswarm_webhook_deliveries_total",
            &[("result", "retried")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_source_fails_with_reason_and_webhook() {
    let dir = TestDir::new("pod-bad-source");
    let source = dir.join("not-a-video.mp4");
    std::fs::write(&source, b"this is text, not a video").unwrap();
    let (url, received) = webhook_receiver(true);
    let pod = Pod::start(
        &dir.join("storage"),
        &[("SEGSWARM_SOURCE_ROOTS", dir.path().to_str().unwrap())],
    )
    .await;
    let job = pod
        .submit(json!({ "source": source.to_str().unwrap(), "callback_url": url }))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let events = pod.events(&id).await.collect(Duration::from_secs(60)).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"queued"), "{names:?}");
    assert_eq!(names.last(), Some(&"failed"), "{names:?}");
    assert!(!names.contains(&"playable"), "{names:?}");
    let job = pod.job(&id).await;
    assert_eq!(job["status"], "failed");
    assert!(
        job["error"].as_str().is_some_and(|e| !e.trim().is_empty()),
        "a failed job carries its reason: {job}"
    );
    assert!(source.is_file(), "the source must never be touched");
    assert_eq!(
        std::fs::read(&source).unwrap(),
        b"this is text, not a video"
    );
    // The failure is delivered (after the receiver's first 500), unsigned
    // without a secret.
    let delivered = wait_for(Duration::from_secs(30), || {
        received.lock().unwrap().iter().any(|(status, headers, _)| {
            *status == 200 && headers.get("x-segswarm-event").map(String::as_str) == Some("failed")
        })
    })
    .await;
    assert!(delivered, "failed webhook not delivered");
    for (_, headers, body) in received.lock().unwrap().iter() {
        assert!(!headers.contains_key("x-segswarm-signature"));
        let payload: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(payload["event"], "failed");
        assert_eq!(payload["job"]["status"], "failed");
    }
}
