//! Network namespaces of a test's own: hosts that are not this machine,
//! made without changing its network (only the host end of a veth pair
//! appears on it, and goes with the namespace).
//!
//! - [`Netns`]: one namespace (`ip netns add`, loopback up), deleted on
//!   drop, which also deletes the veth pairs with an end in it.
//! - [`veth`]: a veth pair between a namespace and the host or another
//!   namespace, with an address on each end; deleted when its [`Veth`] is
//!   dropped (deleting a namespace does not always take a host end with
//!   it at once: seen in this project's gVisor VM).
//! - [`Netns::bind`]: a listening socket inside a namespace, bound by a
//!   thread of this process that enters it (setns(2)); the socket stays in
//!   the namespace whichever thread accepts on it, so a test serves a
//!   namespace's hosts from its own threads.
//!
//! All of it needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and `ip` from
//! iproute2. The constructors return why they could not; [`or_skip`] turns
//! that into a skip with the reason, or a failure when `CI=true` (CI runs
//! as root, so there these tests must run).

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::process::Command;

/// Runs `ip <args>`; Err with its output when it fails.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `Some(made)`, or `None` after printing why the test skips; on CI
/// (`CI=true`) a panic instead, since CI must run it.
pub fn or_skip<T>(made: Result<T, String>, test: &str) -> Option<T> {
    match made {
        Ok(made) => Some(made),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: CI=true but network namespaces are not available: {why}")
        }
        Err(why) => {
            eprintln!("SKIP {test}: network namespaces are not available here ({why})");
            None
        }
    }
}

/// A network namespace; deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` (deleting a leftover of that name from a
    /// killed run first) with its loopback up.
    pub fn new(name: &str) -> Result<Netns, String> {
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name])?;
        let netns = Netns {
            name: name.to_string(),
        };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Adds `cidr` (e.g. `10.213.0.9/32`) to this namespace's loopback: an
    /// address of a host only this namespace reaches.
    pub fn add_local_address(&self, cidr: &str) -> Result<(), String> {
        self.ip(&["addr", "add", cidr, "dev", "lo"])
    }

    /// A listener bound to `addr` inside this namespace.
    pub fn bind(&self, addr: SocketAddr) -> TcpListener {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
            // SAFETY: setns(2) on a namespace file we hold open; it changes
            // the namespace of this thread only, which ends right after.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
            }
            TcpListener::bind(addr).map_err(|e| format!("bind {addr} in {path}: {e}"))
        })
        .join()
        .expect("the bind thread panicked")
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(err) = ip(&["netns", "del", &self.name]) {
            eprintln!("{err}");
        }
    }
}

/// A veth pair; deleted (both ends) on drop.
pub struct Veth {
    /// `ip` arguments that name the first end's namespace (none: the host).
    namespace: Vec<String>,
    name: String,
}

impl Drop for Veth {
    fn drop(&mut self) {
        let mut args: Vec<&str> = self.namespace.iter().map(String::as_str).collect();
        args.extend(["link", "del", self.name.as_str()]);
        // Already gone with its namespace is fine.
        let _ = ip(&args);
    }
}

/// A veth pair: `a_name` with `a_cidr` in `a` (`None`: on the host),
/// `b_name` with `b_cidr` in `b`, both up. Names are at most 15 bytes.
pub fn veth(
    a: Option<&Netns>,
    a_name: &str,
    a_cidr: &str,
    b: &Netns,
    b_name: &str,
    b_cidr: &str,
) -> Result<Veth, String> {
    // A host end left by a killed run whose namespace survived is gone with
    // that namespace; one left without it is removed here.
    let _ = ip(&["link", "del", a_name]);
    ip(&[
        "link", "add", a_name, "type", "veth", "peer", "name", b_name,
    ])?;
    let mut pair = Veth {
        namespace: Vec::new(),
        name: a_name.to_string(),
    };
    ip(&["link", "set", b_name, "netns", b.name()])?;
    b.ip(&["addr", "add", b_cidr, "dev", b_name])?;
    b.ip(&["link", "set", b_name, "up"])?;
    match a {
        Some(a) => {
            ip(&["link", "set", a_name, "netns", a.name()])?;
            pair.namespace = vec!["-n".to_string(), a.name().to_string()];
            a.ip(&["addr", "add", a_cidr, "dev", a_name])?;
            a.ip(&["link", "set", a_name, "up"])?;
        }
        None => {
            ip(&["addr", "add", a_cidr, "dev", a_name])?;
            ip(&["link", "set", a_name, "up"])?;
        }
    }
    Ok(pair)
}

