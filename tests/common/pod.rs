//! Pods under test: `segswarm serve` on a free loopback port (or inside a
//! network namespace, [`PodNetns`]), an HTTP client for its API, an SSE
//! reader, Prometheus text parsing, a raw HTTP GET that sends a request
//! target exactly as written, and an `ffmpeg` wrapper for fault injection
//! and counting encodes.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use super::process::bin;

/// How to start a pod. Defaults keep the tests fast: preset ultrafast,
/// ladder 240p,360p, 2-second segments, no Redis, private URLs allowed
/// (unless [`PodBuilder::binary_defaults`]).
pub struct PodBuilder {
    storage: PathBuf,
    envs: Vec<(String, String)>,
    path_prefix: Option<PathBuf>,
    token: Option<String>,
    test_defaults: bool,
    cpus: Option<String>,
    netns: Option<PodNetns>,
    args: Vec<String>,
}

/// A pod that runs inside a network namespace (`ip netns exec`), listening
/// on one of the namespace's addresses, with its own `/etc/hosts` when
/// `hosts` is set: bind-mounted over `/etc/hosts` in the pod's own mount
/// namespace (which `ip netns exec` creates), so the pod's resolver reads it
/// and the machine's file is not touched.
#[derive(Clone, Debug)]
pub struct PodNetns {
    pub name: String,
    pub listen: IpAddr,
    pub hosts: Option<PathBuf>,
}

impl PodBuilder {
    /// Sets an environment variable of the pod (overrides the defaults).
    pub fn env(mut self, key: &str, value: impl AsRef<str>) -> Self {
        self.envs.retain(|(k, _)| k != key);
        self.envs
            .push((key.to_string(), value.as_ref().to_string()));
        if key == "SEGSWARM_API_TOKEN" {
            self.token = Some(value.as_ref().to_string());
        }
        self
    }

    /// Leaves the binary's own defaults in place (preset, ladder, segment
    /// duration, private-URL check, log level) instead of the fast test
    /// defaults: for measuring the pod as it ships (the benches).
    pub fn binary_defaults(mut self) -> Self {
        self.test_defaults = false;
        self
    }

    /// Puts `dir` first in the pod's PATH (for an `ffmpeg` wrapper).
    pub fn path_prefix(mut self, dir: &Path) -> Self {
        self.path_prefix = Some(dir.to_path_buf());
        self
    }

    /// Runs the pod under `taskset -c <cpus>` (e.g. `"0"` or `"0,2"`): it
    /// and the ffmpeg it starts may use only those cores. `taskset` execs
    /// the binary, so [`Pod::pid`] is still the pod's.
    pub fn taskset(mut self, cpus: &str) -> Self {
        self.cpus = Some(cpus.to_string());
        self
    }

    /// Runs the pod inside a network namespace (see [`PodNetns`]); not
    /// together with [`PodBuilder::taskset`].
    pub fn in_netns(mut self, placement: PodNetns) -> Self {
        self.netns = Some(placement);
        self
    }

