//! Every hop of a source fetch is checked (issue 16, point 6). A pod reads
//! URL sources through its own loopback proxy (src/fetch), which resolves
//! each host once, checks every address under the egress policy, connects
//! only to what it checked and follows redirects itself; ffprobe and ffmpeg
//! only ever talk to that proxy.
//!
//! Each test builds its own network, in namespaces (root only; skipped
//! elsewhere with a message, but required when `CI=true`):
//!
//! ```text
//!  test process ── veth ── pod namespace ─────────── veth ── origin namespace
//!  198.18.161.B+1          198.18.161.B+2 (API)      198.18.161.B+5 / B+6: Origin
//!                          segswarm serve, its proxy, ffmpeg;
//!                          tripwires on its loopback: 127.0.0.1,
//!                          10.213.0.9, 169.254.169.254
//! ```
//!
//! The pod refuses private URLs (the default) and is told that the origin's
//! link, 198.18.161.B+4/30, counts as public (`--egress-test-network`,
//! which only accepts networks inside 198.18.0.0/15); every other address
//! of that range, the pod's own API address included, stays refused. The
//! pod has its own `/etc/hosts` (bind-mounted in its mount namespace):
//! `media.internal.test` is 10.213.0.9 and `media.public.test` is the
//! origin, so names go through the resolver the pod uses for every host
//! (getaddrinfo, the files source).
//!
//! What this proves: redirects to loopback (by address and by name), to a
//! private address, to the metadata address, at the end of several hops,
//! to a name that resolves to a private address, a redirect loop and a
//! redirect to `file:` all fail their job with an error naming the refused
//! hop, and no tripwire (a listener on each target) ever gets a connection;
//! a source behind redirects between allowed hosts is transcoded, read
//! with Range requests through the proxy. What it does not: a DNS answer
//! that changes between two lookups (rebinding) is handled by construction
//! (one lookup per hop, the connection pinned to its answer: unit tests in
//! src/fetch/redirect.rs), not by a changing resolver here; and https
//! origins take the same code (reqwest with rustls) but need a CA the pod
//! trusts, which a test cannot add.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use common::netns::{self, veth, Netns, Veth};
use common::origin::{Answer, Origin, Tripwire};
use common::pod::PodNetns;
use common::{gen_clip, validate_hls, ClipSpec, Pod, TestDir};

const JOB_LIMIT: Duration = Duration::from_secs(120);
/// The tripwires' ports in the pod's namespace.
const LOOPBACK_PORT: u16 = 8001;
const PRIVATE_PORT: u16 = 8002;
const NAMED_PORT: u16 = 8003;
const PRIVATE_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 9);
const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// The namespaces, links and names of one test. `base` is the first
/// address of its 8 in 198.18.161.0/24, so two tests can run at once.
struct Network {
    // Dropped after the pod (declared later in each test): the links, then
    // the namespaces.
    _links: [Veth; 2],
    pod_ns: Netns,
    origin_ns: Netns,
    base: u8,
    hosts: PathBuf,
}

impl Network {
    fn new(tag: &str, base: u8, dir: &TestDir) -> Result<Network, String> {
        let pod_ns = Netns::new(&format!("ssw-{tag}-pod"))?;
        let origin_ns = Netns::new(&format!("ssw-{tag}-origin"))?;
        let address = |offset: u8| format!("198.18.161.{}/30", base + offset);
        let to_pod = veth(
            None,
            &format!("ssw{tag}h"),
            &address(1),
            &pod_ns,
            &format!("ssw{tag}p"),
            &address(2),
        )?;
        let to_origin = veth(
            Some(&pod_ns),
            &format!("ssw{tag}q"),
            &address(5),
            &origin_ns,
            &format!("ssw{tag}o"),
            &address(6),
        )?;
        pod_ns.add_local_address(&format!("{PRIVATE_IP}/32"))?;
        pod_ns.add_local_address(&format!("{METADATA_IP}/32"))?;
        let network = Network {
            _links: [to_pod, to_origin],
            pod_ns,
            origin_ns,
            base,
            hosts: dir.join("pod-hosts"),
        };
        std::fs::write(
            &network.hosts,
            format!(
                "127.0.0.1 localhost\n{PRIVATE_IP} media.internal.test\n{} media.public.test\n",
                network.origin_ip()
            ),
        )
        .map_err(|e| format!("writing {}: {e}", network.hosts.display()))?;
        Ok(network)
    }

