//! Hosts fetching agents from each other by content hash over iroh, on loopback only.
//! Shared fixtures here; the tests in [`fetch`], [`gossip`], [`evidence`] and [`audit`].

mod audit;
mod evidence;
mod fetch;
mod gossip;
mod invoke;

use std::sync::Mutex;
use std::time::Duration;

use agora_host::net::{FetchProgress, NetConfig, Network};
use agora_registry::SignedManifest;
use agora_tests::TestHost;

async fn online(host: &TestHost) -> Network {
    Network::start(host.node.clone(), NetConfig::local())
        .await
        .expect("start network")
}

/// Records what was transferred.
#[derive(Default)]
struct Transfers(Mutex<Vec<String>>);

impl FetchProgress for Transfers {
    fn start(&self, what: &str, _size: u64) {
        self.0.lock().unwrap().push(what.to_owned());
    }
    fn progress(&self, _bytes: u64) {}
    fn finish(&self) {}
}

async fn online_with_peers(host: &TestHost, peers: &[&Network]) -> Network {
    let config = NetConfig::local().peers(peers.iter().map(|p| p.addr()));
    Network::start(host.node.clone(), config)
        .await
        .expect("start network")
}

/// Waits (bounded) until `host` knows the manifest.
async fn learns_of(host: &TestHost, manifest: &SignedManifest) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while host
        .node
        .registry()
        .manifest(&manifest.hash())
        .unwrap()
        .is_none()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never arrived",
            manifest.body().name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain iroh endpoint on loopback, outside agora: the base of the hostile peers below.
async fn bare_endpoint(known: &[iroh::EndpointAddr]) -> iroh::Endpoint {
    use iroh::endpoint::{PortmapperConfig, presets};
    let lookup = iroh::address_lookup::memory::MemoryLookup::new();
    for peer in known {
        lookup.add_endpoint_info(peer.clone());
    }
    iroh::Endpoint::builder(presets::Minimal)
        .relay_mode(iroh::RelayMode::Disabled)
        .portmapper_config(PortmapperConfig::Disabled)
        .address_lookup(lookup)
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0")
        .unwrap()
        .bind()
        .await
        .unwrap()
}

/// A bare gossip peer on the marketplace topic, joined through `target`.
async fn raw_gossip_peer(
    target: &Network,
) -> (iroh::protocol::Router, iroh_gossip::api::GossipTopic) {
    let endpoint = bare_endpoint(&[target.addr()]).await;
    let gossip = iroh_gossip::Gossip::builder().spawn(endpoint.clone());
    let router = iroh::protocol::Router::builder(endpoint.clone())
        .accept(iroh_gossip::ALPN, gossip.clone())
        .spawn();
    let topic = gossip
        .subscribe_and_join(agora_host::net::marketplace_topic(), vec![target.addr().id])
        .await
        .unwrap();
    (router, topic)
}

/// Waits until `done`, for at most 60 s: generous, since a loaded two-core machine running the
/// whole suite is many times slower than one test alone; a passing test waits only as long as
/// it needs.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
