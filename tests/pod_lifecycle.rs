//! A pod's job lifecycle end to end: submit, follow the SSE events, get a
//! valid HLS package over HTTP, and the metrics that move with it.

mod common;

use std::path::Path;
use std::time::Duration;

use m3u8_rs::Playlist;
use serde_json::{json, Value};

use common::{
    decode_errors, gen_clip, has_metric, metric_value, validate_hls, ClipSpec, Pod, SseEvent,
    TestDir,
};

const JOB_LIMIT: Duration = Duration::from_secs(240);

fn names(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event.as_str()).collect()
}

fn position(events: &[SseEvent], name: &str) -> Option<usize> {
    events.iter().position(|e| e.event == name)
}

/// Checks the order and content of a finished ingest job's events.
fn check_event_order(events: &[SseEvent], id: &str) {
    let names = names(events);
    assert_eq!(
        names.first(),
        Some(&"queued"),
        "first event should be queued: {names:?}"
    );
    assert_eq!(
        names.get(1),
        Some(&"processing"),
        "second event should be processing: {names:?}"
    );
    assert_eq!(
        names.last(),
        Some(&"done"),
        "last event should be done: {names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| **n == "done").count(),
        1,
        "done exactly once: {names:?}"
    );
    for bad in ["failed", "partial", "canceled"] {
        assert!(!names.contains(&bad), "unexpected {bad}: {names:?}");
    }
    let playable = position(events, "playable").expect("a playable event");
    let done = position(events, "done").unwrap();
    assert!(playable < done, "playable must come before done: {names:?}");
    assert!(
        names.contains(&"thumbnail_ready"),
        "no thumbnail_ready event: {names:?}"
    );
    let progress_events = names.iter().filter(|n| **n == "progress").count();
    assert!(
        progress_events <= 50,
        "{progress_events} progress events: more than one per 2 % step"
    );
    let mut last_id = 0;
    let mut last_progress = -1.0;
    for event in events {
        let seq = event.id.expect("every event has an id");
        assert!(seq > last_id, "event ids must increase: {names:?}");
        last_id = seq;
        assert_eq!(event.data["id"], id, "event {} is about another job", seq);
        let progress = event.data["progress"].as_f64().expect("progress number");
        assert!(
            (0.0..=100.0).contains(&progress),
            "progress {progress} out of range"
        );
        assert!(
            progress >= last_progress,
            "progress went back from {last_progress} to {progress} at {} ({names:?})",
            event.event
        );
        last_progress = progress;
    }
    let last = &events.last().unwrap().data;
    assert_eq!(last["status"], "done");
    assert_eq!(last["progress"].as_f64(), Some(100.0));
    assert_eq!(events[playable].data["playable"], true);
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_job_events_output_and_http() {
    let dir = TestDir::new("pod-ingest");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(6.0).size(640, 360));
    let pod = Pod::start(
        &dir.join("storage"),
        &[("SEGSWARM_SOURCE_ROOTS", dir.path().to_str().unwrap())],
    )
    .await;

    let job = pod
        .submit(json!({
            "source": source.to_str().unwrap(),
            "ladder": "240p,360p",
            "segment_duration": 2,
        }))
        .await;
    let id = job["id"].as_str().expect("job id").to_string();
    uuid::Uuid::parse_str(&id).expect("job id is a UUID");
    assert_eq!(job["status"], "queued", "{job}");
    assert_eq!(job["mode"], "ingest");
    assert_eq!(job["ladder"], json!(["240p", "360p"]));
    assert_eq!(job["segment_duration"], 2);
    assert_eq!(job["master_url"], format!("/hls/{id}/master.m3u8"));
    assert_eq!(job["thumbnail_url"], format!("/hls/{id}/thumbnail.webp"));
    assert_eq!(job["playable"], false);

    let events = pod.events(&id).await.collect(JOB_LIMIT).await;
    check_event_order(&events, &id);

    let job = pod.job(&id).await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(job["progress"].as_f64(), Some(100.0), "{job}");
    assert_eq!(job["playable"], true);
    assert_eq!(job["error"], Value::Null);
    assert_eq!(job["audio_tracks"], 1);
    let duration = job["duration"].as_f64().expect("duration");
    assert!((duration - 6.0).abs() < 0.1, "duration {duration}");
    let renditions = job["renditions"].as_array().expect("renditions");
    let rendition_names: Vec<&str> = renditions
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(rendition_names, ["240p", "360p"], "{job}");
    for r in renditions {
        assert_eq!(r["done"], r["total"], "rendition not complete: {r}");
        assert_eq!(r["total"], 3, "6 s in 2 s segments: {r}");
    }

    let report = validate_hls(&pod.job_dir(&id), &source);
    assert_eq!(report.rendition_names(), ["240p", "360p"]);

    // A late subscriber gets the whole history, ending with done.
    let replay = pod.events(&id).await.collect(JOB_LIMIT).await;
    assert_eq!(
        names(&replay),
        names(&events),
        "late subscriber should see the same history"
    );
    // Last-Event-ID: only what came after.
    let playable_seq = events[position(&events, "playable").unwrap()].id.unwrap();
    let resp = pod
        .client()
        .get(pod.url(&format!("/v1/jobs/{id}/events")))
        .header("last-event-id", playable_seq.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.text().await.unwrap();
    let resumed: Vec<u64> = body
        .lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .map(|v| v.trim().parse().unwrap())
        .collect();
    assert!(
        !resumed.is_empty() && resumed.iter().all(|seq| *seq > playable_seq),
        "Last-Event-ID {playable_seq}: got ids {resumed:?}"
    );
    assert!(
        body.contains("event: done"),
        "resumed stream should end with done:\n{body}"
    );

    // Files over HTTP: types, caching, CORS, ranges.
    let client = pod.client();
    let master = client
        .get(pod.url(&format!("/hls/{id}/master.m3u8")))
        .header("origin", "https://player.example")
        .send()
        .await
        .unwrap();
    assert_eq!(master.status().as_u16(), 200);
    assert_eq!(
        header(&master, "content-type"),
        "application/vnd.apple.mpegurl"
    );
    assert_eq!(
        header(&master, "cache-control"),
        "public, max-age=31536000, immutable",
        "playlists of a done job are immutable"
    );
    assert_eq!(header(&master, "access-control-allow-origin"), "*");
    let on_disk = std::fs::read(pod.job_dir(&id).join("master.m3u8")).unwrap();
    assert_eq!(master.bytes().await.unwrap().as_ref(), on_disk.as_slice());

    let seg_path = pod.job_dir(&id).join("240p/seg_00001.ts");
    let seg_len = std::fs::metadata(&seg_path).unwrap().len();
    let seg = client
        .get(pod.url(&format!("/hls/{id}/240p/seg_00001.ts")))
        .send()
        .await
        .unwrap();
    assert_eq!(seg.status().as_u16(), 200);
    assert_eq!(header(&seg, "content-type"), "video/mp2t");
    assert_eq!(
        header(&seg, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    let ranged = client
        .get(pod.url(&format!("/hls/{id}/240p/seg_00001.ts")))
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status().as_u16(), 206, "Range request");
    assert_eq!(
        header(&ranged, "content-range"),
        format!("bytes 0-99/{seg_len}")
    );
    assert_eq!(ranged.bytes().await.unwrap().len(), 100);
    let thumb = client
        .get(pod.url(&format!("/hls/{id}/thumbnail.webp")))
        .send()
        .await
        .unwrap();
    assert_eq!(thumb.status().as_u16(), 200);
    assert_eq!(header(&thumb, "content-type"), "image/webp");
    assert_eq!(
        header(&thumb, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    let media = client
        .get(pod.url(&format!("/hls/{id}/360p/index.m3u8")))
        .send()
        .await
        .unwrap();
    assert_eq!(media.status().as_u16(), 200);
    assert_eq!(
        header(&media, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    // A segment beyond the plan does not exist.
    let beyond = client
        .get(pod.url(&format!("/hls/{id}/240p/seg_00099.ts")))
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status().as_u16(), 404);
}

/// Fetches the master playlist, every playlist it lists and every segment
/// those list into `snapshot`; returns (master Cache-Control, whether any
/// media playlist was still unfinished). Unfinished playlists get an
/// ENDLIST in the copy so that ffmpeg decodes what was listed instead of
/// waiting for more like a live player would.
async fn snapshot(pod: &Pod, id: &str, snapshot: &Path) -> (String, bool) {
    let client = pod.client();
    let base = format!("/hls/{id}/");
    let master = client
        .get(pod.url(&format!("{base}master.m3u8")))
        .send()
        .await
        .unwrap();
    assert_eq!(master.status().as_u16(), 200, "master at playable");
    let cache = header(&master, "cache-control").to_string();
    let master_bytes = master.bytes().await.unwrap();
    std::fs::create_dir_all(snapshot).unwrap();
    std::fs::write(snapshot.join("master.m3u8"), &master_bytes).unwrap();
    let master = match m3u8_rs::parse_playlist_res(&master_bytes) {
        Ok(Playlist::MasterPlaylist(m)) => m,
        other => panic!("master.m3u8 is not a master playlist: {other:?}"),
    };
    assert!(!master.variants.is_empty(), "master lists no variant");
    let mut uris: Vec<String> = master.variants.iter().map(|v| v.uri.clone()).collect();
    uris.extend(master.alternatives.iter().filter_map(|a| a.uri.clone()));
    let mut unfinished = false;
    for uri in uris {
        let resp = client
            .get(pod.url(&format!("{base}{uri}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{uri} at playable");
        let bytes = resp.bytes().await.unwrap();
        let playlist = match m3u8_rs::parse_playlist_res(&bytes) {
            Ok(Playlist::MediaPlaylist(p)) => p,
            other => panic!("{uri} is not a media playlist: {other:?}"),
        };
        assert!(!playlist.segments.is_empty(), "{uri} lists no segment");
        let target = snapshot.join(&uri);
        let folder = target.parent().unwrap().to_path_buf();
        std::fs::create_dir_all(&folder).unwrap();
        let mut text = String::from_utf8(bytes.to_vec()).unwrap();
        if !playlist.end_list {
            unfinished = true;
            text.push_str("#EXT-X-ENDLIST\n");
        }
        std::fs::write(&target, text).unwrap();
        let uri_dir = uri.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        for segment in &playlist.segments {
            let resp = client
                .get(pod.url(&format!("{base}{uri_dir}/{}", segment.uri)))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200, "{uri_dir}/{}", segment.uri);
            std::fs::write(folder.join(&segment.uri), resp.bytes().await.unwrap()).unwrap();
        }
    }
    (cache, unfinished)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playable_master_plays_before_done() {
    let dir = TestDir::new("pod-playable");
    let source = dir.join("source.mp4");
    // 12 s of noise at veryfast with one slot: the job is still running
    // well after its first segment.
    gen_clip(&source, &ClipSpec::new(12.0).size(640, 360).noisy());
    let pod = Pod::start(
        &dir.join("storage"),
        &[
            ("SEGSWARM_SOURCE_ROOTS", dir.path().to_str().unwrap()),
            ("SEGSWARM_SLOTS", "1"),
            ("SEGSWARM_PRESET", "veryfast"),
        ],
    )
    .await;
    let job = pod
        .submit(json!({ "source": source.to_str().unwrap(), "ladder": ["240p", "360p"] }))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let mut stream = pod.events(&id).await;
    let mut seen = Vec::new();
    let playable = loop {
        let event = tokio::time::timeout(JOB_LIMIT, stream.next())
            .await
            .expect("events in time")
            .unwrap_or_else(|| panic!("stream ended before playable: {:?}", names(&seen)));
        assert!(
            !["done", "partial", "failed", "canceled"].contains(&event.event.as_str()),
            "{} arrived before playable: {:?}",
            event.event,
            names(&seen)
        );
        seen.push(event.clone());
        if event.event == "playable" {
            break event;
        }
    };
    let snap = dir.join("snapshot");
    let (cache, unfinished) = snapshot(&pod, &id, &snap).await;

    assert_eq!(playable.data["status"], "playable", "{}", playable.data);
    assert_eq!(playable.data["playable"], true);
    let progress = playable.data["progress"].as_f64().unwrap();
    assert!(
        progress < 100.0,
        "playable should come before the job is complete, progress {progress}"
    );
    if unfinished {
        assert_eq!(
            cache, "no-cache",
            "master of an unfinished job must not be cached as immutable"
        );
    }
    let errors = decode_errors(snap.join("master.m3u8").to_str().unwrap());
    assert!(
        errors.trim().is_empty(),
        "the master playlist at playable time does not decode cleanly:\n{errors}"
    );

    let rest = stream.collect(JOB_LIMIT).await;
    let rest_names = names(&rest);
    assert_eq!(
        rest_names.last(),
        Some(&"done"),
        "after playable: {rest_names:?}"
    );
    assert!(!rest_names.contains(&"playable"), "playable twice");
    validate_hls(&pod.job_dir(&id), &source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_appear_and_move() {
    let dir = TestDir::new("pod-metrics");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(4.0).size(640, 360));
    let pod = Pod::start(
        &dir.join("storage"),
        &[("SEGSWARM_SOURCE_ROOTS", dir.path().to_str().unwrap())],
    )
    .await;

    let before = pod.metrics().await;
    let route_404 = [("route", "/v1/jobs/{id}"), ("status", "404")];
    let unmatched = [("route", "unmatched"), ("status", "404")];
    let count_404 =
        metric_value(&before, "segswarm_http_requests_total", &route_404).unwrap_or(0.0);
    let count_unmatched =
        metric_value(&before, "segswarm_http_requests_total", &unmatched).unwrap_or(0.0);
    assert_eq!(
        metric_value(&before, "segswarm_units_completed_total", &[]).unwrap_or(0.0),
        0.0
    );
    let (status, _) = pod
        .get_json(&format!("/v1/jobs/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(status, 404);
    let (status, _) = pod.get_json("/no/such/route").await;
    assert_eq!(status, 404);

    let job = pod
        .submit(json!({ "source": source.to_str().unwrap() }))
        .await;
    let id = job["id"].as_str().unwrap();
    let job = pod.wait_terminal(id, JOB_LIMIT).await;
    assert_eq!(job["status"], "done", "{job}");
    let units: u64 = job["renditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["total"].as_u64().unwrap())
        .sum::<u64>()
        + job["audio_tracks"].as_u64().unwrap()
        + 1;

    let after = pod.metrics().await;
    for name in [
        "segswarm_http_requests_total",
        "segswarm_http_request_seconds",
        "segswarm_jobs",
        "segswarm_units_completed_total",
        "segswarm_unit_encode_seconds",
        "segswarm_units_in_flight",
        "segswarm_storage_write_seconds",
        "segswarm_bytes_written_total",
        "segswarm_units_skipped_total",
        "segswarm_watch_jobs_total",
        "segswarm_ready",
    ] {
        assert!(has_metric(&after, name), "/metrics lacks {name}:\n{after}");
    }
    assert_eq!(
        metric_value(&after, "segswarm_http_requests_total", &route_404),
        Some(count_404 + 1.0),
        "a 404 on /v1/jobs/{{id}} is counted:\n{after}"
    );
    assert_eq!(
        metric_value(&after, "segswarm_http_requests_total", &unmatched),
        Some(count_unmatched + 1.0),
        "a 404 on an unknown route is counted:\n{after}"
    );
    assert_eq!(
        metric_value(&after, "segswarm_units_completed_total", &[]),
        Some(units as f64),
        "every unit of the job completed once:\n{after}"
    );
    assert!(
        metric_value(
            &after,
            "segswarm_units_completed_total",
            &[("kind", "video"), ("rendition", "360p")]
        )
        .unwrap_or(0.0)
            >= 2.0,
        "360p segments counted:\n{after}"
    );
    assert_eq!(
        metric_value(&after, "segswarm_jobs", &[("status", "done")]),
        Some(1.0)
    );
    assert_eq!(metric_value(&after, "segswarm_ready", &[]), Some(1.0));
    assert_eq!(
        metric_value(&after, "segswarm_units_in_flight", &[]),
        Some(0.0)
    );
    assert!(metric_value(&after, "segswarm_bytes_written_total", &[]).unwrap_or(0.0) > 10_000.0);
    assert!(
        metric_value(&after, "segswarm_storage_write_seconds_count", &[]).unwrap_or(0.0)
            >= units as f64
    );
    assert!(metric_value(&after, "segswarm_unit_encode_seconds_count", &[]).unwrap_or(0.0) > 0.0);
    assert!(metric_value(&after, "segswarm_http_request_seconds_count", &[]).unwrap_or(0.0) > 0.0);
}

/// The audio track is published while it is encoded: a job plays after the
/// track's first segment, not after the whole track; the thumbnail's ffmpeg
/// runs at a lower CPU priority than the encodes a player waits for. The audio encode is
/// slowed to real time (`-re`) by an `ffmpeg` wrapper, so the whole 12 s
/// track takes 12 s; the job must play well before that, with an EVENT
/// audio playlist that later becomes VOD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_plays_while_its_track_is_still_encoding() {
    let dir = TestDir::new("pod-audio-progressive");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(12.0).size(320, 180));
    let bin_dir = dir.join("wrapper-bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let wrapper = bin_dir.join("ffmpeg");
    // Also logs each run's niceness (field 19 of /proc/<pid>/stat).
    let log = dir.join("ffmpeg-invocations.log");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$(cut -d' ' -f19 /proc/$$/stat) $*\" >> '{log}'\ncase \"$*\" in *'-f hls'*) exec '{real}' -re \"$@\";; esac\nexec '{real}' \"$@\"\n",
            real = common::pod::which("ffmpeg").display(),
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let pod = Pod::builder(&dir.join("storage"))
        .env("SEGSWARM_SOURCE_ROOTS", dir.path().to_str().unwrap())
        .path_prefix(&bin_dir)
        .start()
        .await;
    let started = std::time::Instant::now();
    let job = pod
        .submit(json!({ "source": source.to_str().unwrap() }))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    pod.wait_status(&id, &["playable"], JOB_LIMIT).await;
    let to_playable = started.elapsed();
    let audio_playlist = pod.job_dir(&id).join("audio/0/index.m3u8");
    let text = std::fs::read_to_string(&audio_playlist).expect("audio playlist at playable");
    assert!(
        to_playable < Duration::from_secs(9),
        "playable after {to_playable:?}: the 12 s real-time audio track was waited for"
    );
    assert!(
        text.contains("#EXT-X-PLAYLIST-TYPE:EVENT") && !text.contains("#EXT-X-ENDLIST"),
        "at playable the audio track is still growing:\n{text}"
    );
    let growing = m3u8_rs::parse_media_playlist_res(text.as_bytes()).expect("parses");
    for segment in &growing.segments {
        let path = audio_playlist.with_file_name(&segment.uri);
        assert!(
            path.is_file(),
            "listed audio segment {} exists",
            segment.uri
        );
    }
    let errors = decode_errors(pod.job_dir(&id).join("master.m3u8").to_str().unwrap());
    assert!(
        errors.trim().is_empty(),
        "the master at playable time decodes cleanly:\n{errors}"
    );
    eprintln!(
        "playable after {to_playable:?} with {} of the audio segments listed",
        growing.segments.len()
    );

    let job = pod.wait_terminal(&id, JOB_LIMIT).await;
    assert_eq!(job["status"], "done", "{job}");
    let text = std::fs::read_to_string(&audio_playlist).unwrap();
    assert!(
        text.contains("#EXT-X-PLAYLIST-TYPE:VOD") && text.contains("#EXT-X-ENDLIST"),
        "the finished audio playlist is VOD:\n{text}"
    );
    validate_hls(&pod.job_dir(&id), &source);

    let runs = std::fs::read_to_string(&log).unwrap();
    let niceness = |needle: &str| -> Vec<String> {
        runs.lines()
            .filter(|line| line.contains(needle))
            .filter_map(|line| line.split(' ').next().map(str::to_string))
            .collect()
    };
    assert_eq!(
        niceness("-f webp"),
        ["10"],
        "thumbnail runs at nice 10:\n{runs}"
    );
    let segments = niceness("-f mpegts");
    assert!(
        !segments.is_empty() && segments.iter().all(|n| n == "0"),
        "segments run at the pod's priority:\n{runs}"
    );
}
