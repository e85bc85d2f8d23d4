//! The host on the network: an iroh endpoint whose node id is the host's own key, serving the
//! host's blob store to peers, and fetching agents from peers by content hash. The marketplace
//! gossip's messages and announcing are in `net/gossip.rs`, its receiving side in
//! `net/listener.rs`; catching up on peers' evidence is in [`crate::sync`]; checking
//! other hosts' receipts by re-executing a sample of them is in `net/audit.rs`.
//!
//! Networking is local-only unless asked otherwise ([`NetConfig::local`]): no relays, no DNS or
//! pkarr discovery, no port mapping, bound to loopback, and peers reached by direct address.
//! [`NetConfig::internet`] turns relays and discovery on for production.
//!
//! A fetch never stores anything unverified. Blobs are streamed with BLAKE3 verification into a
//! staging store in memory; the manifest's signature is checked, the component's size is
//! checked against the host's limit before it is requested, and the component is checked as a
//! component. Only then are both copied into the host's store and the manifest recorded.

mod audit;
mod config;
mod error;
mod fetch;
mod gossip;
pub mod invoke;
mod listener;
mod peers;

pub use audit::{AuditConfig, AuditStats};
pub use config::NetConfig;
pub use error::{FetchError, NetError, PeerFailure};
pub use fetch::{FetchProgress, NoProgress};

use std::sync::Arc;
use std::time::Duration;

use agora_registry::SignedManifest;
use iroh::address_lookup::memory::MemoryLookup;
use iroh::endpoint::{PortmapperConfig, presets};
use iroh::protocol::Router;
use iroh::{Endpoint, EndpointAddr, RelayMode};
use iroh_blobs::BlobsProtocol;
use iroh_gossip::Gossip;
use iroh_gossip::api::GossipSender;
use iroh_tickets::endpoint::EndpointTicket;

use crate::api::HttpLimits;
use crate::invoke::Admission;
use crate::node::Node;

pub use gossip::{GossipStats, marketplace_topic};
use gossip::{announce_new_releases, announcement};
pub use listener::{EVIDENCE_PER_PEER_BURST, EVIDENCE_PER_PEER_PER_SECOND, OWED_CATCH_UP_INTERVAL};
use listener::{Subscription, listen};
use peers::PeerBook;
pub use peers::{MAX_REMEMBERED, REJOIN_INTERVAL};

/// Largest manifest a host accepts from a peer. Real manifests are a few hundred bytes.
const MAX_MANIFEST_BYTES: u64 = 64 << 10;
/// How long to wait for a peer to answer a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a catch-up that left fraud reports for later (the checker was full) waits before
/// it asks the same peer again.
const DEFERRED_CATCH_UP_AFTER: Duration = Duration::from_secs(10);
/// How long a transfer may go without progress before the peer is given up on.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest gossip message: a kind byte and a manifest.
const MAX_GOSSIP_MESSAGE: usize = MAX_MANIFEST_BYTES as usize + 1;
/// A host's presence on the network.
pub struct Network {
    endpoint: Endpoint,
    router: Router,
    announcements: GossipSender,
    stats: Arc<GossipStats>,
    listener: tokio::task::JoinHandle<()>,
    announcer: tokio::task::JoinHandle<()>,
    catch_up: Arc<CatchUpState>,
    admission: Arc<Admission>,
    rejoiner: tokio::task::JoinHandle<()>,
    remembered: Arc<PeerBook>,
    /// Held here; the node holds it weakly, as where to fetch components it lacks.
    fetcher: Arc<fetch::Fetcher>,
    auditor: tokio::task::JoinHandle<()>,
    reports: tokio::task::JoinHandle<()>,
    audit_stats: Arc<AuditStats>,
}

/// Where this host is in each peer's evidence.
struct CatchUpState {
    node: Node,
    endpoint: Endpoint,
    /// Where this host is in each peer's evidence; held through a catch-up, so one runs at a
    /// time.
    cursors: Arc<tokio::sync::Mutex<Cursors>>,
    /// Where validations finding fraud that a peer passes on go to be checked.
    reported: audit::ReportedFrauds,
}

type Cursors = std::collections::HashMap<iroh::EndpointId, agora_registry::EvidenceCursor>;

impl CatchUpState {
    /// Catches up on `peer`'s evidence from where the last catch-up with it ended. One
    /// catch-up runs at a time.
    async fn with(self: &Arc<Self>, peer: EndpointAddr) -> Result<crate::sync::CatchUp, String> {
        let cursors = self.cursors.clone().lock_owned().await;
        self.locked(cursors, peer).await
    }

