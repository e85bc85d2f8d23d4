//! How a host goes on the network: [`NetConfig`] and its presets.

use std::net::SocketAddr;

use iroh::EndpointAddr;

use super::AuditConfig;

/// Where the endpoint listens and how far it reaches.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The UDP address to bind.
    pub bind: SocketAddr,
    /// Use n0's relays and DNS discovery. Off by default: nothing leaves the machine unless a
    /// peer address says so.
    pub internet: bool,
    /// Peers to join the marketplace gossip through.
    pub peers: Vec<EndpointAddr>,
    /// How this host checks other hosts' receipts by itself (on by default, see
    /// [`AuditConfig`]).
    pub audit: AuditConfig,
}

impl NetConfig {
    /// Loopback only, no relays, no discovery, no port mapping: for tests, the demo, and hosts
    /// that know their peers' addresses.
    pub fn local() -> Self {
        NetConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            internet: false,
            peers: Vec::new(),
            audit: AuditConfig::default(),
        }
    }

    /// Production: relays and discovery on, bound to `bind` (e.g. `0.0.0.0:0`).
    pub fn internet(bind: SocketAddr) -> Self {
        NetConfig {
            bind,
            internet: true,
            peers: Vec::new(),
            audit: AuditConfig::default(),
        }
    }

    /// Adds peers to join the marketplace gossip through.
    pub fn peers(mut self, peers: impl IntoIterator<Item = EndpointAddr>) -> Self {
        self.peers.extend(peers);
        self
    }

    /// Replaces how this host checks other hosts' receipts.
    pub fn audit(mut self, audit: AuditConfig) -> Self {
        self.audit = audit;
        self
    }

    /// Replaces the bind address.
    pub fn bind(mut self, bind: SocketAddr) -> Self {
        self.bind = bind;
        self
    }
}