    /// Adds a flag of `segswarm serve` (for settings without an
    /// environment variable).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Where the pod listens: a free loopback port, or a port of the
    /// namespace's address.
    fn listen_addr(&self) -> SocketAddr {
        let ip = match &self.netns {
            Some(placement) => placement.listen,
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        SocketAddr::new(ip, free_port())
    }

    /// The `segswarm serve` command with this builder's environment,
    /// listening on `addr`, its stdout and stderr going to `log`.
    fn command(&self, addr: SocketAddr, log: &Path) -> Command {
        let log_file = std::fs::File::create(log).expect("create pod log");
        assert!(
            self.netns.is_none() || self.cpus.is_none(),
            "a pod in a network namespace cannot also be pinned with taskset"
        );
        // `ip netns exec`, `sh` and `taskset` all exec the next program, so
        // the child's pid is the pod's.
        let mut cmd = match (&self.netns, &self.cpus) {
            (Some(placement), _) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &placement.name]);
                if let Some(hosts) = &placement.hosts {
                    cmd.args(["sh", "-c", r#"mount --bind "$0" /etc/hosts && exec "$@""#])
                        .arg(hosts);
                }
                cmd.arg(bin());
                cmd
            }
            (None, Some(cpus)) => {
                let mut cmd = Command::new("taskset");
                cmd.arg("-c").arg(cpus).arg(bin());
                cmd
            }
            (None, None) => Command::new(bin()),
        };
        cmd.arg("serve").args(&self.args);
        for (key, _) in std::env::vars() {
            if key.starts_with("SEGSWARM_") || key == "REDIS_URL" {
                cmd.env_remove(key);
            }
        }
        cmd.env("SEGSWARM_LISTEN", addr.to_string())
            .env("SEGSWARM_STORAGE_DIR", &self.storage);
        if self.test_defaults {
            cmd.env("SEGSWARM_PRESET", "ultrafast")
                .env("SEGSWARM_LADDER", "240p,360p")
                .env("SEGSWARM_SEGMENT_DURATION", "2")
                // Webhook receivers and HTTP sources of the tests listen on
                // 127.0.0.1; tests of the address check set it back to false.
                .env("SEGSWARM_ALLOW_PRIVATE_URLS", "true")
                .env("SEGSWARM_LOG", "info");
        }
        for (key, value) in &self.envs {
            cmd.env(key, value);
        }
        if let Some(prefix) = &self.path_prefix {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", prefix.display()));
        }
        cmd.stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log"))
            .stderr(log_file);
        cmd
    }

    /// Where the pod's log goes: next to its storage folder.
    fn log_path(&self, port: u16) -> PathBuf {
        let log_dir = self
            .storage
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir);
        log_dir.join(format!("pod-{port}.log"))
    }

    /// Runs a pod that is expected to refuse to start (without creating its
    /// storage folder): waits up to `limit` for it to exit and returns its
    /// exit status (None if it was still running; it is then killed) and
    /// its output.
    pub fn run_until_exit(self, limit: Duration) -> (Option<ExitStatus>, String) {
        let addr = self.listen_addr();
        let log = self.log_path(addr.port());
        let mut child = self
            .command(addr, &log)
            .spawn()
            .expect("spawn segswarm serve");
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, std::fs::read_to_string(&log).unwrap_or_default())
    }

    /// Starts the pod and waits until `/healthz` answers.
    pub async fn start(self) -> Pod {
        std::fs::create_dir_all(&self.storage).expect("create storage dir");
        let addr = self.listen_addr();
        let log = self.log_path(addr.port());
        let mut cmd = self.command(addr, &log);
        let child = cmd.spawn().expect("spawn segswarm serve");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(180))
            .build()
            .unwrap();
        let mut pod = Pod {
            child,
            addr,
            storage: self.storage,
            log,
            client,
            token: self.token,
            exited: None,
        };
        pod.wait_healthy().await;
        pod
    }
}

/// A running `segswarm serve`; SIGKILLed on drop if still running.
pub struct Pod {
    child: Child,
    addr: SocketAddr,
    storage: PathBuf,
    log: PathBuf,
    client: reqwest::Client,
    token: Option<String>,
    exited: Option<ExitStatus>,
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

impl Pod {
    /// A pod builder storing into `storage`.
    pub fn builder(storage: &Path) -> PodBuilder {
        PodBuilder {
            storage: storage.to_path_buf(),
            envs: Vec::new(),
            path_prefix: None,
            token: None,
            test_defaults: true,
            cpus: None,
            netns: None,
            args: Vec::new(),
        }
    }

    /// Starts a pod with the default settings and `envs`.
    pub async fn start(storage: &Path, envs: &[(&str, &str)]) -> Pod {
        let mut builder = Pod::builder(storage);
        for (k, v) in envs {
            builder = builder.env(k, v);
        }
        builder.start().await
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "pod exited during start with {status}:\n{}",
                    self.log_text()
                );
            }
            if let Ok(resp) = self.client.get(self.url("/healthz")).send().await {
                if resp.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "pod did not answer /healthz within 30 s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://<address>:<port><path>` (127.0.0.1 unless the pod runs in a
    /// network namespace).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn storage(&self) -> &Path {
        &self.storage
    }