    /// Starts [`CatchUpState::with`] unless a catch-up runs or waits, and says whether it did:
    /// for catch-ups a peer's own traffic prompts (its evidence over budget), so that a peer
    /// that stalls them cannot keep the catch-ups of others waiting (a waiter is served before
    /// any later one of these).
    fn start_if_idle(self: &Arc<Self>, peer: EndpointAddr) -> bool {
        let Ok(cursors) = self.cursors.clone().try_lock_owned() else {
            return false;
        };
        let this = self.clone();
        tokio::spawn(async move { this.locked(cursors, peer).await });
        true
    }

    /// Catches up with `peer` again after [`DEFERRED_CATCH_UP_AFTER`].
    fn again_later(self: &Arc<Self>, peer: EndpointAddr) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(DEFERRED_CATCH_UP_AFTER).await;
            this.with(peer).await
        });
    }

    async fn locked(
        self: &Arc<Self>,
        mut cursors: tokio::sync::OwnedMutexGuard<Cursors>,
        peer: EndpointAddr,
    ) -> Result<crate::sync::CatchUp, String> {
        let cursor = cursors.get(&peer.id).copied().unwrap_or_default();
        let connection = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.endpoint.connect(peer.clone(), crate::sync::ALPN),
        )
        .await
        .map_err(|_| format!("did not answer within {} s", CONNECT_TIMEOUT.as_secs()))?
        .map_err(|e| format!("connection failed: {e}"))?;
        let report = |validation| self.reported.offer(validation, peer.id);
        let result = crate::sync::catch_up(&self.node, &connection, cursor, report).await;
        connection.close(0u32.into(), b"done");
        match result {
            Ok((caught, next)) => {
                cursors.insert(peer.id, next);
                tracing::info!(peer = %peer.id.fmt_short(), ?caught, "caught up on a peer's evidence");
                if caught.deferred {
                    // Nothing else brings this peer's frauds again unless it reconnects.
                    self.again_later(peer);
                }
                Ok(caught)
            }
            Err(error) => {
                tracing::debug!(peer = %peer.id.fmt_short(), %error, "catching up failed");
                Err(error)
            }
        }
    }
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("id", &self.endpoint.id())
            .finish_non_exhaustive()
    }
}

