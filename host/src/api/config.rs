//! How the API is served: where it listens, whom it trusts, and every bound on what a client can
//! make it do ([`HttpLimits`]), each with its default, its unit and what happens at the limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agora_registry::PublicKey;

/// How to serve the API.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Where to listen. Default `127.0.0.1:0` (an ephemeral port on loopback).
    pub listen: SocketAddr,
    /// Keys trusted a priori besides this host's own. Default none.
    pub extra_anchors: Vec<PublicKey>,
    /// The host's gossip counters, reported in `/metrics` when the host is on the network
    /// ([`crate::net::Network::gossip_stats_handle`]). Default: none.
    pub gossip: Option<Arc<crate::net::GossipStats>>,
    /// What checking other hosts' receipts has done, reported in `/metrics` when the host is
    /// on the network ([`crate::net::Network::audit_stats_handle`]). Default: none.
    pub audit: Option<Arc<crate::net::AuditStats>>,
    /// Web origins (`scheme://host[:port]`) whose pages may call this API from a browser.
    /// Default none: a request that carries any `Origin` header is refused with 403, so a web
    /// page the operator visits cannot drive a loopback API. Clients that are not browsers send
    /// no `Origin` and are unaffected.
    pub allowed_origins: Vec<String>,
    /// The bounds on clients.
    pub limits: HttpLimits,
    /// The invocation admission to share with the host's other transports
    /// ([`crate::net::Network::admission`]), so a caller's rate and the invocation slots count
    /// its calls over HTTP, iroh and MCP together. Default none: the API admits by its own,
    /// sized from `limits`.
    pub admission: Option<Arc<crate::invoke::Admission>>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            extra_anchors: Vec::new(),
            gossip: None,
            audit: None,
            allowed_origins: Vec::new(),
            limits: HttpLimits::default(),
            admission: None,
        }
    }
}

/// Every bound the HTTP edge puts on its clients. A client over a bound gets an answer that
/// says which (a status and a JSON `error`), or, below HTTP, its connection closed; the host
/// keeps serving everyone else.
///
/// When the API listens on a loopback address, requests must also name a loopback host in
/// `Host` (`localhost`, `127.0.0.1`, `[::1]`), or get 421: a DNS-rebinding page cannot reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Most open connections. Default 1,024. At the limit the host stops accepting: new
    /// connections wait in the kernel's backlog until one closes.
    pub max_connections: usize,
    /// Longest a connection may take to send a request's headers, and longest it may stay idle
    /// between requests. Default 10 s. At the limit the connection is closed (this is what cuts
    /// a client that opens connections and trickles bytes, "slowloris").
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers), in bytes. Default 16 KiB. Over it, or
    /// over 64 headers: 431, and the connection is closed.
    pub max_header_bytes: usize,
    /// Largest request body, in bytes. Default 256 KiB (a signed record is a few KiB). Over it:
    /// 413, and a body announced as larger is not read at all.
    pub max_body_bytes: usize,
    /// Longest one request may take, body included. Default 10 s. Over it: 408.
    pub request_timeout: Duration,
    /// Most requests handled at once, over all endpoints together. Default 256. Over it: 503
    /// at once, with `Retry-After`; nothing queues.
    pub max_concurrent_requests: usize,
    /// Most invocations running at once; each runs an agent on a core. Default 32. Over it: 503
    /// at once, with `Retry-After` (over iroh, the same refusal in the reply).
    ///
    /// This and the three knobs after it size the host's [`crate::invoke::Admission`], which
    /// counts calls over every transport together: `POST /v1/invoke`, iroh (`agora/invoke/1`)
    /// and MCP `tools/call` (whose unsigned clients are counted by address instead of key).
    pub max_concurrent_invocations: usize,
    /// Invocations one caller key may start per second, on average. Default 20. Over it: 429,
    /// with `Retry-After` saying when the next one would be admitted.
    pub invocations_per_caller_per_second: u32,
    /// Invocations one caller key may start in a burst, above the average. Default 40.
    pub invocation_burst_per_caller: u32,
    /// Most caller keys whose rate is tracked at once. Default 10,000. A caller that has not
    /// called for a full burst interval is forgotten (it is owed nothing); when every tracked
    /// caller is recent, a new caller gets 429 until one is forgotten.
    pub max_tracked_callers: usize,
    /// Signed records (`POST /v1/receipts`, `POST /v1/feedback`) one client address may send
    /// per second, on average. Default 200. Over it: 429, with `Retry-After`. Each record is
    /// verified and checked before it is stored, so this bounds the work a client can cause.
    pub records_per_client_per_second: u32,
    /// Signed records one client address may send in a burst. Default 2,000.
    pub record_burst_per_client: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 << 10,
            max_body_bytes: 256 << 10,
            request_timeout: Duration::from_secs(10),
            max_concurrent_requests: 256,
            max_concurrent_invocations: 32,
            invocations_per_caller_per_second: 20,
            invocation_burst_per_caller: 40,
            max_tracked_callers: 10_000,
            records_per_client_per_second: 200,
            record_burst_per_client: 2_000,
        }
    }
}

/// Most headers in one request: hyper's parser needs a fixed number.
pub(crate) const MAX_HEADERS: usize = 64;

/// Why [`HttpLimits`] cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("http limit `{field}` {problem}")]
pub struct InvalidLimits {
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl HttpLimits {
    /// Checks that every bound can be served: counts and sizes above zero, the head size
    /// within what hyper can buffer.
    pub fn validate(&self) -> Result<(), InvalidLimits> {
        let positive = [
            ("max_connections", self.max_connections),
            ("max_body_bytes", self.max_body_bytes),
            ("max_concurrent_requests", self.max_concurrent_requests),
            (
                "max_concurrent_invocations",
                self.max_concurrent_invocations,
            ),
            (
                "invocations_per_caller_per_second",
                self.invocations_per_caller_per_second as usize,
            ),
            (
                "invocation_burst_per_caller",
                self.invocation_burst_per_caller as usize,
            ),
            ("max_tracked_callers", self.max_tracked_callers),
            (
                "records_per_client_per_second",
                self.records_per_client_per_second as usize,
            ),
            (
                "record_burst_per_client",
                self.record_burst_per_client as usize,
            ),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(InvalidLimits {
                field,
                problem: "must be above zero",
            });
        }
        if self.header_read_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(InvalidLimits {
                field: if self.header_read_timeout.is_zero() {
                    "header_read_timeout"
                } else {
                    "request_timeout"
                },
                problem: "must be above zero",
            });
        }
        // hyper's read buffer is at least 8 KiB and must hold the whole head.
        if !(1024..=1 << 20).contains(&self.max_header_bytes) {
            return Err(InvalidLimits {
                field: "max_header_bytes",
                problem: "must be between 1 KiB and 1 MiB",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_zero_is_refused_by_name() {
        HttpLimits::default().validate().unwrap();
        let zero = HttpLimits {
            max_concurrent_invocations: 0,
            ..HttpLimits::default()
        };
        assert_eq!(
            zero.validate().unwrap_err().to_string(),
            "http limit `max_concurrent_invocations` must be above zero"
        );
        let huge = HttpLimits {
            max_header_bytes: 64 << 20,
            ..HttpLimits::default()
        };
        assert_eq!(huge.validate().unwrap_err().field, "max_header_bytes");
    }
}