    /// `<storage>/jobs/<id>`.
    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.storage.join("jobs").join(id)
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The pod's stdout and stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A request with the bearer token when the pod was given one.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.client.request(method, self.url(path));
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    /// `POST /v1/jobs`; returns the status and the JSON body.
    pub async fn post_job(&self, body: &Value) -> (u16, Value) {
        let resp = self
            .request(reqwest::Method::POST, "/v1/jobs")
            .json(body)
            .send()
            .await
            .expect("POST /v1/jobs");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Submits a job and asserts 201; returns the job JSON.
    pub async fn submit(&self, body: Value) -> Value {
        let (status, job) = self.post_job(&body).await;
        assert_eq!(
            status,
            201,
            "POST /v1/jobs {body} answered {status}: {job}\n{}",
            self.log_text()
        );
        job
    }

    /// `GET <path>` (with the token if any); returns status and JSON body.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let resp = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// `GET /v1/jobs/<id>`, asserting 200.
    pub async fn job(&self, id: &str) -> Value {
        let (status, job) = self.get_json(&format!("/v1/jobs/{id}")).await;
        assert_eq!(status, 200, "GET /v1/jobs/{id}: {job}");
        job
    }

    /// Polls the job until its status is one of `statuses`.
    pub async fn wait_status(&self, id: &str, statuses: &[&str], limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let job = self.job(id).await;
            if statuses.iter().any(|s| job["status"] == *s) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} did not reach {statuses:?} within {limit:?}; last: {job}\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for a terminal status (done, partial, failed, canceled).
    pub async fn wait_terminal(&self, id: &str, limit: Duration) -> Value {
        self.wait_status(id, &["done", "partial", "failed", "canceled"], limit)
            .await
    }

    /// Opens `GET /v1/jobs/<id>/events`.
    pub async fn events(&self, id: &str) -> SseStream {
        let resp = self
            .request(reqwest::Method::GET, &format!("/v1/jobs/{id}/events"))
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .expect("GET events");
        assert_eq!(resp.status().as_u16(), 200, "GET /v1/jobs/{id}/events");
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "events content type {content_type:?}"
        );
        SseStream {
            resp,
            buf: String::new(),
        }
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let resp = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(resp.status().as_u16(), 200, "GET /metrics");
        resp.text().await.expect("metrics text")
    }

    pub fn sigterm(&self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).expect("SIGTERM pod");
    }

    /// SIGKILLs the pod and reaps it.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }

    /// Waits up to `limit` for the pod to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited {
                return Some(status);
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(status);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- pod log {}\n{}", self.log.display(), self.log_text());
        }
    }
}

/// One Server-Sent Event.
#[derive(Clone, Debug)]
pub struct SseEvent {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

/// Reads events off an open SSE response.
pub struct SseStream {
    resp: reqwest::Response,
    buf: String,
}

impl SseStream {
    /// The next event, or None when the server ended the stream.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: "message".into(),
                    data: Value::Null,
                };
                let mut data = String::new();
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = v.trim().parse().ok();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.event = v.trim().to_string();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        any = true;
                    }
                }
                if !any {
                    continue; // keep-alive comment
                }
                event.data = serde_json::from_str(&data)
                    .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {data}"));
                return Some(event);
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => self
                    .buf
                    .push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n")),
                Ok(None) => return None,
                Err(e) => panic!("reading SSE stream: {e}"),
            }
        }
    }

    /// Every remaining event until the stream ends; panics after `limit`.
    pub async fn collect(mut self, limit: Duration) -> Vec<SseEvent> {
        let mut events = Vec::new();
        let result = tokio::time::timeout(limit, async {
            while let Some(event) = self.next().await {
                events.push(event);
            }
        })
        .await;
        assert!(
            result.is_ok(),
            "SSE stream did not end within {limit:?}; got {:?}",
            events.iter().map(|e| e.event.as_str()).collect::<Vec<_>>()
        );
        events
    }
}

