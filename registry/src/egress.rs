//! Outbound HTTP as the records see it: the origins a manifest declares its agent needs, what a
//! receipt says a call sent and received, and each exchange as a transcript records it.
//!
//! Outbound HTTP is a capability. The agent's manifest declares the origins it needs
//! ([`OriginPattern`]s such as `https://api.example.com` or `https://*.example.com:8443`); the
//! host's operator grants origins of its own; a request goes out only to an origin both allow.
//! Every exchange, refused or not, goes into the call's transcript with the response the guest
//! got, so a verifier replays it; the bytes go into the receipt and its charge.
//!
//! ```
//! use agora_registry::egress::{Origin, OriginPattern};
//!
//! let declared: OriginPattern = "https://*.example.com".parse()?;
//! assert!(declared.matches(&Origin::parse("https", "api.example.com")?));
//! assert!(declared.matches(&Origin::parse("https", "api.example.com:443")?));
//! assert!(!declared.matches(&Origin::parse("https", "example.com")?));
//! assert!(!declared.matches(&Origin::parse("http", "api.example.com")?));
//! assert!(!declared.matches(&Origin::parse("https", "api.example.com:8443")?));
//! # Ok::<(), agora_registry::egress::OriginError>(())
//! ```

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Hash;

/// Most origins one manifest may declare.
pub const MAX_EGRESS_ORIGINS: usize = 16;
/// Longest origin pattern, in bytes (a DNS name is at most 253, plus scheme and port).
pub const MAX_ORIGIN_BYTES: usize = 300;

/// An origin that does not parse, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("origin {origin:?}: {reason}")]
pub struct OriginError {
    /// What was given.
    pub origin: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// `http` or `https`: nothing else leaves a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HttpScheme {
    /// Plain HTTP, port 80 unless given.
    Http,
    /// HTTP over TLS, port 443 unless given.
    Https,
}

impl HttpScheme {
    /// The scheme's name in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpScheme::Http => "http",
            HttpScheme::Https => "https",
        }
    }

    /// The port a URL without one means.
    pub fn default_port(self) -> u16 {
        match self {
            HttpScheme::Http => 80,
            HttpScheme::Https => 443,
        }
    }

    fn parse(scheme: &str) -> Option<Self> {
        match scheme.to_ascii_lowercase().as_str() {
            "http" => Some(HttpScheme::Http),
            "https" => Some(HttpScheme::Https),
            _ => None,
        }
    }
}

/// Where one request goes: scheme, host (lower-case; an IPv6 address without brackets) and
/// port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The scheme.
    pub scheme: HttpScheme,
    /// The host name or IP address.
    pub host: String,
    /// The port, the scheme's default when the authority has none.
    pub port: u16,
}

impl Origin {
    /// The origin of a request with this scheme and authority (`host[:port]`). An authority
    /// with user information (`user@host`) is refused: credentials are the host's to add.
    pub fn parse(scheme: &str, authority: &str) -> Result<Self, OriginError> {
        let error = |reason| OriginError {
            origin: format!("{scheme}://{authority}"),
            reason,
        };
        let scheme =
            HttpScheme::parse(scheme).ok_or_else(|| error("the scheme is not http or https"))?;
        let (host, port) = split_authority(authority).map_err(error)?;
        let port = port.unwrap_or(scheme.default_port());
        Ok(Origin { scheme, host, port })
    }

    /// The host as an IP address, if it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{}://{host}:{}", self.scheme.as_str(), self.port)
    }
}

/// Which hosts a pattern covers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Exactly this name or address.
    Exact(String),
    /// Any name ending in `.suffix` (not `suffix` itself): `*.example.com`.
    Subdomains(String),
}

/// Origins a manifest declares or an operator grants: `scheme://host[:port]`, where host may be
/// `*.suffix`. Without a port it means the scheme's default port. Paths, queries and user
/// information are refused: this is a policy on where requests go, not on what they ask.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OriginPattern {
    /// The scheme.
    pub scheme: HttpScheme,
    /// The hosts.
    pub host: HostPattern,
    /// The port.
    pub port: u16,
}

