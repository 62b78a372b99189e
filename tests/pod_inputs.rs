//! What a pod accepts and refuses: bad API input with its status and error
//! code, paths under /hls that try to leave a job's folder, the API token,
//! job listing, and the watch folder.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::{gen_clip, has_metric, metric_value, raw_get, wait_for, ClipSpec, Pod, TestDir};

const JOB_LIMIT: Duration = Duration::from_secs(240);

/// Sends `body` as the raw POST /v1/jobs body; returns status and JSON.
async fn post_raw(pod: &Pod, body: &str) -> (u16, Value) {
    let resp = pod
        .request(reqwest::Method::POST, "/v1/jobs")
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn assert_error(case: &str, got: (u16, Value), status: u16, code: &str) {
    let (got_status, body) = got;
    assert_eq!(got_status, status, "{case}: status (body {body})");
    assert_eq!(body["error"]["code"], code, "{case}: error code in {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{case}: error message in {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_error_codes() {
    let dir = TestDir::new("pod-bad-input");
    let roots = dir.join("sources");
    std::fs::create_dir_all(&roots).unwrap();
    let source = roots.join("ok.mp4");
    gen_clip(&source, &ClipSpec::new(2.0));
    let outside = dir.join("outside.mp4");
    std::fs::copy(&source, &outside).unwrap();
    let pod = Pod::start(
        &dir.join("storage"),
        &[("SEGSWARM_SOURCE_ROOTS", roots.to_str().unwrap())],
    )
    .await;
    let src = source.to_str().unwrap();

    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("not JSON", "{".into(), 400, "invalid_json"),
        ("not JSON at all", "hello".into(), 400, "invalid_json"),
        (
            "unknown field",
            json!({"source": src, "colour": "red"}).to_string(),
            422,
            "invalid_request",
        ),
        ("missing source", "{}".into(), 422, "invalid_request"),
        (
            "source of the wrong type",
            json!({"source": 5}).to_string(),
            422,
            "invalid_request",
        ),
        (
            "priority of the wrong type",
            json!({"source": src, "priority": "high"}).to_string(),
            422,
            "invalid_request",
        ),
        (
            "unknown mode",
            json!({"source": src, "mode": "fast"}).to_string(),
            422,
            "invalid_request",
        ),
        (
            "rung that is not a height",
            json!({"source": src, "ladder": "240p,abc"}).to_string(),
            422,
            "invalid_settings",
        ),
        (
            "rung too small",
            json!({"source": src, "ladder": "10p"}).to_string(),
            422,
            "invalid_settings",
        ),
        (
            "duplicate rung",
            json!({"source": src, "ladder": "240p,240p"}).to_string(),
            422,
            "invalid_settings",
        ),
        (
            "empty ladder",
            json!({"source": src, "ladder": []}).to_string(),
            422,
            "invalid_settings",
        ),
        (
            "unknown rung in a list",
            json!({"source": src, "ladder": ["bogus"]}).to_string(),
            422,
            "invalid_settings",
        ),
        (
            "segment duration too short",
            json!({"source": src, "segment_duration": 1}).to_string(),
            422,
            "invalid_settings",
        ),
        (
            "segment duration too long",
            json!({"source": src, "segment_duration": 11}).to_string(),
            422,
            "invalid_settings",
        ),
        (
            "missing file",
            json!({"source": roots.join("nope.mp4")}).to_string(),
            422,
            "invalid_source",
        ),
        (
            "file outside the source roots",
            json!({"source": outside}).to_string(),
            422,
            "invalid_source",
        ),
        (
            "system file",
            json!({"source": "/etc/passwd"}).to_string(),
            422,
            "invalid_source",
        ),
        (
            "traversal out of the roots",
            json!({"source": format!("{}/../outside.mp4", roots.display())}).to_string(),
            422,
            "invalid_source",
        ),
        (
            "ftp URL",
            json!({"source": "ftp://example.com/a.mp4"}).to_string(),
            422,
            "invalid_source",
        ),
        (
            "file URL",
            json!({"source": "file:///etc/passwd"}).to_string(),
            422,
            "invalid_source",
        ),
        (
            "ffmpeg protocol",
            json!({"source": "concat:a.mp4|b.mp4"}).to_string(),
            422,
            "invalid_source",
        ),
        (
            "empty source",
            json!({"source": ""}).to_string(),
            422,
            "invalid_source",
        ),
        (
            "folder as source",
            json!({"source": roots}).to_string(),
            422,
            "invalid_source",
        ),
        (
            "callback that is not http",
            json!({"source": src, "callback_url": "ftp://x/y"}).to_string(),
            422,
            "invalid_callback_url",
        ),
        (
            "body over 64 KiB",
            json!({"source": src, "callback_url": format!("http://x/{}", "a".repeat(70_000))})
                .to_string(),
            413,
            "body_too_large",
        ),
    ];
    for (case, body, status, code) in &cases {
        assert_error(case, post_raw(&pod, body).await, *status, code);
    }
    // None of them created a job or a folder.
    let (status, list) = pod.get_json("/v1/jobs").await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 0, "refused requests created jobs: {list}");
    let jobs_dir = pod.storage().join("jobs");
    let folders = std::fs::read_dir(&jobs_dir)
        .map(|rd| rd.count())
        .unwrap_or(0);
    assert_eq!(folders, 0, "refused requests left folders in {jobs_dir:?}");

    let random = uuid::Uuid::new_v4();
    let client = pod.client();
    for (method, path, status, code) in [
        ("GET", "/v1/jobs/not-a-uuid".to_string(), 400, "invalid_id"),
        (
            "DELETE",
            "/v1/jobs/not-a-uuid".to_string(),
            400,
            "invalid_id",
        ),
        (
            "GET",
            "/v1/jobs/not-a-uuid/events".to_string(),
            400,
            "invalid_id",
        ),
        ("GET", format!("/v1/jobs/{random}"), 404, "not_found"),
        ("DELETE", format!("/v1/jobs/{random}"), 404, "not_found"),
        (
            "DELETE",
            format!("/v1/jobs/{random}?purge=true"),
            404,
            "not_found",
        ),
        ("GET", format!("/v1/jobs/{random}/events"), 404, "not_found"),
        (
            "GET",
            "/v1/jobs?status=bogus".to_string(),
            400,
            "invalid_query",
        ),
        ("GET", "/v1/jobs?limit=0".to_string(), 400, "invalid_query"),
        (
            "GET",
            "/v1/jobs?limit=abc".to_string(),
            400,
            "invalid_query",
        ),
        ("GET", "/v1/nothing".to_string(), 404, "not_found"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = client
            .request(method.clone(), pod.url(&path))
            .send()
            .await
            .unwrap();
        let got = (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        );
        assert_error(&format!("{method} {path}"), got, status, code);
    }

    // A good request still works after all that.
    let (status, job) = post_raw(
        &pod,
        &json!({"source": src, "mode": "on_demand"}).to_string(),
    )
    .await;
    assert_eq!(status, 201, "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_paths_are_refused_without_source_roots() {
    let dir = TestDir::new("pod-no-roots");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(2.0));
    let pod = Pod::start(&dir.join("storage"), &[]).await;
    for path in [source.to_str().unwrap(), "/etc/passwd"] {
        let got = pod.post_job(&json!({ "source": path })).await;
        assert_error(
            &format!("local path {path} with no SEGSWARM_SOURCE_ROOTS"),
            got,
            422,
            "invalid_source",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_paths_cannot_leave_the_job_folder() {
    let dir = TestDir::new("pod-traversal");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(4.0).size(640, 360));
    let storage = dir.join("storage");
    let pod = Pod::start(
        &storage,
        &[("SEGSWARM_SOURCE_ROOTS", dir.path().to_str().unwrap())],
    )
    .await;
    let job = pod
        .submit(json!({ "source": source.to_str().unwrap() }))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let job = pod.wait_terminal(&id, JOB_LIMIT).await;
    assert_eq!(job["status"], "done", "{job}");
    let job_dir = pod.job_dir(&id);

    // Bait: files a reader must never get.
    std::fs::write(storage.join("secret.m3u8"), "#EXTM3U\n# storage secret\n").unwrap();
    std::fs::write(storage.join("jobs/secret.ts"), "jobs secret").unwrap();
    std::fs::create_dir_all(job_dir.join(".tmp")).unwrap();
    std::fs::write(job_dir.join(".tmp/leak.ts"), "tmp secret").unwrap();
    std::fs::write(job_dir.join(".hidden.m3u8"), "#EXTM3U\n# hidden\n").unwrap();
    std::os::unix::fs::symlink(storage.join("secret.m3u8"), job_dir.join("link.m3u8")).unwrap();
    std::os::unix::fs::symlink("/etc", job_dir.join("etc")).unwrap();
    std::os::unix::fs::symlink(&storage, job_dir.join("outside")).unwrap();

    // The raw client works: a real file comes back.
    let (status, _, body) = raw_get(pod.addr(), &format!("/hls/{id}/master.m3u8"), &[]);
    assert_eq!(status, 200);
    assert!(body.starts_with(b"#EXTM3U"));

    let cases = [
        format!("/hls/{id}/../secret.ts"),
        format!("/hls/{id}/../../secret.m3u8"),
        format!("/hls/{id}/240p/../../../secret.m3u8"),
        format!("/hls/{id}/%2e%2e/%2e%2e/secret.m3u8"),
        format!("/hls/{id}/%2e%2e%2f%2e%2e%2fsecret.m3u8"),
        format!("/hls/{id}/..%2F..%2Fsecret.m3u8"),
        format!("/hls/{id}/240p%2F..%2F..%2F..%2Fsecret.m3u8"),
        format!("/hls/{id}/%2Fetc%2Fpasswd"),
        format!("/hls/{id}//etc/passwd"),
        format!("/hls/{id}/.tmp/leak.ts"),
        format!("/hls/{id}/%2etmp/leak.ts"),
        format!("/hls/{id}/.hidden.m3u8"),
        format!("/hls/{id}/job.json"),
        format!("/hls/{id}/status.json"),
        format!("/hls/{id}/link.m3u8"),
        format!("/hls/{id}/etc/passwd"),
        format!("/hls/{id}/outside/secret.m3u8"),
        format!("/hls/{id}/master.m3u8%00"),
        format!("/hls/{id}/240p/seg_00000.ts%00.m3u8"),
        format!("/hls/{id}/master.m3u8%00.ts"),
        format!("/hls/{id}/240p\\..\\..\\..\\secret.m3u8"),
        "/hls/../storage/secret.m3u8".to_string(),
        format!("/hls/{}/master.m3u8", uuid::Uuid::new_v4()),
        "/hls/not-a-uuid/master.m3u8".to_string(),
        format!("/hls/%2e%2e/{id}/master.m3u8"),
    ];
    for target in &cases {
        let (status, _, body) = raw_get(pod.addr(), target, &[]);
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains("secret") && !text.contains("root:") && !text.contains("hidden"),
            "GET {target} leaked a file: {text}"
        );
        // `..` resolved against /hls/<id> can only reach another route
        // (which answers 404 as well) — never a file.
        assert_eq!(status, 404, "GET {target}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_token_guards_v1_only() {
    let dir = TestDir::new("pod-token");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(2.0).size(640, 360));
    let token = "t0ken-under-test";
    let pod = Pod::builder(&dir.join("storage"))
        .env("SEGSWARM_SOURCE_ROOTS", dir.path().to_str().unwrap())
        .env("SEGSWARM_API_TOKEN", token)
        .start()
        .await;
    let client = pod.client();
    let body = json!({ "source": source.to_str().unwrap() });

    // Without the token, or with a wrong one: 401 on every /v1 route.
    let random = uuid::Uuid::new_v4();
    for auth in [
        None,
        Some("Bearer wrong"),
        Some(token),
        Some("Basic dG9rZW4="),
    ] {
        for (method, path) in [
            ("POST", "/v1/jobs".to_string()),
            ("GET", "/v1/jobs".to_string()),
            ("GET", format!("/v1/jobs/{random}")),
            ("DELETE", format!("/v1/jobs/{random}")),
            ("GET", format!("/v1/jobs/{random}/events")),
        ] {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let mut req = client.request(method.clone(), pod.url(&path));
            if let Some(auth) = auth {
                req = req.header("authorization", auth);
            }
            if method == reqwest::Method::POST {
                req = req.json(&body);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            assert_eq!(
                status, 401,
                "{method} {path} with authorization {auth:?} must be refused"
            );
            assert!(
                resp.headers().contains_key("www-authenticate"),
                "401 without WWW-Authenticate"
            );
            let json: Value = resp.json().await.unwrap();
            assert_eq!(json["error"]["code"], "unauthorized", "{json}");
        }
    }

    // With it: accepted.
    let job = pod.submit(body.clone()).await;
    let id = job["id"].as_str().unwrap().to_string();
    let (status, list) = pod.get_json("/v1/jobs").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["total"], 1);
    let job = pod.wait_terminal(&id, JOB_LIMIT).await;
    assert_eq!(job["status"], "done");
    let events = pod.events(&id).await.collect(Duration::from_secs(10)).await;
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("done"));

    // /hls, /metrics, /healthz and /readyz stay open.
    for path in [
        format!("/hls/{id}/master.m3u8"),
        format!("/hls/{id}/240p/seg_00000.ts"),
        "/metrics".to_string(),
        "/healthz".to_string(),
        "/readyz".to_string(),
    ] {
        let resp = client.get(pod.url(&path)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path} without a token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_listed_newest_first_with_paging() {
    let dir = TestDir::new("pod-list");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(2.0));
    let pod = Pod::start(
        &dir.join("storage"),
        &[("SEGSWARM_SOURCE_ROOTS", dir.path().to_str().unwrap())],
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let job = pod
            .submit(json!({ "source": source.to_str().unwrap(), "ladder": "240p" }))
            .await;
        ids.push(job["id"].as_str().unwrap().to_string());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in &ids {
        assert_eq!(pod.wait_terminal(id, JOB_LIMIT).await["status"], "done");
    }
    let page_ids = |list: &Value| -> Vec<String> {
        list["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (status, list) = pod.get_json("/v1/jobs").await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 3);
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(page_ids(&list), newest_first, "newest first");
    let (_, page) = pod.get_json("/v1/jobs?limit=2").await;
    assert_eq!(page_ids(&page), newest_first[..2]);
    assert_eq!(
        (page["limit"].as_u64(), page["total"].as_u64()),
        (Some(2), Some(3))
    );
    let (_, page) = pod.get_json("/v1/jobs?limit=2&offset=2").await;
    assert_eq!(page_ids(&page), newest_first[2..]);
    assert_eq!(page["offset"], 2);
    let (_, done) = pod.get_json("/v1/jobs?status=done").await;
    assert_eq!(done["total"], 3);
    let (_, failed) = pod.get_json("/v1/jobs?status=failed").await;
    assert_eq!(failed["total"], 0);
    assert_eq!(failed["jobs"], json!([]));
}

/// Copies `from` into `to` in a few chunks with pauses, like a slow upload.
async fn slow_copy(from: &std::path::Path, to: &std::path::Path, pause: Duration) {
    use std::io::Write;
    let bytes = std::fs::read(from).unwrap();
    let mut file = std::fs::File::create(to).unwrap();
    for chunk in bytes.chunks(bytes.len() / 4 + 1) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        tokio::time::sleep(pause).await;
    }
}

async fn watched_jobs(pod: &Pod) -> Vec<Value> {
    let (status, list) = pod.get_json("/v1/jobs").await;
    assert_eq!(status, 200);
    list["jobs"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_folder_makes_one_job_per_file_across_restarts() {
    let dir = TestDir::new("pod-watch");
    let clip = dir.join("clip.mp4");
    gen_clip(&clip, &ClipSpec::new(4.0).size(640, 360));
    let watch = dir.join("watch");
    std::fs::create_dir_all(&watch).unwrap();
    let storage = dir.join("storage");
    let envs = [
        ("SEGSWARM_WATCH_DIR", watch.to_str().unwrap()),
        ("SEGSWARM_WATCH_POLL", "1"),
        ("SEGSWARM_WATCH_SETTLE_MS", "1500"),
    ];
    let mut pod = Pod::start(&storage, &envs).await;

    // A file that arrives slowly becomes one job, once it is complete; other
    // files are ignored.
    std::fs::write(watch.join("notes.txt"), "not a video").unwrap();
    std::fs::copy(&clip, watch.join(".partial-upload.mp4")).unwrap();
    slow_copy(&clip, &watch.join("first.mp4"), Duration::from_millis(300)).await;
    let mut jobs = Vec::new();
    for _ in 0..300 {
        jobs = watched_jobs(&pod).await;
        if !jobs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(jobs.len(), 1, "one job for first.mp4: {jobs:?}");
    let first_id = jobs[0]["id"].as_str().unwrap().to_string();
    assert!(
        jobs[0]["source"].as_str().unwrap().ends_with("first.mp4"),
        "{}",
        jobs[0]
    );
    let job = pod.wait_terminal(&first_id, JOB_LIMIT).await;
    assert_eq!(
        job["status"], "done",
        "the watched file was submitted before it was complete? {job}"
    );
    // Still exactly one job after several settle periods.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(watched_jobs(&pod).await.len(), 1, "file submitted twice");
    let metrics = pod.metrics().await;
    assert!(has_metric(&metrics, "segswarm_watch_jobs_total"));
    assert_eq!(
        metric_value(&metrics, "segswarm_watch_jobs_total", &[]),
        Some(1.0)
    );

    // A restarted pod on the same storage does not submit it again.
    pod.sigterm();
    assert!(
        pod.wait_exit(Duration::from_secs(30)).await.is_some(),
        "pod did not stop"
    );
    let pod = Pod::start(&storage, &envs).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let jobs = watched_jobs(&pod).await;
    assert_eq!(
        jobs.len(),
        1,
        "the restarted pod submitted the file again: {jobs:?}"
    );
    assert_eq!(jobs[0]["id"], first_id.as_str());
    assert_eq!(
        metric_value(&pod.metrics().await, "segswarm_watch_jobs_total", &[]),
        Some(0.0)
    );

    // A new file after the restart becomes exactly one new job.
    std::fs::copy(&clip, watch.join("second.mp4")).unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || {
            std::fs::read_dir(storage.join("jobs"))
                .map(|rd| rd.count())
                .unwrap_or(0)
                >= 2
        })
        .await,
        "second.mp4 did not become a job"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let jobs = watched_jobs(&pod).await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    let second = jobs.iter().find(|j| j["id"] != first_id.as_str()).unwrap();
    assert!(second["source"].as_str().unwrap().ends_with("second.mp4"));
    let second_id = second["id"].as_str().unwrap().to_string();
    assert_eq!(
        pod.wait_terminal(&second_id, JOB_LIMIT).await["status"],
        "done"
    );
    assert_eq!(
        metric_value(&pod.metrics().await, "segswarm_watch_jobs_total", &[]),
        Some(1.0)
    );
}