impl Network {
    /// Opens the endpoint with the node's key as its identity and serves the node's blobs.
    pub async fn start(node: Node, config: NetConfig) -> Result<Network, NetError> {
        let secret = iroh::SecretKey::from_bytes(&node.secret_key_bytes());
        // The peers given, then those remembered from earlier runs (see `peers`).
        let book = Arc::new(PeerBook::load(&node.data_dir().peers_path()));
        let own_id = secret.public();
        let mut known = config.peers.clone();
        for peer in book.addrs() {
            if peer.id != own_id && !known.iter().any(|k| k.id == peer.id) {
                known.push(peer);
            }
        }
        for peer in config.peers.iter().rev() {
            book.remember(peer);
        }
        let endpoint = bind(&config, secret, &known).await?;
        let admission = Admission::new(&HttpLimits::default());
        let blobs = BlobsProtocol::new(node.blobs().iroh_store(), None);
        let gossip = Gossip::builder()
            .max_message_size(MAX_GOSSIP_MESSAGE.max(4096))
            .spawn(endpoint.clone());
        let router = Router::builder(endpoint.clone())
            .accept(iroh_blobs::ALPN, blobs)
            .accept(iroh_gossip::ALPN, gossip.clone())
            .accept(
                crate::sync::ALPN,
                crate::sync::EvidenceProtocol { node: node.clone() },
            )
            .accept(
                crate::sync::ALPN_V1,
                crate::sync::EvidenceProtocol { node: node.clone() },
            )
            .accept(
                audit::ALPN,
                audit::VerifyProtocol {
                    node: node.clone(),
                    connections: Arc::new(tokio::sync::Semaphore::new(
                        audit::MAX_VERIFY_CONNECTIONS,
                    )),
                },
            )
            .accept(
                crate::invoke::ALPN,
                invoke::InvokeProtocol {
                    node: node.clone(),
                    admission: admission.clone(),
                    max_message_bytes: HttpLimits::default().max_body_bytes,
                    connections: Arc::new(tokio::sync::Semaphore::new(
                        invoke::MAX_INVOKE_CONNECTIONS,
                    )),
                },
            )
            .spawn();
        let bootstrap: Vec<iroh::EndpointId> = known.iter().map(|p| p.id).collect();
        let (subscription, announcements) = Subscription::open(gossip, bootstrap, book.clone())
            .await
            .map_err(|e| NetError::Gossip(e.to_string()))?;
        let stats = Arc::new(GossipStats::default());
        let fetcher = Arc::new(fetch::Fetcher {
            node: node.clone(),
            endpoint: endpoint.clone(),
            announcements: announcements.clone(),
        });
        let audit_stats = Arc::new(AuditStats::default());
        let auditor = Arc::new(audit::Auditor {
            node: node.clone(),
            endpoint: endpoint.clone(),
            fetcher: fetcher.clone(),
            announcements: announcements.clone(),
            config: config.audit.clone(),
            stats: audit_stats.clone(),
        });
        let (reported, reports) = audit::ReportedFrauds::start(auditor.clone());
        let catch_up = Arc::new(CatchUpState {
            node: node.clone(),
            endpoint: endpoint.clone(),
            cursors: Default::default(),
            reported: reported.clone(),
        });
        let listener = tokio::spawn(listen(
            node.clone(),
            subscription,
            stats.clone(),
            catch_up.clone(),
            reported,
        ));
        let auditor = tokio::spawn(async move { auditor.run().await });
        let rejoiner = tokio::spawn(rejoin_while_alone(
            announcements.clone(),
            stats.clone(),
            book.clone(),
        ));
        if !known.is_empty() {
            tracing::info!(
                given = config.peers.len(),
                remembered = known.len() - config.peers.len(),
                "joining the marketplace"
            );
        }
        // Catch up on the evidence the peers already hold; gossip brings what comes after.
        for peer in &known {
            let (catch_up, peer) = (catch_up.clone(), peer.clone());
            tokio::spawn(async move { catch_up.with(peer).await });
        }
        let announcer = tokio::spawn(announce_new_releases(node.clone(), announcements.clone()));
        // An agent learned of by gossip is fetched from its publisher when first called.
        let source: Arc<dyn crate::node::ComponentSource> = fetcher.clone();
        node.set_component_source(Arc::downgrade(&source));
        tracing::info!(id = %endpoint.id(), addr = ?endpoint.addr(), "serving blobs and gossip");
        Ok(Network {
            endpoint,
            router,
            catch_up,
            announcements,
            stats,
            listener,
            announcer,
            rejoiner,
            admission,
            remembered: book,
            fetcher,
            auditor,
            reports,
            audit_stats,
        })
    }

    /// How many peers this host remembers (see `PeerBook`): the ones it rejoins on restart.
    pub fn remembered_peers(&self) -> usize {
        self.remembered.len()
    }

    /// The admission of calls over iroh, to share with the HTTP API
    /// ([`crate::api::ApiConfig::admission`]) so that a caller's rate counts both.
    pub fn admission(&self) -> Arc<Admission> {
        self.admission.clone()
    }

    /// Tells the marketplace about an agent this host has (after publishing or fetching it).
    pub async fn announce(&self, manifest: &SignedManifest) {
        announce(&self.announcements, manifest).await;
    }

    /// Fetches the agent whose manifest hash is `manifest` from the first of `peers` that has
    /// it, verifying everything before storing it. Blobs already present are not fetched again.
    pub async fn fetch_agent(
        &self,
        manifest: agora_registry::Hash,
        peers: &[EndpointAddr],
        progress: &dyn FetchProgress,
    ) -> Result<SignedManifest, FetchError> {
        self.fetcher.fetch_agent(manifest, peers, progress).await
    }

    /// Fetches any blob by hash (at most `max_bytes`) from the first of `peers` that has it,
    /// verified as it streams, and stores it. Present blobs are not fetched again.
    pub async fn fetch_blob(
        &self,
        hash: agora_registry::Hash,
        max_bytes: u64,
        peers: &[EndpointAddr],
        progress: &dyn FetchProgress,
    ) -> Result<(), FetchError> {
        self.fetcher
            .fetch_blob(hash, max_bytes, peers, progress)
            .await
    }

    /// Asks `peer` for the evidence it holds that this host has not asked it for before, and
    /// stores it through the usual checks (see [`crate::sync`]).
    pub async fn catch_up(&self, peer: &EndpointAddr) -> Result<crate::sync::CatchUp, NetError> {
        self.catch_up
            .with(peer.clone())
            .await
            .map_err(|reason| NetError::CatchUp {
                peer: peer.id.fmt_short().to_string(),
                reason,
            })
    }