impl OriginPattern {
    /// Whether `origin` is one this pattern covers.
    pub fn matches(&self, origin: &Origin) -> bool {
        self.scheme == origin.scheme
            && self.port == origin.port
            && match &self.host {
                HostPattern::Exact(host) => *host == origin.host,
                HostPattern::Subdomains(suffix) => origin
                    .host
                    .strip_suffix(suffix.as_str())
                    .is_some_and(|head| !head.is_empty() && !head.ends_with('.')),
            }
    }
}

impl FromStr for OriginPattern {
    type Err = OriginError;

    fn from_str(pattern: &str) -> Result<Self, Self::Err> {
        let error = |reason| OriginError {
            origin: pattern.to_owned(),
            reason,
        };
        if pattern.len() > MAX_ORIGIN_BYTES {
            return Err(error("longer than 300 bytes"));
        }
        let (scheme, rest) = pattern
            .split_once("://")
            .ok_or_else(|| error("must start with http:// or https://"))?;
        let scheme =
            HttpScheme::parse(scheme).ok_or_else(|| error("the scheme is not http or https"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err(error("an origin has no path or query"));
        }
        let (host, port) = split_authority(rest).map_err(error)?;
        let port = port.unwrap_or(scheme.default_port());
        let host = match host.strip_prefix("*.") {
            Some(suffix) if !suffix.contains('*') && suffix.contains('.') => {
                HostPattern::Subdomains(format!(".{suffix}"))
            }
            Some(_) => return Err(error("a wildcard covers subdomains of a name with a dot")),
            None if host.contains('*') => {
                return Err(error("a wildcard may only open the host (`*.example.com`)"));
            }
            None => HostPattern::Exact(host),
        };
        Ok(OriginPattern { scheme, host, port })
    }
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match &self.host {
            HostPattern::Exact(host) if host.contains(':') => format!("[{host}]"),
            HostPattern::Exact(host) => host.clone(),
            HostPattern::Subdomains(suffix) => format!("*{suffix}"),
        };
        write!(f, "{}://{host}:{}", self.scheme.as_str(), self.port)
    }
}

/// `host[:port]` → lower-case host (IPv6 without brackets) and port.
fn split_authority(authority: &str) -> Result<(String, Option<u16>), &'static str> {
    if authority.contains('@') {
        return Err("user information is not allowed");
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address lacks its `]`")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("not an IPv6 address in brackets");
        }
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or("junk after `]`")?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => None,
        Some(port) => Some(
            port.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or("the port is not 1 to 65535")?,
        ),
    };
    let host = host.to_ascii_lowercase();
    let name_like = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*' | '_');
    if host.is_empty() || host.len() > 253 {
        return Err("the host must be 1 to 253 bytes");
    }
    // An IPv6 address was checked in its brackets; anything else is a name or IPv4 address.
    let bracketed = authority.starts_with('[');
    if !bracketed && !host.chars().all(name_like) {
        return Err("the host is not a DNS name or IP address");
    }
    Ok((host, port))
}

/// What one call spent on outbound HTTP, as its receipt records it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressUsage {
    /// Requests the host sent (refused ones are not counted).
    pub requests: u64,
    /// Bytes sent: request lines, headers and bodies.
    pub bytes_sent: u64,
    /// Bytes received: status lines, headers and bodies, as far as they were read.
    pub bytes_received: u64,
    /// What the host charged for the bytes, part of the receipt's charge.
    pub charge: u64,
}

impl EgressUsage {
    /// Requests and bytes of a transcript's exchanges (the charge is the host's to set).
    pub fn recount(transcript: &crate::Transcript) -> Self {
        let mut usage = EgressUsage::default();
        for call in &transcript.calls {
            if let crate::HostCall::Http {
                bytes_sent,
                bytes_received,
                ..
            } = call
            {
                usage.requests += u64::from(*bytes_sent > 0);
                usage.bytes_sent = usage.bytes_sent.saturating_add(*bytes_sent);
                usage.bytes_received = usage.bytes_received.saturating_add(*bytes_received);
            }
        }
        usage
    }

