//! Outbound HTTP a host sends for the agents it runs (`wasi:http/outgoing-handler`).
//!
//! Two layers decide where a request may go, as in wasmCloud's egress policy:
//!
//! 1. **Origins.** The request's origin (scheme, host, port) must match an origin the agent's
//!    manifest declares *and* one the operator grants ([`EgressConfig::grant`]). Anything else is
//!    `HTTP-request-denied` before a name is resolved.
//! 2. **Addresses.** The host resolves the name itself and connects only to an address it
//!    checked: loopback, private, link-local (with cloud metadata services), shared,
//!    multicast, documentation and unspecified ranges, in IPv4, IPv6 and IPv4-mapped spellings,
//!    are `destination-IP-prohibited` unless the operator allows a network
//!    ([`EgressConfig::allow_network`]). The checked address is the one connected to, so a name
//!    that resolves differently a moment later (DNS rebinding) gains nothing.
//!
//! Credentials are the host's: a guest cannot set `authorization`, `cookie` or `proxy-*` (the
//! sandbox refuses them), and the host adds those the operator configured for an origin
//! ([`EgressConfig::credential`]). They are never in the transcript, which records the guest's
//! request, or in the receipt. Redirects are never followed: the guest gets the 3xx and any
//! request it makes to the new location is checked like the first. Sizes and time are bounded by
//! [`Limits`](crate::Limits)' `max_http_*` fields; bytes are priced per million
//! ([`EgressConfig::price_per_mbyte`]) into the receipt's charge.
//!
//! ```
//! use agora_host::egress::EgressConfig;
//!
//! let egress = EgressConfig::default()
//!     .grant("https://api.open-meteo.com".parse()?)
//!     .price_per_mbyte(1_000);
//! assert_eq!(egress.grants().count(), 1);
//! # Ok::<(), agora_registry::egress::OriginError>(())
//! ```

mod address;
mod client;

use std::fmt;
use std::net::IpAddr;

use agora_registry::Transcript;
use agora_registry::egress::{EgressUsage, OriginPattern, charge_for_bytes};

pub use address::{IpNetwork, ParseNetworkError, is_public};
pub(crate) use client::{EgressPolicy, EgressSession};

/// A header the host adds to every request to an origin: the operator's credential for it.
#[derive(Clone)]
pub struct Credential {
    origin: OriginPattern,
    name: http::HeaderName,
    value: http::HeaderValue,
}

impl Credential {
    /// `name: value` on requests to `origin`. The value is marked sensitive, so it is never
    /// printed.
    pub fn new(
        origin: OriginPattern,
        name: http::HeaderName,
        mut value: http::HeaderValue,
    ) -> Self {
        value.set_sensitive(true);
        Credential {
            origin,
            name,
            value,
        }
    }

    /// Reads a credential from a file holding one header line, `Name: value` (e.g.
    /// `Authorization: Bearer sk-…`).
    pub fn from_header_line(origin: OriginPattern, line: &str) -> Result<Self, CredentialError> {
        let line = line.trim();
        let (name, value) = line.split_once(':').ok_or(CredentialError::NoColon)?;
        let name = http::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| CredentialError::BadName)?;
        let value =
            http::HeaderValue::from_str(value.trim()).map_err(|_| CredentialError::BadValue)?;
        Ok(Credential::new(origin, name, value))
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("origin", &self.origin.to_string())
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// A credential line that does not parse. Says what is wrong, never what the line held.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// No `:` between name and value.
    #[error("a credential is one header line, `Name: value`, and this one has no `:`")]
    NoColon,
    /// The name is not an HTTP header name.
    #[error("the credential's header name is not a valid HTTP header name")]
    BadName,
    /// The value has characters a header value cannot.
    #[error("the credential's value is not a valid HTTP header value")]
    BadValue,
}

/// Where a host lets its agents' outbound HTTP go. Default: nowhere, so every request is
/// `HTTP-request-denied` whatever a manifest declares.
#[derive(Clone, Debug)]
pub struct EgressConfig {
    grants: Vec<OriginPattern>,
    allowed_networks: Vec<IpNetwork>,
    credentials: Vec<Credential>,
    /// Price per million bytes, sent and received alike, in the marketplace's smallest unit.
    /// Default 0.
    pub price_per_mbyte: u64,
    /// Outbound connections open at once, for all agents together. Default 256, so agents
    /// cannot run the host out of sockets (each call is bounded on its own by
    /// [`Limits::max_http_requests`](crate::Limits::max_http_requests)). A request that finds
    /// none free within [`CONNECTION_WAIT`] fails with `connection-limit-reached`.
    pub max_connections: usize,
    /// Trust roots besides the built-in Mozilla set (webpki-roots), DER-encoded: for an
    /// operator's own certificate authority, or a test's. Default none.
    extra_roots: Vec<Vec<u8>>,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            grants: Vec::new(),
            allowed_networks: Vec::new(),
            credentials: Vec::new(),
            price_per_mbyte: 0,
            max_connections: 256,
            extra_roots: Vec::new(),
        }
    }
}

/// Longest a request waits for one of the host's [`EgressConfig::max_connections`].
pub const CONNECTION_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl EgressConfig {
    /// Sets [`EgressConfig::max_connections`].
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// Lets agents that declare a matching origin send requests to `origin`.
    pub fn grant(mut self, origin: OriginPattern) -> Self {
        self.grants.push(origin);
        self
    }

    /// Lets requests reach addresses in `network` even if it is loopback, private or otherwise
    /// prohibited (`127.0.0.1/32` for a model server on this machine).
    pub fn allow_network(mut self, network: IpNetwork) -> Self {
        self.allowed_networks.push(network);
        self
    }

    /// Adds `credential` to every request to its origin.
    pub fn credential(mut self, credential: Credential) -> Self {
        self.credentials.push(credential);
        self
    }

    /// Sets [`EgressConfig::price_per_mbyte`].
    pub fn price_per_mbyte(mut self, price: u64) -> Self {
        self.price_per_mbyte = price;
        self
    }

    /// Trusts TLS certificates issued by `der` (a DER-encoded CA certificate) as well.
    pub fn trust_root(mut self, der: impl Into<Vec<u8>>) -> Self {
        self.extra_roots.push(der.into());
        self
    }

    /// The origins granted.
    pub fn grants(&self) -> impl Iterator<Item = &OriginPattern> {
        self.grants.iter()
    }

    /// Whether a request may reach `ip`.
    fn address_allowed(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allowed_networks.iter().any(|n| n.contains(ip))
    }

    /// What a call that made the exchanges in `transcript` spent on outbound HTTP, and what it
    /// costs at this host's price; `None` if it sent and received nothing.
    pub fn usage(&self, transcript: &Transcript) -> Option<EgressUsage> {
        let mut usage = EgressUsage::recount(transcript);
        if usage.is_empty() {
            return None;
        }
        let bytes = usage.bytes_sent.saturating_add(usage.bytes_received);
        usage.charge = charge_for_bytes(bytes, self.price_per_mbyte);
        Some(usage)
    }
}