    /// The gossip counters, shared (for `/metrics`, see [`crate::api::ApiConfig::gossip`]).
    pub fn gossip_stats_handle(&self) -> Arc<GossipStats> {
        self.stats.clone()
    }

    /// The audit counters, shared (for `/metrics`, see [`crate::api::ApiConfig::audit`]).
    pub fn audit_stats_handle(&self) -> Arc<AuditStats> {
        self.audit_stats.clone()
    }

    /// What checking other hosts' receipts has done so far (see [`AuditConfig`]).
    pub fn audit_stats(&self) -> &AuditStats {
        &self.audit_stats
    }

    /// What gossip has delivered so far.
    pub fn gossip_stats(&self) -> &GossipStats {
        &self.stats
    }

    /// This host's address: its node id and the sockets it listens on.
    pub fn addr(&self) -> EndpointAddr {
        let mut addr = EndpointAddr::new(self.endpoint.id());
        for socket in self.endpoint.bound_sockets() {
            addr = addr.with_ip_addr(socket);
        }
        addr
    }

    /// A ticket others pass to `--from` to reach this host.
    pub fn ticket(&self) -> String {
        EndpointTicket::new(self.addr()).to_string()
    }

    /// Parses a peer ticket as printed by [`Network::ticket`].
    pub fn parse_ticket(ticket: &str) -> Result<EndpointAddr, NetError> {
        ticket
            .trim()
            .parse::<EndpointTicket>()
            .map(|t| t.endpoint_addr().clone())
            .map_err(|_| NetError::BadTicket {
                input: ticket.chars().take(80).collect(),
            })
    }

    /// Stops serving and closes the endpoint.
    ///
    /// This also closes the node's blob store (iroh's router shuts down the protocols it
    /// serves), so call it last, after the node's other work is done.
    pub async fn shutdown(&self) {
        self.listener.abort();
        self.announcer.abort();
        self.rejoiner.abort();
        self.auditor.abort();
        self.reports.abort();
        if let Err(error) = self.router.shutdown().await {
            tracing::warn!(%error, "network shutdown");
        }
    }
}

/// Binds an endpoint with `secret` as its identity, reaching as far as `config` says, knowing
/// the addresses of `peers` (gossip and dials name peers by id only).
async fn bind(
    config: &NetConfig,
    secret: iroh::SecretKey,
    peers: &[EndpointAddr],
) -> Result<Endpoint, NetError> {
    let bind_error = |message: String| NetError::Bind {
        bind: config.bind,
        message,
    };
    let builder = if config.internet {
        Endpoint::builder(presets::N0)
    } else {
        Endpoint::builder(presets::Minimal)
            .relay_mode(RelayMode::Disabled)
            .portmapper_config(PortmapperConfig::Disabled)
    };
    let addresses = MemoryLookup::new();
    for peer in peers {
        addresses.add_endpoint_info(peer.clone());
    }
    builder
        .address_lookup(addresses)
        .clear_ip_transports()
        .bind_addr(config.bind)
        .map_err(|e| bind_error(e.to_string()))?
        .secret_key(secret)
        .bind()
        .await
        .map_err(|e| bind_error(e.to_string()))
}

/// While this host has no gossip neighbour, dials its remembered peers every
/// [`REJOIN_INTERVAL`]: after a restart of them, or of the network, the swarm heals.
async fn rejoin_while_alone(
    announcements: GossipSender,
    stats: Arc<GossipStats>,
    book: Arc<PeerBook>,
) {
    let mut tick = tokio::time::interval(REJOIN_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        if stats.neighbours() > 0 {
            continue;
        }
        let peers: Vec<iroh::EndpointId> = book.addrs().iter().map(|p| p.id).collect();
        if peers.is_empty() {
            continue;
        }
        tracing::debug!(
            peers = peers.len(),
            "no gossip neighbour; rejoining remembered peers"
        );
        if let Err(error) = announcements.join_peers(peers).await {
            tracing::debug!(%error, "rejoining remembered peers");
        }
    }
}

/// Tells the marketplace about an agent this host has.
async fn announce(announcements: &GossipSender, manifest: &SignedManifest) {
    let message = announcement(manifest);
    if let Err(error) = announcements.broadcast(message).await {
        tracing::warn!(%error, manifest = %manifest.hash(), "announcing failed");
    }
}