    /// Whether nothing was sent or received.
    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.bytes_sent == 0 && self.bytes_received == 0
    }
}

/// `bytes × price / 10⁶`, rounded up so that any traffic costs something at a non-zero price.
pub fn charge_for_bytes(bytes: u64, price_per_mbyte: u64) -> u64 {
    let charge = (u128::from(bytes) * u128::from(price_per_mbyte)).div_ceil(1_000_000);
    u64::try_from(charge).unwrap_or(u64::MAX)
}

/// Why an outbound request got no response, as the guest sees it (a `wasi:http` error code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HttpErrorKind {
    /// The origin is not one the manifest declares and the host grants
    /// (`HTTP-request-denied`).
    Denied,
    /// The name resolved only to addresses the host does not reach, such as loopback, private
    /// or cloud metadata ones (`destination-IP-prohibited`).
    DestinationProhibited,
    /// The name did not resolve (`DNS-error`).
    DnsError,
    /// Nothing accepted the connection (`connection-refused`).
    ConnectionRefused,
    /// The exchange took longer than the host allows (`connection-timeout`).
    Timeout,
    /// The request body is larger than the host sends (`HTTP-request-body-size`).
    RequestTooLarge,
    /// The response is larger than the host reads (`HTTP-response-body-size`); what was read
    /// is counted, not delivered.
    ResponseTooLarge,
    /// The host has as many outbound connections open as it allows, for all its agents
    /// together (`connection-limit-reached`).
    TooManyRequests,
    /// The server's TLS certificate is not one the host trusts for the name
    /// (`TLS-certificate-error`).
    TlsCertificate,
    /// The server did not speak TLS or HTTP/1.1 well enough (`HTTP-protocol-error`).
    Protocol,
}

/// A response header as the guest got it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// The name, lower-case.
    pub name: String,
    /// The value.
    pub value: String,
}

/// What an outbound request got, as a transcript records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum HttpAnswer {
    /// A response, whole. Redirects are answers like any other: the host never follows them.
    Response {
        /// The status code.
        status: u16,
        /// The headers the guest saw.
        headers: Vec<Header>,
        /// The body, in lower-case hex.
        #[serde(with = "crate::transcript::hex_bytes")]
        body: Vec<u8>,
    },
    /// No response.
    Error {
        /// Which error.
        kind: HttpErrorKind,
        /// What the host said, for people.
        message: String,
    },
    /// The call ended before the request was answered; the guest never saw an answer, so a
    /// replay gives it none either.
    Cancelled,
}