    fn ip(&self, offset: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 161, self.base + offset)
    }

    fn origin_ip(&self) -> Ipv4Addr {
        self.ip(6)
    }

    fn pod_ip(&self) -> Ipv4Addr {
        self.ip(2)
    }

    /// The origin's link: the one network the pod treats as public.
    fn test_network(&self) -> String {
        format!("{}/30", self.ip(4))
    }

    /// A listener on `ip:port` in the pod's namespace.
    fn tripwire(&self, ip: Ipv4Addr, port: u16) -> Tripwire {
        Tripwire::watch(self.pod_ns.bind(SocketAddr::new(IpAddr::V4(ip), port)))
    }

    fn origin(&self, routes: Vec<(&str, Answer)>) -> Origin {
        let addr = SocketAddr::new(IpAddr::V4(self.origin_ip()), 80);
        Origin::serve(self.origin_ns.bind(addr), routes)
    }

    /// A pod in the pod namespace with the production address policy, the
    /// origin's link as its test network and fetch logs at debug.
    async fn pod(&self, dir: &TestDir) -> Pod {
        Pod::builder(&dir.join("storage"))
            .in_netns(PodNetns {
                name: self.pod_ns.name().to_string(),
                listen: IpAddr::V4(self.pod_ip()),
                hosts: Some(self.hosts.clone()),
            })
            .env("SEGSWARM_ALLOW_PRIVATE_URLS", "false")
            .env("SEGSWARM_LOG", "info,segswarm::fetch=debug")
            .arg("--egress-test-network")
            .arg(self.test_network())
            .start()
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_to_internal_hosts_are_refused_and_never_contacted() {
    let dir = TestDir::new("fetch-refused");
    let test = "redirects_to_internal_hosts_are_refused_and_never_contacted";
    let Some(net) = netns::or_skip(Network::new("fr", 0, &dir), test) else {
        return;
    };
    let loopback = net.tripwire(Ipv4Addr::LOCALHOST, LOOPBACK_PORT);
    let private = net.tripwire(PRIVATE_IP, PRIVATE_PORT);
    let metadata = net.tripwire(METADATA_IP, 80);
    let named = net.tripwire(PRIVATE_IP, NAMED_PORT);
    let origin = net.origin(vec![
        (
            "/to-loopback",
            Answer::redirect(302, format!("http://127.0.0.1:{LOOPBACK_PORT}/v.mp4")),
        ),
        (
            "/to-localhost",
            Answer::redirect(302, format!("http://localhost:{LOOPBACK_PORT}/v.mp4")),
        ),
        (
            "/to-private",
            Answer::redirect(302, format!("http://{PRIVATE_IP}:{PRIVATE_PORT}/v.mp4")),
        ),
        (
            "/to-metadata",
            Answer::redirect(302, format!("http://{METADATA_IP}/latest/meta-data/")),
        ),
        ("/hops-3", Answer::redirect(302, "/hops-2")),
        (
            "/hops-2",
            Answer::redirect(307, "http://media.public.test/hops-1"),
        ),
        (
            "/hops-1",
            Answer::redirect(301, format!("http://{PRIVATE_IP}:{PRIVATE_PORT}/deep.mp4")),
        ),
        (
            "/to-name",
            Answer::redirect(
                302,
                format!("http://media.internal.test:{NAMED_PORT}/v.mp4"),
            ),
        ),
        ("/loop", Answer::redirect(302, "/loop")),
        ("/to-file", Answer::redirect(302, "file:///etc/passwd")),
    ]);
    let pod = net.pod(&dir).await;

    // (path, what the job's error must say after "source <url>: ").
    let cases: [(&str, &[&str]); 8] = [
        (
            "/to-loopback",
            &[
                "redirect to http://127.0.0.1:8001/v.mp4 refused",
                "is a loopback address 127.0.0.1",
            ],
        ),
        (
            "/to-localhost",
            &[
                "redirect to http://localhost:8001/v.mp4 refused",
                "host localhost is a loopback address 127.0.0.1",
            ],
        ),
        (
            "/to-private",
            &[
                "redirect to http://10.213.0.9:8002/v.mp4 refused",
                "is a private (RFC 1918) address 10.213.0.9",
            ],
        ),
        (
            "/to-metadata",
            &[
                "redirect to http://169.254.169.254/latest/meta-data/ refused",
                "is a link-local address 169.254.169.254",
            ],
        ),
        (
            "/hops-3",
            &[
                "redirect to http://10.213.0.9:8002/deep.mp4 refused",
                "private (RFC 1918)",
            ],
        ),
        (
            "/to-name",
            &[
                "redirect to http://media.internal.test:8003/v.mp4 refused",
                "host media.internal.test is a private (RFC 1918) address 10.213.0.9",
            ],
        ),
        ("/loop", &["more than 5 redirects"]),
        (
            "/to-file",
            &[
                "redirect to file:///etc/passwd refused",
                "scheme file is not http or https",
            ],
        ),
    ];
    let submitted = Instant::now();
    let mut jobs = Vec::new();
    for (path, _) in &cases {
        let url = format!("http://{}{path}", net.origin_ip());
        // The first hop is on the test network: accepted at submission.
        let job = pod
            .submit(json!({ "source": url, "ladder": ["240p"] }))
            .await;
        jobs.push((url, job["id"].as_str().unwrap().to_string()));
    }
    for ((url, id), (_, says)) in jobs.iter().zip(&cases) {
        let job = pod.wait_terminal(id, JOB_LIMIT).await;
        assert_eq!(job["status"], "failed", "{url}: {job}");
        let error = job["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with(&format!("source {url}: ")),
            "{url}: the error names the source: {error}"
        );
        for fragment in *says {
            assert!(error.contains(fragment), "{url}: {fragment:?} in {error:?}");
        }
        eprintln!("FIGURE: fetch refused: {error}");
    }
    eprintln!(
        "FIGURE: fetch refusals: {} jobs submitted at once, all failed within {:.2} s",
        cases.len(),
        submitted.elapsed().as_secs_f64()
    );

    // Submitted directly, the same hosts are refused at once (422), the
    // pod's own address in 198.18.0.0/15 too: the test network opens only
    // the origin's link.
    for (url, says) in [
        (
            format!("http://media.internal.test:{NAMED_PORT}/v.mp4"),
            "private (RFC 1918)",
        ),
        (
            format!("http://{}:{}/v1/jobs", net.pod_ip(), pod.addr().port()),
            "benchmarking (198.18.0.0/15)",
        ),
    ] {
        let (status, body) = pod.post_job(&json!({ "source": url })).await;
        assert_eq!(status, 422, "{url}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{url}: {says:?} in {message:?}");
    }

    for (name, tripwire) in [
        ("loopback", &loopback),
        ("private", &private),
        ("metadata", &metadata),
        ("media.internal.test", &named),
    ] {
        assert_eq!(
            tripwire.connections(),
            0,
            "the {name} target {} was contacted",
            tripwire.addr()
        );
    }
    // The chain was followed to its refused end, one checked hop at a time.
    let asked: Vec<String> = origin.requests().into_iter().map(|r| r.path).collect();
    for path in ["/hops-3", "/hops-2", "/hops-1"] {
        assert!(asked.iter().any(|p| p == path), "{path} in {asked:?}");
    }
    let log = pod.log_text();
    assert!(
        log.contains("redirect to http://127.0.0.1:8001/v.mp4 refused"),
        "the proxy logs its refusals:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_behind_allowed_redirects_streams_with_range_requests() {
    let dir = TestDir::new("fetch-allowed");
    let test = "a_source_behind_allowed_redirects_streams_with_range_requests";
    let Some(net) = netns::or_skip(Network::new("fa", 8, &dir), test) else {
        return;
    };
    let clip = dir.join("clip.mp4");
    gen_clip(&clip, &ClipSpec::new(4.0));
    let bytes = Arc::new(std::fs::read(&clip).unwrap());
    let origin = net.origin(vec![
        (
            "/watch",
            Answer::redirect(302, "http://media.public.test/next"),
        ),
        ("/next", Answer::redirect(303, "/clip.mp4")),
        ("/clip.mp4", Answer::File(bytes.clone())),
    ]);
    let pod = net.pod(&dir).await;

    let url = format!("http://{}/watch", net.origin_ip());
    let submitted = Instant::now();
    let job = pod
        .submit(json!({ "source": url, "ladder": ["240p"] }))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let job = pod.wait_terminal(&id, JOB_LIMIT).await;
    let took = submitted.elapsed().as_secs_f64();
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(
        job["source"],
        url.as_str(),
        "the job keeps the URL it was given"
    );
    validate_hls(&pod.job_dir(&id), &clip);

    let requests = origin.requests();
    let file_requests: Vec<_> = requests.iter().filter(|r| r.path == "/clip.mp4").collect();
    let seeks: Vec<_> = file_requests
        .iter()
        .filter(|r| r.status == 206 && r.range_start().is_some_and(|start| start > 0))
        .collect();
    assert!(
        !seeks.is_empty(),
        "ffmpeg seeks in the mp4 with Range requests, answered 206: {requests:?}"
    );
    assert!(
        file_requests
            .iter()
            .all(|r| r.range.is_some() && r.status == 206),
        "every read is a Range request passed on: {requests:?}"
    );
    // Every fetch came through both redirects, each hop checked.
    let hops = requests.iter().filter(|r| r.path == "/watch").count();
    assert_eq!(hops, file_requests.len(), "{requests:?}");

    let log = pod.log_text();
    let fetch_lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("source fetch"))
        .collect();
    assert!(
        fetch_lines.iter().any(|line| {
            line.contains("url=http://media.public.test/clip.mp4")
                && line.contains("hops=2")
                && line.contains("status=206")
                && line.contains("content_range=bytes ")
        }),
        "the proxy logs its Range fetches:\n{log}"
    );
    eprintln!(
        "FIGURE: fetch: done in {took:.2} s; {} requests for /clip.mp4 ({} seeks past byte 0, \
         each after 2 redirects) for a {}-byte source",
        file_requests.len(),
        seeks.len(),
        bytes.len()
    );
}
