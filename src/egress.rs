//! Which network addresses segswarm connects to on a user's behalf: the
//! http(s) URL of a source (and every redirect it takes, fetched by the
//! pod's own proxy, [`crate::fetch`]) and a job's webhook URL.
//!
//! A job submitter must not be able to make a pod fetch from its own
//! loopback, the cloud metadata service (169.254.169.254) or the private
//! network behind it (server-side request forgery). So, unless the operator
//! allows private URLs (`SEGSWARM_ALLOW_PRIVATE_URLS=true`), a URL is
//! accepted only when its host is, or resolves only to, public addresses.
//!
//! [`check_url`] resolves a host once and returns the addresses it checked;
//! whoever connects connects to exactly those (pinned), so a DNS answer
//! that changes after the check is never used. Source fetches and webhooks
//! both do: ffmpeg and ffprobe never connect to a remote host themselves.
//! This module only judges addresses; it never connects.

use crate::config::TestNetwork;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use url::{Host, Url};

/// How long resolving a URL's host may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether URLs may point at non-public addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EgressPolicy {
    /// Only public addresses (the default of a pod).
    #[default]
    PublicOnly,
    /// Public addresses and those of one network inside 198.18.0.0/15
    /// (`--egress-test-network`, for the tests of this check: see
    /// [`TestNetwork`]).
    PublicAndTestNetwork(TestNetwork),
    /// Any address: the pod runs on a trusted network
    /// (`SEGSWARM_ALLOW_PRIVATE_URLS=true`).
    AllowPrivate,
}

impl EgressPolicy {
    /// The policy for the `SEGSWARM_ALLOW_PRIVATE_URLS` setting.
    pub fn from_allow_private(allow_private: bool) -> EgressPolicy {
        EgressPolicy::new(allow_private, None)
    }

    /// The policy for `SEGSWARM_ALLOW_PRIVATE_URLS` and a test network
    /// (which changes nothing when private URLs are allowed anyway).
    pub fn new(allow_private: bool, test_network: Option<TestNetwork>) -> EgressPolicy {
        match (allow_private, test_network) {
            (true, _) => EgressPolicy::AllowPrivate,
            (false, Some(network)) => EgressPolicy::PublicAndTestNetwork(network),
            (false, None) => EgressPolicy::PublicOnly,
        }
    }

    /// Why `ip` is refused under this policy (the kind of address it is),
    /// or `None` when it may be connected to.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        match self {
            EgressPolicy::AllowPrivate => None,
            EgressPolicy::PublicAndTestNetwork(network) if network.contains(ip) => None,
            EgressPolicy::PublicAndTestNetwork(_) | EgressPolicy::PublicOnly => non_public_kind(ip),
        }
    }
}

/// Why a URL is refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EgressError {
    #[error("not a valid http(s) URL ({0})")]
    Invalid(String),
    #[error("host {host} is {kind} address {addr}; such addresses are refused unless SEGSWARM_ALLOW_PRIVATE_URLS=true")]
    NotPublic {
        host: String,
        addr: IpAddr,
        kind: &'static str,
    },
    #[error("cannot resolve host {host}: {reason}")]
    Unresolvable { host: String, reason: String },
}