/// [`HostCall::Http`](crate::HostCall::Http)'s request hash: BLAKE3 of the method, URL, the
/// headers the guest set (after the host stripped credentials) and the body, so a replay
/// notices a guest asking something else.
pub fn http_request_hash(
    method: &str,
    url: &str,
    headers: &[(String, Vec<u8>)],
    body: &[u8],
) -> Hash {
    let mut hasher = blake3::Hasher::new_derive_key("agora 2026-12 outbound http request");
    let mut field = |bytes: &[u8]| {
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(method.as_bytes());
    field(url.as_bytes());
    for (name, value) in headers {
        field(name.as_bytes());
        field(value);
    }
    field(b"body");
    field(body);
    Hash::from_bytes(*hasher.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(s: &str) -> OriginPattern {
        s.parse().unwrap()
    }

    fn origin(scheme: &str, authority: &str) -> Origin {
        Origin::parse(scheme, authority).unwrap()
    }

    #[test]
    fn a_pattern_without_a_port_means_the_schemes_default_port() {
        assert!(pattern("http://127.0.0.1").matches(&origin("http", "127.0.0.1:80")));
        assert!(!pattern("http://127.0.0.1").matches(&origin("http", "127.0.0.1:8080")));
        assert!(pattern("https://API.example.com/").matches(&origin("https", "api.EXAMPLE.com")));
        assert!(pattern("http://[::1]:8080").matches(&origin("http", "[::1]:8080")));
    }

    #[test]
    fn a_wildcard_covers_subdomains_only() {
        let p = pattern("https://*.example.com");
        assert!(p.matches(&origin("https", "a.b.example.com")));
        assert!(!p.matches(&origin("https", "example.com")));
        assert!(!p.matches(&origin("https", "badexample.com")));
        assert!(!p.matches(&origin("https", "example.com.evil.org")));
    }

    #[test]
    fn patterns_with_paths_user_information_or_odd_wildcards_are_refused() {
        for bad in [
            "example.com",
            "ftp://example.com",
            "https://example.com/path",
            "https://user@example.com",
            "https://*",
            "https://*.com",
            "https://a.*.example.com",
            "https://example.com:0",
            "https://example.com:99999",
            "https://[not-v6]",
            "https://exa mple.com",
            "https://::1:443",
            "https:// _x0::1",
        ] {
            assert!(bad.parse::<OriginPattern>().is_err(), "{bad} parsed");
        }
        assert!(Origin::parse("http", "user:pass@example.com").is_err());
    }

    #[test]
    fn a_pattern_prints_as_it_parses() {
        for p in [
            "https://*.example.com:443",
            "http://[::1]:8080",
            "http://127.0.0.1:80",
        ] {
            assert_eq!(pattern(p).to_string(), p);
            assert_eq!(pattern(&pattern(p).to_string()), pattern(p));
        }
    }

    /// Strings from the characters that matter to origins, about `len` pieces long; half are
    /// shaped like an origin, so that many parse. A fixed seed, so a failure reproduces.
    fn origin_like(rng: &mut impl rand::RngExt, len: usize) -> String {
        const PIECES: &[&str] = &[
            "http", "https", "://", "*.", ".", ":", "[", "]", "::1", "/", "@", "?", "#", "0", "80",
            "443", "65536", "a", "B", "example", "com", "-", "_", " ", "é", "%2e", "1.2.3.4",
        ];
        let mut junk = |n: usize| -> String {
            (0..rng.random_range(0..n))
                .map(|_| PIECES[rng.random_range(0..PIECES.len())])
                .collect()
        };
        if len.is_multiple_of(2) {
            let scheme = if len.is_multiple_of(4) {
                "https://"
            } else {
                "http://"
            };
            format!("{scheme}{}", junk(len / 2))
        } else {
            junk(len)
        }
    }

    #[test]
    fn any_string_parses_or_is_refused_without_panicking_and_what_parses_prints_back_to_itself() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(14);
        let mut parsed = 0;
        for i in 0..200_000 {
            let text = origin_like(&mut rng, 8 + i % 8);
            if let Ok(pattern) = text.parse::<OriginPattern>() {
                parsed += 1;
                let printed = pattern.to_string();
                assert_eq!(
                    printed.parse::<OriginPattern>(),
                    Ok(pattern.clone()),
                    "{text:?}"
                );
                // An exact pattern covers the origin it names, and only on its own port.
                if let HostPattern::Exact(host) = &pattern.host {
                    let host = if host.contains(':') {
                        format!("[{host}]")
                    } else {
                        host.clone()
                    };
                    let scheme = pattern.scheme.as_str();
                    let origin = Origin::parse(scheme, &format!("{host}:{}", pattern.port));
                    let origin = origin.unwrap_or_else(|e| panic!("{text:?}: {e}"));
                    assert!(pattern.matches(&origin), "{text:?}");
                    let other = Origin {
                        port: pattern.port.wrapping_add(1).max(1),
                        ..origin
                    };
                    assert!(!pattern.matches(&other), "{text:?}");
                }
            }
            let _ = Origin::parse("https", &text);
        }
        assert!(
            parsed > 1_000,
            "the generator should make many valid patterns: {parsed}"
        );
    }
}