/// Value of the sample `name{labels}` in Prometheus text (labels given must
/// all match; others are ignored). None when no sample matches.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let matches = labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
        if matches {
            let v: f64 = value.parse().unwrap_or(0.0);
            total = Some(total.unwrap_or(0.0) + v);
        }
    }
    total
}

/// Whether a metric family `name` appears (a `# TYPE name` line).
pub fn has_metric(text: &str, name: &str) -> bool {
    text.lines()
        .any(|l| l.starts_with(&format!("# TYPE {name} ")))
}

/// An `ffmpeg` wrapper script put first in a pod's PATH. It logs each
/// invocation (`<unix time> <args>`, one line) and fails (`exit 1`) when its
/// arguments contain `fail_pattern` — always, or only the first time.
pub struct FfmpegWrapper {
    pub bin_dir: PathBuf,
    pub log: PathBuf,
}

impl FfmpegWrapper {
    pub fn new(dir: &Path, fail_pattern: Option<&str>, fail_once: bool) -> FfmpegWrapper {
        let bin_dir = dir.join("wrapper-bin");
        std::fs::create_dir_all(&bin_dir).unwrap();
        let log = dir.join("ffmpeg-invocations.log");
        let marker = dir.join("ffmpeg-failed-once");
        let real = which("ffmpeg");
        let fail = match fail_pattern {
            None => String::new(),
            Some(pattern) if fail_once => format!(
                "case \"$*\" in *'{pattern}'*)\n  if mkdir '{}' 2>/dev/null; then echo 'injected failure' >&2; exit 1; fi;;\nesac\n",
                marker.display()
            ),
            Some(pattern) => format!(
                "case \"$*\" in *'{pattern}'*) echo 'injected failure' >&2; exit 1;; esac\n"
            ),
        };
        let script = format!(
            "#!/bin/sh\nprintf '%s %s\\n' \"$(date +%s.%N)\" \"$*\" >> '{}'\n{fail}exec '{}' \"$@\"\n",
            log.display(),
            real.display()
        );
        let path = bin_dir.join("ffmpeg");
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        FfmpegWrapper { bin_dir, log }
    }

    /// Every logged invocation as (unix time, args).
    pub fn invocations(&self) -> Vec<(f64, String)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (t, args) = l.split_once(' ')?;
                Some((t.parse().ok()?, args.to_string()))
            })
            .collect()
    }

    /// Invocations whose arguments contain `needle`.
    pub fn matching(&self, needle: &str) -> Vec<(f64, String)> {
        self.invocations()
            .into_iter()
            .filter(|(_, args)| args.contains(needle))
            .collect()
    }
}

/// The absolute path of a program on PATH.
pub fn which(program: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} not on PATH"))
}

/// A raw `GET <target>` sent exactly as written (no URL normalisation), for
/// path traversal tests. Returns (status, lower-cased header text, body).
pub fn raw_get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no HTTP response to GET {target}: {:?}",
                String::from_utf8_lossy(&response)
            )
        });
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let body = response[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body)
}

/// Polls `condition` every 50 ms until it holds or `limit` passes.
pub async fn wait_for(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `ffmpeg -v error -i <input> -map 0 -f null -` (every stream, so
/// every variant of a master playlist) and returns its stderr
/// (empty when the input decodes cleanly); panics if it cannot run or fails.
pub fn decode_errors(input: &str) -> String {
    let out = Command::new(which("ffmpeg"))
        .args(["-nostdin", "-v", "error", "-i", input])
        .args(["-map", "0", "-f", "null", "-"])
        .output()
        .expect("run ffmpeg");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "ffmpeg could not decode {input}: {stderr}"
    );
    stderr
}