/// How a cut path treats a pod's packets to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Silently dropped: connections hang until a timeout (a partition).
    Drop,
    /// Refused with a TCP reset: connections fail at once (a host that is
    /// up but not listening, a firewall that rejects).
    Reject,
}

/// A pod's host of its own: namespace `index` linked to the machine by a
/// veth pair on `10.231.<index>.0/30` (the machine's end `.1`, where Redis
/// listens for this pod; the namespace's end `.2`, where the pod listens),
/// with a default route through the link (the machine answers on every
/// address it owns; it does not forward, so nothing goes further). Its path
/// to Redis can be cut with iptables inside the namespace ([`PodHost::cut`])
/// while the test still reaches the pod's API.
pub struct PodHost {
    // The link goes before the namespace.
    link: Option<Veth>,
    netns: Netns,
    index: u8,
}

impl PodHost {
    /// Creates host `index` (1..=250); Err says why it cannot be made here
    /// (no root, no `ip`, no `iptables`).
    pub fn new(index: u8) -> Result<PodHost, String> {
        assert!((1..=250).contains(&index), "pod host index {index}");
        let out = Command::new("iptables")
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run iptables: {e}"))?;
        if !out.status.success() {
            return Err(format!("iptables --version failed ({})", out.status));
        }
        let tag = std::process::id() % 100_000;
        let netns = Netns::new(&format!("ss-pod-{tag}-{index}"))?;
        let mut host = PodHost {
            link: None,
            netns,
            index,
        };
        let host_ip = host.host_addr().to_string();
        let peer = format!("vp{tag}n{index}");
        host.link = Some(veth(
            None,
            &format!("vp{tag}h{index}"),
            &format!("{host_ip}/30"),
            &host.netns,
            &peer,
            &format!("{}/30", host.addr()),
        )?);
        // `onlink`: the link's carrier may not be up yet, and without it the
        // kernel refuses a gateway it cannot see on the link.
        host.netns.ip(&[
            "route", "add", "default", "via", &host_ip, "dev", &peer, "onlink",
        ])?;
        host.iptables(&["-L", "-n"])?;
        Ok(host)
    }

    /// Where the pod runs, for [`super::pod::PodBuilder::in_netns`].
    pub fn placement(&self) -> super::pod::PodNetns {
        super::pod::PodNetns {
            name: self.netns.name().to_string(),
            listen: std::net::IpAddr::V4(self.addr()),
            hosts: None,
        }
    }

    /// The namespace's end of the link (where its pod listens).
    pub fn addr(&self) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(10, 231, self.index, 2)
    }

    /// The machine's end of the link (where Redis listens for this pod).
    pub fn host_addr(&self) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(10, 231, self.index, 1)
    }

    fn iptables(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", self.netns.name(), "iptables"];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Cuts the pod's TCP traffic with the machine's `port` (Redis), both
    /// ways, until [`PodHost::heal`].
    pub fn cut(&self, port: u16, how: Cut) {
        self.heal();
        let port = port.to_string();
        let host = self.host_addr().to_string();
        let mut out = vec![
            "-A", "OUTPUT", "-p", "tcp", "-d", &host, "--dport", &port, "-j",
        ];
        match how {
            Cut::Drop => out.push("DROP"),
            Cut::Reject => out.extend(["REJECT", "--reject-with", "tcp-reset"]),
        }
        // Replies already on their way in are dropped too: a partition
        // tells nobody.
        let inbound = [
            "-A", "INPUT", "-p", "tcp", "-s", &host, "--sport", &port, "-j", "DROP",
        ];
        for rule in [&out[..], &inbound[..]] {
            self.iptables(rule)
                .unwrap_or_else(|e| panic!("cutting {}: {e}", self.netns.name()));
        }
    }

    /// Removes every cut.
    pub fn heal(&self) {
        for chain in ["OUTPUT", "INPUT"] {
            self.iptables(&["-F", chain])
                .unwrap_or_else(|e| panic!("healing {}: {e}", self.netns.name()));
        }
    }
}
