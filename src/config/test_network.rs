//! The one network a test may make the egress check treat as public
//! (`segswarm serve --egress-test-network`).
//!
//! The end-to-end tests of the source fetch put a redirecting host in a
//! network namespace of their own. Its address must pass the public-only
//! policy, but every address the tests may use is, rightly, not public. So
//! a pod can be told that one network counts as public, and that network
//! must lie inside 198.18.0.0/15, the range RFC 2544 sets aside for
//! benchmarking network devices: this setting can never open loopback,
//! RFC 1918, link-local (the metadata service) or any other range, and it
//! is no bypass of the policy.

use super::ConfigError;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// The benchmarking range a test network must lie in.
const BENCHMARK_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 15);

/// A network inside 198.18.0.0/15 whose addresses count as public.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestNetwork {
    base: Ipv4Addr,
    prefix: u8,
}

impl TestNetwork {
    /// Whether `ip` is in this network (IPv4 only).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => in_network(v4, self.base, self.prefix),
            IpAddr::V6(_) => false,
        }
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn in_network(ip: Ipv4Addr, base: Ipv4Addr, prefix: u8) -> bool {
    u32::from(ip) & mask(prefix) == u32::from(base) & mask(prefix)
}

impl FromStr for TestNetwork {
    type Err = ConfigError;

    /// `a.b.c.d/prefix`, inside 198.18.0.0/15, with no host bits set.
    fn from_str(text: &str) -> Result<TestNetwork, ConfigError> {
        let bad = || ConfigError::TestNetwork(text.to_string());
        let (addr, prefix) = text.trim().split_once('/').ok_or_else(bad)?;
        let base: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let (range, range_prefix) = BENCHMARK_RANGE;
        if !(range_prefix..=32).contains(&prefix)
            || !in_network(base, range, range_prefix)
            || u32::from(base) & !mask(prefix) != 0
        {
            return Err(bad());
        }
        Ok(TestNetwork { base, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_networks_inside_the_benchmark_range() {
        let net: TestNetwork = "198.18.161.4/30".parse().unwrap();
        assert!(net.contains("198.18.161.6".parse().unwrap()));
        assert!(!net.contains("198.18.161.2".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        assert!("198.19.0.0/16".parse::<TestNetwork>().is_ok());
        for refused in [
            "0.0.0.0/0",
            "127.0.0.0/8",
            "10.0.0.0/8",
            "169.254.169.254/32",
            "198.16.0.0/14",
            "198.18.0.0/14",
            "198.18.161.5/30",
            "198.18.161.4",
            "198.18.161.4/33",
            "fc00::/7",
        ] {
            assert!(refused.parse::<TestNetwork>().is_err(), "{refused}");
        }
    }
}
