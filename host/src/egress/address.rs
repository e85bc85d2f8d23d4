//! Which IP addresses an agent's request may reach: public unicast only, unless the operator
//! allows a network.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// IPv4 ranges no agent reaches by default: what they lead to is the host's own machine, its
/// private network or its cloud's metadata service, or nothing routable at all.
const PROHIBITED_V4: &[([u8; 4], u8)] = &[
    ([0, 0, 0, 0], 8),       // "this network", unspecified
    ([10, 0, 0, 0], 8),      // private
    ([100, 64, 0, 0], 10),   // shared address space (carrier NAT; Alibaba's metadata service)
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link-local: AWS, GCP and Azure metadata at 169.254.169.254
    ([172, 16, 0, 0], 12),   // private
    ([192, 0, 0, 0], 24),    // IETF protocol assignments
    ([192, 0, 2, 0], 24),    // documentation
    ([192, 88, 99, 0], 24),  // 6to4 relay anycast
    ([192, 168, 0, 0], 16),  // private
    ([198, 18, 0, 0], 15),   // benchmarking
    ([198, 51, 100, 0], 24), // documentation
    ([203, 0, 113, 0], 24),  // documentation
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, broadcast
];

/// Whether `ip` is a public unicast address: not loopback, private, link-local (metadata
/// services included), shared, multicast, documentation, reserved or unspecified, in any IPv4,
/// IPv6, IPv4-mapped, IPv4-compatible, NAT64 or 6to4 spelling.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let ip = u32::from(ip);
    !PROHIBITED_V4.iter().any(|(network, prefix)| {
        let mask = u32::MAX << (32 - u32::from(*prefix));
        ip & mask == u32::from_be_bytes(*network) & mask
    })
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    let bits = u128::from(ip);
    let in_range = |network: u128, prefix: u32| {
        let mask = u128::MAX << (128 - prefix);
        bits & mask == network & mask
    };
    let embedded_v4 = |shift: u32| Ipv4Addr::from(((bits >> shift) & 0xffff_ffff) as u32);
    if in_range(0, 96) {
        // `::`, `::1` and the deprecated IPv4-compatible `::a.b.c.d`: none is public.
        return false;
    }
    if in_range(0xffff << 32, 96) {
        return is_public_v4(embedded_v4(0)); // `::ffff:a.b.c.d`
    }
    if in_range(0x0064_ff9b << 96, 96) {
        return is_public_v4(embedded_v4(0)); // NAT64 `64:ff9b::a.b.c.d`
    }
    if segments[0] == 0x2002 {
        return is_public_v4(embedded_v4(80)); // 6to4 `2002:aabb:ccdd::`
    }
    !(in_range(0xfc00 << 112, 7) // unique local, AWS's metadata at fd00:ec2::254
        || in_range(0xfe80 << 112, 10) // link-local
        || in_range(0xff00 << 112, 8) // multicast
        || in_range(0x2001_0db8 << 96, 32) // documentation
        || in_range(0x0100 << 112, 64) // discard
        || in_range(0x2001 << 112, 23)) // IETF protocol assignments (Teredo, benchmarking…)
}

/// A network in CIDR notation (`127.0.0.1/32`, `10.0.0.0/8`, `::1/128`); a bare address is one
/// address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNetwork {
    address: IpAddr,
    prefix: u8,
}

impl IpNetwork {
    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address is compared as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.address, ip) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(ip) & mask == u32::from(network) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(ip) & mask == u128::from(network) & mask
            }
            _ => false,
        }
    }
}

/// A network that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{given:?} is not an IP network (`127.0.0.1/32`, `10.0.0.0/8`, `::1/128`)")]
pub struct ParseNetworkError {
    given: String,
}

impl FromStr for IpNetwork {
    type Err = ParseNetworkError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ParseNetworkError {
            given: text.to_owned(),
        };
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| error())?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(error)?,
        };
        Ok(IpNetwork { address, prefix })
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(ip: &str) -> bool {
        is_public(ip.parse().unwrap())
    }

    #[test]
    fn loopback_private_link_local_and_metadata_addresses_are_not_public_in_any_spelling() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2002:7f00:1::",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
        ] {
            assert!(!public(ip), "{ip} counted as public");
        }
        for ip in [
            "1.1.1.1",
            "93.184.215.14",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(public(ip), "{ip} counted as not public");
        }
    }

    #[test]
    fn a_network_contains_its_addresses_and_mapped_spellings_of_them() {
        let loopback: IpNetwork = "127.0.0.1/32".parse().unwrap();
        assert!(loopback.contains("127.0.0.1".parse().unwrap()));
        assert!(loopback.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!loopback.contains("127.0.0.2".parse().unwrap()));
        let private: IpNetwork = "10.0.0.0/8".parse().unwrap();
        assert!(private.contains("10.200.0.1".parse().unwrap()));
        assert!(!private.contains("11.0.0.1".parse().unwrap()));
        let everything: IpNetwork = "::/0".parse().unwrap();
        assert!(everything.contains("fe80::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNetwork>().is_err());
        assert!("localhost".parse::<IpNetwork>().is_err());
    }
}
