//! Pods on hosts of their own: a network namespace per pod, joined to the
//! test's host by a veth pair, and cuts of its path to Redis with iptables
//! inside the namespace.
//!
//! [`NetNs`] `i` gets the link `10.231.<i>.0/30`: the host end is
//! `10.231.<i>.1` (where Redis listens for that pod), the namespace end
//! `10.231.<i>.2` (where the pod listens). These addresses exist only on
//! this machine's veth pairs; nothing is routed anywhere else. A cut
//! ([`NetNs::cut`]) drops or rejects only the pod's Redis traffic, so the
//! test keeps reaching the pod's HTTP API while Redis is gone for it.
//! Needs root (CAP_NET_ADMIN) and the `ip` and `iptables` commands:
//! [`NetNs::available`] says why not, for a skip message. The namespace and
//! its veth pair are removed when the [`NetNs`] is dropped, also when the
//! test panics.

use std::net::Ipv4Addr;
use std::process::Command;

/// How a cut path treats the pod's packets to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Silently dropped: connections hang until a timeout (a partition).
    Drop,
    /// Refused with a TCP reset: connections fail at once (a host that is
    /// up but not listening, a firewall that rejects).
    Reject,
}

/// A network namespace with a veth pair to the host.
pub struct NetNs {
    name: String,
    host_if: String,
    index: u8,
}

/// Runs a command; Err with its output when it fails.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetNs {
    /// Whether namespaces can be made here; Err says why not.
    pub fn available() -> Result<(), String> {
        run("iptables", &["--version"])?;
        let probe = format!("ss-probe-{}", std::process::id());
        run("ip", &["netns", "add", &probe])?;
        let listed = run("ip", &["netns", "exec", &probe, "iptables", "-L", "-n"]);
        let _ = run("ip", &["netns", "delete", &probe]);
        listed
    }

    /// Creates namespace `index` (1..=250) with its veth pair, both ends up.
    pub fn create(index: u8) -> NetNs {
        assert!((1..=250).contains(&index), "namespace index {index}");
        let pid = std::process::id();
        let ns = NetNs {
            name: format!("ss-{pid}-{index}"),
            // Interface names are at most 15 bytes.
            host_if: format!("vs{}h{index}", pid % 100_000),
            index,
        };
        let peer = format!("vs{}n{index}", pid % 100_000);
        let host_ip = ns.host_addr().to_string();
        let host_cidr = format!("{host_ip}/30");
        let ns_cidr = format!("{}/30", ns.addr());
        let steps: Vec<(&str, Vec<&str>)> = vec![
            ("ip", vec!["netns", "add", &ns.name]),
            (
                "ip",
                vec![
                    "link",
                    "add",
                    &ns.host_if,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &peer,
                ],
            ),
            ("ip", vec!["link", "set", &peer, "netns", &ns.name]),
            ("ip", vec!["addr", "add", &host_cidr, "dev", &ns.host_if]),
            ("ip", vec!["link", "set", &ns.host_if, "up"]),
            (
                "ip",
                vec!["-n", &ns.name, "addr", "add", &ns_cidr, "dev", &peer],
            ),
            ("ip", vec!["-n", &ns.name, "link", "set", &peer, "up"]),
            ("ip", vec!["-n", &ns.name, "link", "set", "lo", "up"]),
            // Through its link the namespace reaches every address of the
            // host (a webhook receiver on 0.0.0.0, another link's host end);
            // the host does not forward, so nothing beyond.
            (
                "ip",
                vec!["-n", &ns.name, "route", "add", "default", "via", &host_ip],
            ),
        ];
        for (program, args) in steps {
            if let Err(err) = run(program, &args) {
                drop(ns);
                panic!("creating a network namespace: {err}");
            }
        }
        ns
    }

    /// The namespace's name, for `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's end of the link (where its pod listens).
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.index, 2)
    }

    /// The host's end of the link (where Redis listens for this pod).
    pub fn host_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.index, 1)
    }

    /// Cuts the pod's TCP traffic with the host's `port` (Redis), both
    /// ways, until [`NetNs::heal`].
    pub fn cut(&self, port: u16, how: Cut) {
        self.heal();
        let port = port.to_string();
        let host = self.host_addr().to_string();
        let target: &[&str] = match how {
            Cut::Drop => &["-j", "DROP"],
            Cut::Reject => &["-j", "REJECT", "--reject-with", "tcp-reset"],
        };
        let out: Vec<&str> = [
            "netns", "exec", &self.name, "iptables", "-A", "OUTPUT", "-p", "tcp", "-d", &host,
            "--dport", &port,
        ]
        .into_iter()
        .chain(target.iter().copied())
        .collect();
        run("ip", &out).unwrap_or_else(|e| panic!("cutting {}: {e}", self.name));
        // Replies already on their way in are dropped too (a reset from our
        // side would tell the server; a partition tells nobody).
        let inbound = [
            "netns", "exec", &self.name, "iptables", "-A", "INPUT", "-p", "tcp", "-s", &host,
            "--sport", &port, "-j", "DROP",
        ];
        run("ip", &inbound).unwrap_or_else(|e| panic!("cutting {}: {e}", self.name));
    }

    /// Removes every cut.
    pub fn heal(&self) {
        for chain in ["OUTPUT", "INPUT"] {
            run(
                "ip",
                &["netns", "exec", &self.name, "iptables", "-F", chain],
            )
            .unwrap_or_else(|e| panic!("healing {}: {e}", self.name));
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the veth pair, and with
        // it the host's end.
        let _ = run("ip", &["netns", "delete", &self.name]);
        let _ = run("ip", &["link", "delete", &self.host_if]);
    }
}
