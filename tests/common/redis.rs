//! A real `redis-server` on a free loopback port, for tests of the Redis
//! coordinator and of pods in distributed mode.
//!
//! [`RedisServer`] owns the child process: it persists nothing on its own
//! (`--save "" --appendonly no`), can be stopped and started again on the same
//! port (restart tests), empty after [`RedisServer::stop`] or with its data
//! after [`RedisServer::stop_keeping_data`], and is killed when dropped. [`RedisServer::start_tls`]
//! runs one that speaks only TLS and wants a password, with a throwaway CA
//! made by `openssl`. [`info`] reads a Redis's own accounting (the benches'
//! script time and CPU).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process on `127.0.0.1:<port>`.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    tls: Option<Tls>,
    /// Where a [`RedisServer::stop_keeping_data`] snapshot goes.
    data_dir: PathBuf,
    /// Addresses it also listens on besides 127.0.0.1 (the host ends of
    /// test network namespaces).
    extra_binds: Vec<std::net::Ipv4Addr>,
}

/// A TLS-only server's files and password.
struct Tls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    password: String,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers
    /// PING.
    pub fn start() -> RedisServer {
        RedisServer::start_also_on(&[])
    }

    /// Starts a server that also listens on `addrs` (which must exist, e.g.
    /// the host ends of [`super::netns::NetNs`] links), for pods in other
    /// network namespaces: [`RedisServer::url_via`].
    pub fn start_also_on(addrs: &[std::net::Ipv4Addr]) -> RedisServer {
        let port = free_port();
        let mut server = RedisServer {
            port,
            child: None,
            tls: None,
            data_dir: data_dir(port),
            extra_binds: addrs.to_vec(),
        };
        server.start_again();
        server
    }

    /// `redis://<addr>:<port>/`: the URL for a pod that reaches the server
    /// at `addr` (one of [`RedisServer::start_also_on`]'s addresses).
    pub fn url_via(&self, addr: std::net::Ipv4Addr) -> String {
        format!("redis://{addr}:{}/", self.port)
    }

    /// Starts a TLS-only server that requires `password`, with a CA and a
    /// certificate for 127.0.0.1 generated in `dir`. [`RedisServer::url`] is
    /// then `rediss://:<password>@127.0.0.1:<port>/`; clients must trust
    /// [`RedisServer::ca_file`]. [`RedisServer::command`] and friends speak
    /// plain TCP and do not work with it.
    pub fn start_tls(dir: &Path, password: &str) -> RedisServer {
        let tls = Tls {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            password: password.to_string(),
        };
        let ca_key = dir.join("ca.key");
        let csr = dir.join("server.csr");
        let ext = dir.join("server.ext");
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
            .unwrap_or_else(|e| panic!("write {}: {e}", ext.display()));
        let openssl = |args: &[&std::ffi::OsStr]| {
            let output = Command::new("openssl")
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("spawn openssl: {e}"));
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let os = |text: &'static str| std::ffi::OsStr::new(text);
        openssl(&[
            os("req"),
            os("-x509"),
            os("-newkey"),
            os("rsa:2048"),
            os("-nodes"),
            os("-keyout"),
            ca_key.as_os_str(),
            os("-out"),
            tls.ca.as_os_str(),
            os("-days"),
            os("2"),
            os("-subj"),
            os("/CN=segswarm-test-ca"),
        ]);
        openssl(&[
            os("req"),
            os("-newkey"),
            os("rsa:2048"),
            os("-nodes"),
            os("-keyout"),
            tls.key.as_os_str(),
            os("-out"),
            csr.as_os_str(),
            os("-subj"),
            os("/CN=127.0.0.1"),
        ]);
        openssl(&[
            os("x509"),
            os("-req"),
            os("-in"),
            csr.as_os_str(),
            os("-CA"),
            tls.ca.as_os_str(),
            os("-CAkey"),
            ca_key.as_os_str(),
            os("-CAcreateserial"),
            os("-out"),
            tls.cert.as_os_str(),
            os("-days"),
            os("2"),
            os("-extfile"),
            ext.as_os_str(),
        ]);
        let port = free_port();
        let mut server = RedisServer {
            port,
            child: None,
            tls: Some(tls),
            data_dir: data_dir(port),
            extra_binds: Vec::new(),
        };
        server.start_again();
        server
    }

    /// The CA a client must trust to talk to a TLS server.
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|tls| tls.ca.as_path())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        match &self.tls {
            Some(tls) => format!("rediss://:{}@127.0.0.1:{}/", tls.password, self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// Kills the server (like a crash: no shutdown save) and waits for it to
    /// exit; it starts again empty. Does nothing when it is not running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.data_dir.join("dump.rdb"));
    }

    /// Stops the server with `SHUTDOWN SAVE`, like an operator restarting a
    /// Redis that persists: [`RedisServer::start_again`] then loads every
    /// key back (claims keep their remaining TTL). Plain TCP servers only.
    pub fn stop_keeping_data(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The server closes the connection instead of replying.
        let _ = redis::cmd("SHUTDOWN")
            .arg("SAVE")
            .query::<()>(&mut self.connection());
        let status = child.wait().expect("wait for redis-server");
        assert!(
            self.data_dir.join("dump.rdb").is_file(),
            "redis-server exited ({status}) without saving into {}",
            self.data_dir.display()
        );
    }

    /// Starts the server again on the same port (empty: nothing is saved) and
    /// waits until it answers PING.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut command = Command::new("redis-server");
            match &self.tls {
                Some(tls) => command
                    .args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(&tls.cert)
                    .arg("--tls-key-file")
                    .arg(&tls.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.ca)
                    .args(["--tls-auth-clients", "no"])
                    .args(["--requirepass", &tls.password]),
                None => command.args(["--port", &self.port.to_string()]),
            };
            command.arg("--bind").arg("127.0.0.1");
            for addr in &self.extra_binds {
                command.arg(addr.to_string());
            }
            if !self.extra_binds.is_empty() {
                // Other namespaces are other hosts to Redis: without a
                // password it only answers loopback unless told otherwise.
                command.args(["--protected-mode", "no"]);
            }
            let mut child = command
                .arg("--dir")
                .arg(&self.data_dir)
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn redis-server: {e}"));
            // The port may still be held for a moment after a stop; a server
            // that exits at once is retried.
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if self.ping() {
                    self.child = Some(child);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the server answers PING right now (for a TLS server: whether
    /// it accepts connections).
    pub fn ping(&self) -> bool {
        if self.tls.is_some() {
            return TcpStream::connect(("127.0.0.1", self.port)).is_ok();
        }
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        client
            .get_connection_with_timeout(Duration::from_secs(1))
            .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn))
            .is_ok_and(|pong| pong == "PONG")
    }

    /// A plain synchronous connection for checks in tests.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(2)))
            .unwrap_or_else(|e| panic!("connecting to redis-server on {}: {e}", self.port))
    }

    /// Runs one command and returns its reply.
    pub fn command<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut self.connection())
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    pub fn flushall(&self) {
        let _: String = self.command(&["FLUSHALL"]);
    }

    /// Every key matching `pattern` (SCAN, not KEYS, as an operator would).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut conn = self.connection();
        let mut keys: Vec<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter(&mut conn)
            .unwrap_or_else(|e| panic!("SCAN {pattern}: {e}"))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("SCAN {pattern}: {e}"));
        keys.sort();
        keys
    }
}

/// `INFO <section>` of the Redis at `url` (a [`RedisServer`]'s or one the
/// caller was given), as the server prints it: `name:value` lines.
pub fn info(url: &str, section: &str) -> String {
    redis::Client::open(url)
        .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(2)))
        .and_then(|mut conn| redis::cmd("INFO").arg(section).query(&mut conn))
        .unwrap_or_else(|e| panic!("INFO {section} from {url}: {e}"))
}

/// A fresh folder for one server's snapshot (never the working directory).
fn data_dir(port: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "segswarm-test-redis-{port}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("finding a free port: {e}"))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