/// Parses an http or https URL with a host, in the WHATWG form that is
/// then used everywhere (ffmpeg, reqwest): `http://0x7f.1/` becomes
/// `http://127.0.0.1/` and `http://a\@b/` becomes `http://a/@b/`, so the
/// host checked here is the host they connect to.
pub fn parse_http_url(text: &str) -> Result<Url, EgressError> {
    let url = Url::parse(text.trim()).map_err(|err| EgressError::Invalid(err.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(EgressError::Invalid(format!(
            "scheme {} is not http or https",
            url.scheme()
        )));
    }
    if url.host().is_none() {
        return Err(EgressError::Invalid("no host".into()));
    }
    Ok(url)
}

/// Checks `url`'s host under `policy`, resolving a name once. Returns the
/// addresses it checked (empty when the policy allows everything and
/// nothing was resolved); a caller that connects must connect to exactly
/// these.
pub async fn check_url(url: &Url, policy: EgressPolicy) -> Result<Vec<SocketAddr>, EgressError> {
    if policy == EgressPolicy::AllowPrivate {
        return Ok(Vec::new());
    }
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs: Vec<SocketAddr> = match url.host() {
        Some(Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
        Some(Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
        Some(Host::Domain(domain)) => resolve(domain, port).await?,
        None => return Err(EgressError::Invalid("no host".into())),
    };
    // Every address must be public: a name with one public and one private
    // address would let the connection pick the private one.
    for addr in &addrs {
        if let Some(kind) = policy.refusal(addr.ip()) {
            return Err(EgressError::NotPublic {
                host,
                addr: addr.ip(),
                kind,
            });
        }
    }
    Ok(addrs)
}

async fn resolve(domain: &str, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
    let unresolvable = |reason: String| EgressError::Unresolvable {
        host: domain.to_string(),
        reason,
    };
    let lookup = tokio::net::lookup_host((domain, port));
    let addrs: Vec<SocketAddr> = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
        .await
        .map_err(|_| unresolvable(format!("no answer within {RESOLVE_TIMEOUT:?}")))?
        .map_err(|err| unresolvable(err.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(unresolvable("no address".into()));
    }
    Ok(addrs)
}

/// What kind of non-public address `ip` is, or `None` for a public one.
/// IPv4 addresses embedded in IPv6 (mapped `::ffff:a.b.c.d`, compatible
/// `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) are judged as the IPv4 address.
pub fn non_public_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("a loopback")
    } else if ip.is_unspecified() || a == 0 {
        Some("an unspecified (0.0.0.0/8)")
    } else if ip.is_private() {
        Some("a private (RFC 1918)")
    } else if ip.is_link_local() {
        Some("a link-local")
    } else if a == 100 && (b & 0xc0) == 64 {
        Some("a shared (CGNAT 100.64.0.0/10)")
    } else if ip.is_multicast() {
        Some("a multicast")
    } else if ip.is_broadcast() || a >= 240 {
        Some("a reserved (240.0.0.0/4)")
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        Some("an IETF protocol (192.0.0.0/24)")
    } else if a == 198 && (b & 0xfe) == 18 {
        Some("a benchmarking (198.18.0.0/15)")
    } else {
        None
    }
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    if ip.is_loopback() {
        Some("a loopback")
    } else if ip.is_unspecified() {
        Some("an unspecified")
    } else if (segments[0] & 0xfe00) == 0xfc00 {
        Some("a unique local (fc00::/7)")
    } else if (segments[0] & 0xffc0) == 0xfe80 {
        Some("a link-local (fe80::/10)")
    } else if (segments[0] & 0xffc0) == 0xfec0 {
        Some("a site-local (fec0::/10)")
    } else if ip.is_multicast() {
        Some("a multicast")
    } else if let Some(v4) = embedded_v4(ip) {
        non_public_v4(v4)
    } else {
        None
    }
}

/// The IPv4 address inside a mapped, compatible or NAT64 IPv6 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0, 0, _, _] => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(text: &str) -> Option<&'static str> {
        non_public_kind(text.parse().unwrap())
    }

    #[test]
    fn classifies_addresses() {
        for private in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
        ] {
            assert!(kind(private).is_some(), "{private} must not be public");
        }
        for public in [
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(kind(public), None, "{public} is public");
        }
    }

    #[test]
    fn url_forms_are_normalised_before_the_check() {
        let url = parse_http_url("http://0x7f.1:8080/a.mp4").unwrap();
        assert_eq!(url.host_str(), Some("127.0.0.1"));
        // ffmpeg would read the host after the last `@` before the first
        // `/`; the normalised form removes the ambiguity.
        let url = parse_http_url("http://example.com\\@127.0.0.1/x").unwrap();
        assert_eq!(url.host_str(), Some("example.com"));
        assert_eq!(url.as_str(), "http://example.com/@127.0.0.1/x");
        assert!(parse_http_url("ftp://example.com/").is_err());
        assert!(parse_http_url("http://").is_err());
    }

    #[tokio::test]
    async fn refuses_private_hosts_unless_allowed() {
        for text in [
            "http://127.0.0.1/a.mp4",
            "http://[::1]:8080/a.mp4",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.5/a.mp4",
            "https://192.168.1.10/a.mp4",
            "http://[::ffff:7f00:1]/a.mp4",
            "http://2130706433/a.mp4",
            "http://localhost:9/a.mp4",
        ] {
            let url = parse_http_url(text).unwrap();
            assert!(
                matches!(
                    check_url(&url, EgressPolicy::PublicOnly).await,
                    Err(EgressError::NotPublic { .. })
                ),
                "{text}"
            );
            assert!(check_url(&url, EgressPolicy::AllowPrivate).await.is_ok());
        }
        let url = parse_http_url("http://93.184.215.14/a.mp4").unwrap();
        assert!(check_url(&url, EgressPolicy::PublicOnly).await.is_ok());
    }

    #[tokio::test]
    async fn a_test_network_opens_only_itself() {
        let policy = EgressPolicy::new(false, Some("198.18.161.4/30".parse().unwrap()));
        let inside = parse_http_url("http://198.18.161.6/a.mp4").unwrap();
        assert!(check_url(&inside, policy).await.is_ok());
        for text in [
            "http://198.18.161.2/a.mp4",
            "http://127.0.0.1/a.mp4",
            "http://169.254.169.254/",
            "http://10.0.0.5/a.mp4",
        ] {
            let url = parse_http_url(text).unwrap();
            assert!(check_url(&url, policy).await.is_err(), "{text}");
        }
    }
}
