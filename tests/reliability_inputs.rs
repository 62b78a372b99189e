//! Hostile and bad input (issue #7): every input gets a clear error (the
//! right HTTP status and a JSON error naming the problem, or a failed job
//! whose error names it), nothing leaks (no file outside the roots is read,
//! no job, folder or ffmpeg is left behind) and the pod keeps serving: a
//! normal job still works after the barrage.
//!
//! `tests/pod_inputs.rs` and `tests/transcode_errors.rs` cover the plain
//! bad requests and broken files; this file adds the hostile ones: private
//! addresses (SSRF), playlists that open other files, lying headers and
//! timestamps, oversized and deeply nested bodies.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use common::{
    ffmpeg_processes_mentioning, gen_clip, raw_get, run_transcode, ClipSpec, Pod, TestDir,
};

const JOB_LIMIT: Duration = Duration::from_secs(120);
const TOKEN: &str = "hostile-input-token";

/// Sends `body` as the raw POST /v1/jobs body; returns status and JSON.
async fn post_raw(pod: &Pod, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let resp = pod
        .request(reqwest::Method::POST, "/v1/jobs")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST /v1/jobs");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Asserts the status, the error code, and that the message names the
/// problem (contains `hint`, case-insensitive) without leaking a file.
fn assert_error(case: &str, got: &(u16, Value), status: u16, code: &str, hint: &str) {
    let (got_status, body) = got;
    assert_eq!(*got_status, status, "{case}: status (body {body})");
    assert_eq!(body["error"]["code"], code, "{case}: error code in {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.to_lowercase().contains(&hint.to_lowercase()),
        "{case}: message should mention {hint:?}: {message}"
    );
    assert!(
        !message.contains("root:"),
        "{case}: leaked a file: {message}"
    );
}

/// POSTs headers announcing a JSON body of `length` bytes with `Expect:
/// 100-continue` and sends the body only if the pod says 100 Continue;
/// returns the final status and JSON body.
fn post_expecting_continue(
    addr: std::net::SocketAddr,
    authorization: Option<&str>,
    length: usize,
) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\nExpect: 100-continue\r\nConnection: close\r\n"
    );
    if let Some(value) = authorization {
        head.push_str(&format!("Authorization: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("send headers");
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
        assert!(
            !response.starts_with(b"HTTP/1.1 100"),
            "the pod asked for the {length}-byte body"
        );
    }
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(Value::Null);
    (status, body)
}

/// A pod that refuses private URLs (the production default), with a token.
async fn strict_pod(dir: &TestDir, roots: &Path) -> Pod {
    Pod::builder(&dir.join("storage"))
        .env("SEGSWARM_SOURCE_ROOTS", roots.to_str().unwrap())
        .env("SEGSWARM_ALLOW_PRIVATE_URLS", "false")
        .env("SEGSWARM_API_TOKEN", TOKEN)
        .start()
        .await
}

/// The pod still answers and a small valid job still plays.
async fn assert_still_serving(pod: &Pod, source: &Path) {
    let (status, health) = pod.get_json("/healthz").await;
    assert_eq!(status, 200, "/healthz after the barrage: {health}");
    let (status, ready) = pod.get_json("/readyz").await;
    assert_eq!(status, 200, "/readyz after the barrage: {ready}");
    let job = pod
        .submit(json!({ "source": source.to_str().unwrap(), "ladder": ["240p"] }))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let job = pod.wait_terminal(&id, JOB_LIMIT).await;
    assert_eq!(job["status"], "done", "valid job after the barrage: {job}");
    let (status, _, body) = raw_get(pod.addr(), &format!("/hls/{id}/master.m3u8"), &[]);
    assert_eq!(status, 200);
    assert!(body.starts_with(b"#EXTM3U"));
    assert!(
        !pod.log_text().contains("panicked"),
        "the pod panicked:\n{}",
        pod.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_clear_errors_and_the_pod_keeps_serving() {
    let dir = TestDir::new("hostile-requests");
    let roots = dir.join("sources");
    std::fs::create_dir_all(&roots).unwrap();
    let source = roots.join("ok.mp4");
    gen_clip(&source, &ClipSpec::new(2.0));
    let outside_dir = dir.join("outside");
    std::fs::create_dir_all(&outside_dir).unwrap();
    let outside = outside_dir.join("secret.mp4");
    std::fs::copy(&source, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, roots.join("link.mp4")).unwrap();
    std::os::unix::fs::symlink(&outside_dir, roots.join("linked-dir")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", roots.join("passwd.mp4")).unwrap();
    let pod = strict_pod(&dir, &roots).await;
    let src = source.to_str().unwrap();

    // Source URLs on loopback, link-local, private and other non-public
    // addresses, in the spellings that usually slip past such checks.
    for (url, hint) in [
        ("http://127.0.0.1:9/a.mp4", "loopback"),
        ("http://127.1.2.3/a.mp4", "loopback"),
        ("http://[::1]:9/a.mp4", "loopback"),
        ("http://localhost:9/a.mp4", "loopback"),
        // Refused whether or not the resolver knows the trailing dot.
        ("HTTP://LOCALHOST./a.mp4", ""),
        ("http://2130706433/a.mp4", "loopback"),
        ("http://0x7f.0.0.1/a.mp4", "loopback"),
        ("http://[::ffff:127.0.0.1]/a.mp4", "loopback"),
        ("http://evil.example\\@127.0.0.1/a.mp4", "resolve"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::ffff:169.254.169.254]/latest/", "link-local"),
        ("http://10.0.0.1/a.mp4", "private"),
        ("http://172.16.5.4/a.mp4", "private"),
        ("https://192.168.1.1/a.mp4", "private"),
        ("http://100.64.0.1/a.mp4", "cgnat"),
        ("http://0.0.0.0:8080/a.mp4", "unspecified"),
        ("http://[fe80::1]/a.mp4", "link-local"),
        ("http://[fd00::1]/a.mp4", "unique local"),
        ("http://224.0.0.1/a.mp4", "multicast"),
        ("http://name.invalid/a.mp4", "cannot resolve"),
    ] {
        let got = pod.post_job(&json!({ "source": url })).await;
        assert_error(&format!("source {url}"), &got, 422, "invalid_source", hint);
        let message = got.1["error"]["message"].as_str().unwrap_or_default();
        if !["cannot resolve", "resolve", ""].contains(&hint) {
            assert!(
                message.contains("SEGSWARM_ALLOW_PRIVATE_URLS"),
                "the refusal says how to allow it: {message}"
            );
        }
    }
    // The same rule for webhooks.
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://169.254.169.254/hook",
        "http://[::1]/hook",
        "http://192.168.0.10/hook",
    ] {
        let got = pod
            .post_job(&json!({ "source": src, "callback_url": url }))
            .await;
        assert_error(
            &format!("callback {url}"),
            &got,
            422,
            "invalid_callback_url",
            "SEGSWARM_ALLOW_PRIVATE_URLS",
        );
    }

    let deep = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let rungs: Vec<String> = (0..1000).map(|i| format!("{}p", 100 + i)).collect();
    let cases: Vec<(&str, String, u16, &str, &str)> = vec![
        (
            "file URL with a host",
            json!({"source": "file://localhost/etc/passwd"}).to_string(),
            422,
            "invalid_source",
            "unsupported",
        ),
        (
            "symlink in the roots to a file outside",
            json!({"source": roots.join("link.mp4")}).to_string(),
            422,
            "invalid_source",
            "outside the allowed source roots",
        ),
        (
            "symlinked folder in the roots",
            json!({"source": roots.join("linked-dir/secret.mp4")}).to_string(),
            422,
            "invalid_source",
            "outside the allowed source roots",
        ),
        (
            "symlink to /etc/passwd",
            json!({"source": roots.join("passwd.mp4")}).to_string(),
            422,
            "invalid_source",
            "outside the allowed source roots",
        ),
        (
            "deeply nested JSON",
            deep(30_000),
            422,
            "invalid_request",
            "invalid type",
        ),
        (
            "deeply nested ladder",
            format!(r#"{{"source":"{src}","ladder":{}}}"#, deep(20_000)),
            400,
            "invalid_json",
            "recursion limit",
        ),
        (
            "object as ladder",
            json!({"source": src, "ladder": {"240p": true}}).to_string(),
            422,
            "invalid_request",
            "",
        ),
        (
            "duplicate field",
            format!(r#"{{"source":"{src}","source":"http://example.com/a.mp4"}}"#),
            422,
            "invalid_request",
            "duplicate field",
        ),
        (
            "unknown nested-looking field",
            json!({"source": src, "settings": {"preset": "placebo"}}).to_string(),
            422,
            "invalid_request",
            "unknown field",
        ),
        (
            "1000-rung ladder as a list",
            json!({"source": src, "ladder": rungs}).to_string(),
            422,
            "invalid_settings",
            "at most 10",
        ),
        (
            "1000-rung ladder as text",
            json!({"source": src, "ladder": rungs.join(",")}).to_string(),
            422,
            "invalid_settings",
            "at most 10",
        ),
        (
            "segment duration 0",
            json!({"source": src, "segment_duration": 0}).to_string(),
            422,
            "invalid_settings",
            "segment duration 0",
        ),
        (
            "segment duration 3600",
            json!({"source": src, "segment_duration": 3600}).to_string(),
            422,
            "invalid_settings",
            "segment duration 3600",
        ),
        (
            "negative segment duration",
            json!({"source": src, "segment_duration": -2}).to_string(),
            422,
            "invalid_request",
            "",
        ),
        (
            "segment duration beyond u32",
            json!({"source": src, "segment_duration": 1u64 << 40}).to_string(),
            422,
            "invalid_request",
            "",
        ),
        (
            "priority beyond i32",
            json!({"source": src, "priority": 1e20}).to_string(),
            422,
            "invalid_request",
            "",
        ),
        (
            "NUL byte in the source",
            json!({"source": format!("{src}\u{0}.mp4")}).to_string(),
            422,
            "invalid_source",
            "",
        ),
        (
            "invalid UTF-8 escape",
            format!(r#"{{"source":"{src}\udc00"}}"#),
            400,
            "invalid_json",
            "",
        ),
    ];
    for (case, body, status, code, hint) in &cases {
        let got = post_raw(&pod, body.clone()).await;
        assert_error(case, &got, *status, code, hint);
    }

    // A 10 MB body is refused with 413 before it is read: a client that
    // asks first (`Expect: 100-continue`, as curl does) gets the answer
    // without sending it; one that streams it blindly gets 413 or, when the
    // pod closes before the upload ends, a reset connection, never a job.
    let ten_mb = 10 << 20;
    let auth = format!("Bearer {TOKEN}");
    let got = post_expecting_continue(pod.addr(), Some(&auth), ten_mb);
    assert_error("10 MB body", &got, 413, "body_too_large", "larger than");
    let huge = format!(
        r#"{{"source":"{src}","callback_url":"http://x/{}"}}"#,
        "a".repeat(ten_mb)
    );
    let blind = pod
        .request(reqwest::Method::POST, "/v1/jobs")
        .header("content-type", "application/json")
        .body(huge.clone())
        .send()
        .await;
    if let Ok(resp) = blind {
        let got = (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        );
        assert_error(
            "10 MB body sent blindly",
            &got,
            413,
            "body_too_large",
            "larger than",
        );
    }

    // Without the right token: 401, even for a huge body (never read).
    for auth in [
        None,
        Some(format!("Bearer {TOKEN}x")),
        Some(TOKEN.to_string()),
    ] {
        let got = post_expecting_continue(pod.addr(), auth.as_deref(), ten_mb);
        assert_error(
            &format!("huge body with authorization {auth:?}"),
            &got,
            401,
            "unauthorized",
            "bearer token",
        );
        let mut req = pod
            .client()
            .post(pod.url("/v1/jobs"))
            .json(&json!({ "source": src }));
        if let Some(auth) = &auth {
            req = req.header("authorization", auth);
        }
        let resp = req.send().await.expect("POST without the token");
        let got = (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        );
        assert_error(
            &format!("authorization {auth:?}"),
            &got,
            401,
            "unauthorized",
            "bearer token",
        );
    }

    // Ids that are not UUIDs, sent exactly as written (a client library
    // would resolve `%2e%2e` itself).
    let uuid = uuid::Uuid::new_v4();
    let long = "a".repeat(4000);
    for (path, status, code) in [
        (format!("/v1/jobs/{uuid}x"), 400, "invalid_id"),
        (format!("/v1/jobs/{long}"), 400, "invalid_id"),
        ("/v1/jobs/%00".to_string(), 400, "invalid_id"),
        (format!("/v1/jobs/{uuid}%00"), 400, "invalid_id"),
        ("/v1/jobs/..%2f..%2fetc".to_string(), 400, "invalid_id"),
        ("/v1/jobs/%2e%2e/events".to_string(), 400, "invalid_id"),
        (format!("/v1/jobs/{uuid}/events/x"), 404, "not_found"),
    ] {
        let (got_status, _, body) = raw_get(pod.addr(), &path, &[("authorization", &auth)]);
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let case = format!("GET {}", &path[..path.len().min(80)]);
        assert_error(&case, &(got_status, body), status, code, "");
    }
    let resp = pod
        .request(reqwest::Method::DELETE, "/v1/jobs/..%2f..%2fetc")
        .send()
        .await
        .unwrap();
    let got = (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    );
    assert_error(
        "DELETE ..%2f..%2fetc",
        &got,
        400,
        "invalid_id",
        "not a job id",
    );

    // Nothing was created by any refused request.
    let (status, list) = pod.get_json("/v1/jobs").await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 0, "refused requests created jobs: {list}");
    let folders = std::fs::read_dir(pod.storage().join("jobs"))
        .map(|rd| rd.count())
        .unwrap_or(0);
    assert_eq!(folders, 0, "refused requests left job folders");

    assert_still_serving(&pod, &source).await;

    // /hls paths beyond tests/pod_inputs.rs: double encoding, overlong
    // UTF-8, backslashes, `..;`, NUL in the id, absolute and long paths.
    let (_, list) = pod.get_json("/v1/jobs").await;
    let id = list["jobs"][0]["id"].as_str().unwrap().to_string();
    std::fs::write(
        pod.storage().join("secret.m3u8"),
        "#EXTM3U\n# storage secret\n",
    )
    .unwrap();
    let storage = pod.storage().display().to_string();
    for target in [
        format!("/hls/{id}/%252e%252e/%252e%252e/secret.m3u8"),
        format!("/hls/{id}/%c0%ae%c0%ae/%c0%ae%c0%ae/secret.m3u8"),
        format!("/hls/{id}/..%5c..%5csecret.m3u8"),
        format!("/hls/{id}/240p/..;/..;/..;/secret.m3u8"),
        format!("/hls/{id}%00/master.m3u8"),
        format!("/hls/{id}/%00/../../secret.m3u8"),
        format!(
            "/hls/{id}/%2F{}/secret.m3u8",
            storage.trim_start_matches('/')
        ),
        format!("/hls/{id}/{}", "a/".repeat(3000) + "x.ts"),
        format!("/hls/{id}/240p/seg_00000.ts/../../../secret.m3u8"),
    ] {
        let (status, _, body) = raw_get(pod.addr(), &target, &[]);
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("secret"), "GET {target} leaked: {text}");
        assert!(
            status == 404 || status == 400,
            "GET {}: {status} {text}",
            &target[..target.len().min(120)]
        );
    }
    let (status, _, _) = raw_get(pod.addr(), "/healthz", &[]);
    assert_eq!(status, 200);
}

/// A YUV4MPEG2 header claiming `width`x`height`, one frame marker and a few
/// bytes of picture: the header is all ffprobe needs to see the size.
fn y4m_header_only(path: &Path, width: u32, height: u32) {
    let mut bytes =
        format!("YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C420jpeg\nFRAME\n").into_bytes();
    bytes.extend(std::iter::repeat_n(0u8, 4096));
    std::fs::write(path, bytes).unwrap();
}

/// Sets the duration in the `mvhd` and `tkhd` boxes (movie timescale) of an
/// mp4 to `seconds`, leaving the samples alone: a header that lies.
fn patch_mp4_duration(path: &Path, seconds: u32) {
    let mut bytes = std::fs::read(path).unwrap();
    let find = |bytes: &[u8], tag: &[u8]| {
        bytes
            .windows(4)
            .position(|w| w == tag)
            .expect("box in the mp4")
    };
    let mvhd = find(&bytes, b"mvhd");
    assert_eq!(bytes[mvhd + 4], 0, "version 0 mvhd");
    let timescale = u32::from_be_bytes(bytes[mvhd + 16..mvhd + 20].try_into().unwrap());
    let duration = timescale.saturating_mul(seconds).to_be_bytes();
    bytes[mvhd + 20..mvhd + 24].copy_from_slice(&duration);
    let tkhd = find(&bytes, b"tkhd");
    assert_eq!(bytes[tkhd + 4], 0, "version 0 tkhd");
    bytes[tkhd + 24..tkhd + 28].copy_from_slice(&duration);
    std::fs::write(path, bytes).unwrap();
}

fn ffmpeg(args: &[&str]) {
    let output = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y"])
        .args(args)
        .output()
        .expect("run ffmpeg");
    assert!(
        output.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_media_fails_its_job_with_a_clear_error() {
    let dir = TestDir::new("hostile-media");
    let roots = dir.join("sources");
    let outside = dir.join("outside");
    std::fs::create_dir_all(&roots).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let clip = roots.join("ok.mp4");
    gen_clip(&clip, &ClipSpec::new(2.0));
    let clip_text = clip.to_str().unwrap();

    // A video outside the roots that playlists try to pull in.
    let outside_ts = outside.join("secret.ts");
    ffmpeg(&["-i", clip_text, "-c", "copy", outside_ts.to_str().unwrap()]);
    let outside_mp4 = outside.join("secret.mp4");
    std::fs::copy(&clip, &outside_mp4).unwrap();

    let file = |name: &str| roots.join(name);
    std::fs::write(
        file("notes.mp4"),
        "just some text, not a video\n".repeat(40),
    )
    .unwrap();
    std::fs::write(file("empty.mp4"), b"").unwrap();
    let full = std::fs::read(&clip).unwrap();
    std::fs::write(file("cut.mp4"), &full[..full.len() * 3 / 10]).unwrap();
    y4m_header_only(&file("square16k.y4m"), 16384, 16384);
    y4m_header_only(&file("wide16k.y4m"), 16384, 16);
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=s=64x64:r=25:d=1",
        "-vf",
        "setsar=sar=500/1:max=1000",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        file("sar500.mp4").to_str().unwrap(),
    ]);
    let playlist = |target: &str| {
        format!("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{target}\n#EXT-X-ENDLIST\n")
    };
    std::fs::write(
        file("pull.m3u8"),
        playlist(&format!("file://{}", outside_ts.display())),
    )
    .unwrap();
    std::fs::write(file("passwd.m3u8"), playlist("file:///etc/passwd")).unwrap();
    std::fs::write(
        file("plain-path.m3u8"),
        playlist(outside_ts.to_str().unwrap()),
    )
    .unwrap();
    // Named like a video: the container is found from the bytes.
    std::fs::write(file("sneaky.mp4"), playlist("file:///etc/passwd")).unwrap();
    std::fs::write(
        file("list.ffconcat"),
        format!("ffconcat version 1.0\nfile {}\n", outside_mp4.display()),
    )
    .unwrap();
    // Timestamps that jump 100 hours ahead after 2 s of frames.
    ffmpeg(&[
        "-i",
        clip_text,
        "-an",
        "-vf",
        "setpts='if(gte(N,59),PTS+360000/TB,PTS)'",
        "-fps_mode",
        "passthrough",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        file("jump.mkv").to_str().unwrap(),
    ]);
    // A header claiming 100 hours over 2 s of real frames.
    std::fs::copy(&clip, file("liar.mp4")).unwrap();
    patch_mp4_duration(&file("liar.mp4"), 360_000);

    let pod = Pod::start(
        &dir.join("storage"),
        &[("SEGSWARM_SOURCE_ROOTS", roots.to_str().unwrap())],
    )
    .await;

    // name → what the job's error must say.
    let failing: Vec<(&str, Vec<&str>)> = vec![
        ("notes.mp4", vec!["not a readable video", "invalid data"]),
        ("empty.mp4", vec!["not a readable video"]),
        ("cut.mp4", vec!["moov", "truncated"]),
        ("square16k.y4m", vec!["16384x16384"]),
        ("wide16k.y4m", vec!["16384x16 is not supported"]),
        ("sar500.mp4", vec!["pixel aspect 500:1"]),
        ("pull.m3u8", vec!["format hls is not accepted"]),
        ("passwd.m3u8", vec!["format hls is not accepted"]),
        ("plain-path.m3u8", vec!["format hls is not accepted"]),
        ("sneaky.mp4", vec!["format hls is not accepted"]),
        ("list.ffconcat", vec!["format concat is not accepted"]),
        ("jump.mkv", vec!["too long", "360001"]),
    ];
    let mut ids = Vec::new();
    for (name, _) in &failing {
        let job = pod
            .submit(json!({ "source": file(name).to_str().unwrap() }))
            .await;
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    let liar = pod
        .submit(json!({ "source": file("liar.mp4").to_str().unwrap(), "ladder": ["240p"] }))
        .await;
    let liar_id = liar["id"].as_str().unwrap().to_string();

    for ((name, hints), id) in failing.iter().zip(&ids) {
        let job = pod.wait_terminal(id, JOB_LIMIT).await;
        assert_eq!(job["status"], "failed", "{name}: {job}");
        let error = job["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(name),
            "{name}: the error names the source: {error}"
        );
        let lower = error.to_lowercase();
        assert!(
            hints
                .iter()
                .any(|hint| lower.contains(&hint.to_lowercase())),
            "{name}: the error should say one of {hints:?}: {error}"
        );
        assert!(!error.contains("root:"), "{name}: leaked a file: {error}");
        // Nothing was encoded from it.
        let segments = walk_files(&pod.job_dir(id))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "ts"))
            .count();
        assert_eq!(segments, 0, "{name}: failed job has segments");
    }

    // The lying header changes nothing: the plan follows the 2 s of frames.
    let job = pod.wait_terminal(&liar_id, JOB_LIMIT).await;
    assert_eq!(job["status"], "done", "header claiming 100 h: {job}");
    let duration = job["duration"].as_f64().unwrap();
    assert!(
        (1.9..2.1).contains(&duration),
        "duration from the frames: {job}"
    );
    assert_eq!(job["renditions"][0]["total"], 1, "one 2 s segment: {job}");

    // No ffprobe or ffmpeg is left over.
    let leftovers = ffmpeg_processes_mentioning(dir.path().to_str().unwrap());
    assert!(leftovers.is_empty(), "left over: {leftovers:?}");
    assert_still_serving(&pod, &clip).await;
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// Serves one file over HTTP on 127.0.0.1 with Range support (what ffmpeg
/// needs to read an mp4), one thread per connection; returns its URL.
fn serve_file(path: &Path) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/clip.mp4", listener.local_addr().unwrap());
    let bytes = std::sync::Arc::new(std::fs::read(path).unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let bytes = bytes.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut start = 0usize;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(range) = lower.strip_prefix("range: bytes=") {
                        start = range
                            .split('-')
                            .next()
                            .and_then(|s| s.trim().parse().ok())
                            .unwrap_or(0);
                    }
                    line.clear();
                }
                let start = start.min(bytes.len());
                let body = &bytes[start..];
                let head = format!(
                    "HTTP/1.1 {}\r\nContent-Type: video/mp4\r\nAccept-Ranges: bytes\r\n\
                     Content-Range: bytes {start}-{}/{}\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n",
                    if start > 0 {
                        "206 Partial Content"
                    } else {
                        "200 OK"
                    },
                    bytes.len().saturating_sub(1),
                    bytes.len(),
                    body.len()
                );
                let mut stream = stream;
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body);
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_url_sources_need_the_allow_flag() {
    let dir = TestDir::new("private-url");
    let roots = dir.join("sources");
    std::fs::create_dir_all(&roots).unwrap();
    let clip = roots.join("ok.mp4");
    gen_clip(&clip, &ClipSpec::new(2.0));
    let by_ip = serve_file(&clip);
    let port = by_ip.split(':').nth(2).unwrap().split('/').next().unwrap();
    let by_name = format!("http://localhost:{port}/clip.mp4");

    let strict = strict_pod(&dir, &roots).await;
    for url in [&by_ip, &by_name] {
        let got = strict.post_job(&json!({ "source": url })).await;
        assert_error(
            url,
            &got,
            422,
            "invalid_source",
            "SEGSWARM_ALLOW_PRIVATE_URLS",
        );
    }

    // A pod that allows private URLs (the test default) reads it over HTTP.
    let trusting = Pod::start(&dir.join("storage-2"), &[]).await;
    let job = trusting
        .submit(json!({ "source": by_ip, "ladder": ["240p"] }))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let job = trusting.wait_terminal(&id, JOB_LIMIT).await;
    assert_eq!(job["status"], "done", "loopback URL with the flag: {job}");
    assert_eq!(job["source"], by_ip.as_str());
    assert_eq!(job["audio_tracks"], 1, "{job}");
}

#[test]
fn transcode_refuses_private_urls_unless_allowed() {
    let dir = TestDir::new("transcode-private-url");
    let out = dir.join("out");
    let url = "http://127.0.0.1:9/a.mp4";
    let refused = run_transcode(url, &out, &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("loopback") && stderr.contains("SEGSWARM_ALLOW_PRIVATE_URLS"),
        "{stderr}"
    );
    assert!(!out.exists(), "refused before creating {out:?}");
    // Allowed: it gets as far as ffprobe, which finds nothing listening.
    let allowed = run_transcode(url, &out, &["--allow-private-urls", "true"]);
    let stderr = String::from_utf8_lossy(&allowed.stderr);
    assert!(!allowed.status.success());
    assert!(
        !stderr.contains("SEGSWARM_ALLOW_PRIVATE_URLS") && stderr.contains("127.0.0.1"),
        "{stderr}"
    );
}

/// Every fuzz target's entry point over the seeds in `fuzz/seeds/<target>/`
/// (which include the inputs of crashes found and fixed), so CI runs them
/// without a nightly toolchain.
#[test]
fn fuzz_entry_points_survive_their_seeds() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    type Entry = fn(&[u8]);
    let targets: [(&str, Entry); 3] = [
        ("probe_plan", segswarm::fuzzing::probe_and_plan),
        ("media_playlist", segswarm::fuzzing::media_playlist),
        ("submit_request", segswarm::fuzzing::submit_request),
    ];
    for (target, run) in targets {
        let files = walk_files(&seeds.join(target));
        assert!(files.len() >= 3, "seeds for {target} in {seeds:?}");
        for file in files {
            let input = std::fs::read(&file).unwrap();
            run(&input);
            // Cut short and with a flipped byte as well.
            run(&input[..input.len() / 2]);
            let mut flipped = input.clone();
            if let Some(byte) = flipped.get_mut(input.len() / 3) {
                *byte ^= 0x5a;
            }
            run(&flipped);
        }
    }
}
