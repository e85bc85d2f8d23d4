//! The host on the network: an iroh endpoint whose node id is the host's own key, serving the
//! host's blob store to peers, and fetching agents from peers by content hash. The marketplace
//! gossip is in `net/gossip.rs`; catching up on peers' evidence is in [`crate::sync`].
//!
//! Networking is local-only unless asked otherwise ([`NetConfig::local`]): no relays, no DNS or
//! pkarr discovery, no port mapping, bound to loopback, and peers reached by direct address.
//! [`NetConfig::internet`] turns relays and discovery on for production.
//!
//! A fetch never stores anything unverified. Blobs are streamed with BLAKE3 verification into a
//! staging store in memory; the manifest's signature is checked, the component's size is
//! checked against the host's limit before it is requested, and the component is checked as a
//! component. Only then are both copied into the host's store and the manifest recorded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agora_registry::{Hash, SignedManifest};
use iroh::address_lookup::memory::MemoryLookup;
use iroh::endpoint::{PortmapperConfig, presets};
use iroh::protocol::Router;
use iroh::{Endpoint, EndpointAddr, RelayMode};
use iroh_blobs::BlobsProtocol;
use iroh_blobs::api::remote::GetProgressItem;
use iroh_blobs::store::mem::MemStore;
use iroh_gossip::Gossip;
use iroh_gossip::api::GossipSender;
use iroh_tickets::endpoint::EndpointTicket;
use n0_future::StreamExt;

use crate::node::Node;

mod gossip;

pub use gossip::{GossipStats, marketplace_topic};
use gossip::{announce_new_releases, announcement, listen};

/// Largest manifest a host accepts from a peer. Real manifests are a few hundred bytes.
const MAX_MANIFEST_BYTES: u64 = 64 << 10;
/// How long to wait for a peer to answer a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a transfer may go without progress before the peer is given up on.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest gossip message: a kind byte and a manifest.
const MAX_GOSSIP_MESSAGE: usize = MAX_MANIFEST_BYTES as usize + 1;

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
}

impl NetConfig {
    /// Loopback only, no relays, no discovery, no port mapping: for tests, the demo, and hosts
    /// that know their peers' addresses.
    pub fn local() -> Self {
        NetConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            internet: false,
            peers: Vec::new(),
        }
    }

    /// Production: relays and discovery on, bound to `bind` (e.g. `0.0.0.0:0`).
    pub fn internet(bind: SocketAddr) -> Self {
        NetConfig {
            bind,
            internet: true,
            peers: Vec::new(),
        }
    }

    /// Adds peers to join the marketplace gossip through.
    pub fn peers(mut self, peers: impl IntoIterator<Item = EndpointAddr>) -> Self {
        self.peers.extend(peers);
        self
    }

    /// Replaces the bind address.
    pub fn bind(mut self, bind: SocketAddr) -> Self {
        self.bind = bind;
        self
    }
}

/// A network failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The endpoint could not start.
    #[error("starting the iroh endpoint on {bind}: {message}")]
    Bind {
        /// The address.
        bind: SocketAddr,
        /// What failed.
        message: String,
    },
    /// Joining the marketplace gossip failed.
    #[error("joining the marketplace gossip: {0}")]
    Gossip(String),
    /// Catching up on a peer's evidence failed.
    #[error("catching up on the evidence of peer {peer}: {reason}")]
    CatchUp {
        /// The peer.
        peer: String,
        /// What failed.
        reason: String,
    },
    /// A peer address that does not parse.
    #[error("`{input}` is not a peer ticket")]
    BadTicket {
        /// The input (truncated).
        input: String,
    },
}

/// Why fetching an agent failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// No peers were given.
    #[error("no peers to fetch {hash} from")]
    NoPeers {
        /// The manifest hash.
        hash: Hash,
    },
    /// Every peer failed; each attempt says why.
    #[error("{hash} not found on any of {} peers:{}", attempts.len(), attempts.iter().map(|a| format!("\n  {a}")).collect::<String>())]
    NotFound {
        /// The manifest hash.
        hash: Hash,
        /// Why each peer failed, in the order tried.
        attempts: Vec<PeerFailure>,
    },
    /// The manifest is fine but names a component larger than this host accepts; nothing was
    /// downloaded.
    #[error("agent {agent} has a {size}-byte component; this host accepts at most {limit}")]
    TooLarge {
        /// The agent.
        agent: String,
        /// Its component size.
        size: u64,
        /// This host's limit.
        limit: u64,
    },
    /// Storing the verified blobs or manifest failed.
    #[error("storing {hash}: {message}")]
    Store {
        /// What was being stored.
        hash: Hash,
        /// What failed.
        message: String,
    },
}

/// One peer's failure during a fetch.
#[derive(Debug, Clone)]
pub struct PeerFailure {
    /// The peer.
    pub peer: iroh::EndpointId,
    /// The hash being fetched when it failed.
    pub hash: Hash,
    /// What went wrong.
    pub reason: String,
}

impl std::fmt::Display for PeerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "peer {}: {} ({})",
            self.peer.fmt_short(),
            self.reason,
            self.hash.short()
        )
    }
}

/// Observes transfers, e.g. to draw a progress bar.
pub trait FetchProgress: Send + Sync {
    /// A transfer of `size` bytes of `what` from `peer` starts.
    fn start(&self, what: &str, size: u64);
    /// `bytes` of the current transfer have arrived.
    fn progress(&self, bytes: u64);
    /// The current transfer ended.
    fn finish(&self);
}

/// Progress that is not shown.
pub struct NoProgress;

impl FetchProgress for NoProgress {
    fn start(&self, _: &str, _: u64) {}
    fn progress(&self, _: u64) {}
    fn finish(&self) {}
}

/// A host's presence on the network.
pub struct Network {
    node: Node,
    endpoint: Endpoint,
    router: Router,
    announcements: GossipSender,
    stats: Arc<GossipStats>,
    listener: tokio::task::JoinHandle<()>,
    announcer: tokio::task::JoinHandle<()>,
    catch_up: Arc<CatchUpState>,
}

/// Where this host is in each peer's evidence.
struct CatchUpState {
    node: Node,
    endpoint: Endpoint,
    cursors: tokio::sync::Mutex<
        std::collections::HashMap<iroh::EndpointId, agora_registry::EvidenceCursor>,
    >,
}

impl CatchUpState {
    /// Catches up on `peer`'s evidence from where the last catch-up with it ended. One
    /// catch-up per peer runs at a time.
    async fn with(&self, peer: EndpointAddr) -> Result<crate::sync::CatchUp, String> {
        let mut cursors = self.cursors.lock().await;
        let cursor = cursors.get(&peer.id).copied().unwrap_or_default();
        let connection = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.endpoint.connect(peer.clone(), crate::sync::ALPN),
        )
        .await
        .map_err(|_| format!("did not answer within {} s", CONNECT_TIMEOUT.as_secs()))?
        .map_err(|e| format!("connection failed: {e}"))?;
        let result = crate::sync::catch_up(&self.node, &connection, cursor).await;
        connection.close(0u32.into(), b"done");
        match result {
            Ok((caught, next)) => {
                cursors.insert(peer.id, next);
                tracing::info!(peer = %peer.id.fmt_short(), ?caught, "caught up on a peer's evidence");
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
        let bind_error = |message: String| NetError::Bind {
            bind: config.bind,
            message,
        };
        let secret = iroh::SecretKey::from_bytes(&node.secret_key_bytes());
        let builder = if config.internet {
            Endpoint::builder(presets::N0)
        } else {
            Endpoint::builder(presets::Minimal)
                .relay_mode(RelayMode::Disabled)
                .portmapper_config(PortmapperConfig::Disabled)
        };
        // Gossip names peers by id only; their addresses come from here.
        let addresses = MemoryLookup::new();
        for peer in &config.peers {
            addresses.add_endpoint_info(peer.clone());
        }
        let endpoint = builder
            .address_lookup(addresses)
            .clear_ip_transports()
            .bind_addr(config.bind)
            .map_err(|e| bind_error(e.to_string()))?
            .secret_key(secret)
            .bind()
            .await
            .map_err(|e| bind_error(e.to_string()))?;
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
            .spawn();
        let catch_up = Arc::new(CatchUpState {
            node: node.clone(),
            endpoint: endpoint.clone(),
            cursors: Default::default(),
        });
        let bootstrap = config.peers.iter().map(|p| p.id).collect();
        let topic = gossip
            .subscribe(marketplace_topic(), bootstrap)
            .await
            .map_err(|e| NetError::Gossip(e.to_string()))?;
        let (announcements, receiver) = topic.split();
        let stats = Arc::new(GossipStats::default());
        let listener = tokio::spawn(listen(
            node.clone(),
            receiver,
            stats.clone(),
            catch_up.clone(),
        ));
        // Catch up on the evidence the peers already hold; gossip brings what comes after.
        for peer in &config.peers {
            let (catch_up, peer) = (catch_up.clone(), peer.clone());
            tokio::spawn(async move { catch_up.with(peer).await });
        }
        let announcer = tokio::spawn(announce_new_releases(node.clone(), announcements.clone()));
        tracing::info!(id = %endpoint.id(), addr = ?endpoint.addr(), "serving blobs and gossip");
        Ok(Network {
            node,
            endpoint,
            router,
            catch_up,
            announcements,
            stats,
            listener,
            announcer,
        })
    }

    /// Tells the marketplace about an agent this host has (after publishing or fetching it).
    pub async fn announce(&self, manifest: &SignedManifest) {
        let message = announcement(manifest);
        if let Err(error) = self.announcements.broadcast(message).await {
            tracing::warn!(%error, manifest = %manifest.hash(), "announcing failed");
        }
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

    /// Fetches the agent whose manifest hash is `manifest` from the first of `peers` that has
    /// it, verifying everything before storing it. Blobs already present are not fetched again.
    pub async fn fetch_agent(
        &self,
        manifest: Hash,
        peers: &[EndpointAddr],
        progress: &dyn FetchProgress,
    ) -> Result<SignedManifest, FetchError> {
        if let Ok(Some(known)) = self.node.registry().manifest(&manifest)
            && self
                .node
                .blobs()
                .has(&known.body().component.hash)
                .await
                .unwrap_or(false)
        {
            return Ok(known);
        }
        if peers.is_empty() {
            return Err(FetchError::NoPeers { hash: manifest });
        }
        let mut attempts = Vec::new();
        for peer in peers {
            match self.fetch_from(manifest, peer, progress).await {
                Ok(found) => return Ok(found),
                Err(Attempt::Fatal(error)) => return Err(error),
                Err(Attempt::Failed(failure)) => {
                    tracing::warn!(%failure, "peer failed; trying the next");
                    attempts.push(failure);
                }
            }
        }
        Err(FetchError::NotFound {
            hash: manifest,
            attempts,
        })
    }

    /// Fetches any blob by hash (at most `max_bytes`) from the first of `peers` that has it,
    /// verified as it streams, and stores it. Present blobs are not fetched again.
    pub async fn fetch_blob(
        &self,
        hash: Hash,
        max_bytes: u64,
        peers: &[EndpointAddr],
        progress: &dyn FetchProgress,
    ) -> Result<(), FetchError> {
        if self.node.blobs().has(&hash).await.unwrap_or(false) {
            return Ok(());
        }
        if peers.is_empty() {
            return Err(FetchError::NoPeers { hash });
        }
        let mut attempts = Vec::new();
        for peer in peers {
            let failed = |reason: String| PeerFailure {
                peer: peer.id,
                hash,
                reason,
            };
            // Held until the blob is tagged; a partial blob left by a failed transfer stays
            // marked partial, never complete.
            let _protect = self.protect(hash).await?;
            let fetched = match self.connect(peer).await {
                Ok(connection) => {
                    let result = fetch_blob(
                        self.node.blobs().iroh_store(),
                        &connection,
                        hash,
                        max_bytes,
                        "blob",
                        progress,
                    )
                    .await;
                    connection.close(0u32.into(), b"done");
                    result.map_err(failed)
                }
                Err(reason) => Err(failed(reason)),
            };
            match fetched {
                Ok(()) => {
                    self.keep(hash).await?;
                    return Ok(());
                }
                Err(failure) => attempts.push(failure),
            }
        }
        Err(FetchError::NotFound { hash, attempts })
    }

    /// Holds a fetched blob in the store while it is being checked.
    async fn protect(&self, hash: Hash) -> Result<iroh_blobs::api::TempTag, FetchError> {
        self.node
            .blobs()
            .iroh_store()
            .tags()
            .temp_tag(iroh_blobs::Hash::from_bytes(*hash.as_bytes()))
            .await
            .map_err(|e| FetchError::Store {
                hash,
                message: e.to_string(),
            })
    }

    /// Tags a fetched blob so that it stays in the store.
    async fn keep(&self, hash: Hash) -> Result<(), FetchError> {
        self.node
            .blobs()
            .iroh_store()
            .tags()
            .create(iroh_blobs::Hash::from_bytes(*hash.as_bytes()))
            .await
            .map(|_| ())
            .map_err(|e| FetchError::Store {
                hash,
                message: e.to_string(),
            })
    }

    async fn connect(&self, peer: &EndpointAddr) -> Result<iroh::endpoint::Connection, String> {
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.endpoint.connect(peer.clone(), iroh_blobs::ALPN),
        )
        .await
        .map_err(|_| {
            format!(
                "could not be reached at {}: no answer within {} s",
                addresses(peer),
                CONNECT_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("could not be reached at {}: {e}", addresses(peer)))
    }

    async fn fetch_from(
        &self,
        manifest_hash: Hash,
        peer: &EndpointAddr,
        progress: &dyn FetchProgress,
    ) -> Result<SignedManifest, Attempt> {
        let failed = |hash: Hash, reason: String| {
            Attempt::Failed(PeerFailure {
                peer: peer.id,
                hash,
                reason,
            })
        };
        let connection = self
            .connect(peer)
            .await
            .map_err(|reason| failed(manifest_hash, reason))?;

        // The manifest is staged in memory: its signature must verify before it is stored.
        let staging = MemStore::new();
        fetch_blob(
            &staging,
            &connection,
            manifest_hash,
            MAX_MANIFEST_BYTES,
            "manifest",
            progress,
        )
        .await
        .map_err(|reason| failed(manifest_hash, reason))?;
        let manifest_bytes = read_blob(&staging, manifest_hash)
            .await
            .map_err(|reason| failed(manifest_hash, reason))?;
        let manifest = SignedManifest::from_bytes(&manifest_bytes)
            .and_then(|m| m.body().check(agora_registry::rules::now_ms()).map(|()| m))
            .map_err(|e| failed(manifest_hash, format!("rejected manifest: {e}")))?;
        let body = manifest.body();
        let agent = format!("{}@{}", body.name, body.version);
        let limit = self.node.sandbox().limits().max_component_bytes;
        if body.component.size > limit {
            return Err(Attempt::Fatal(FetchError::TooLarge {
                agent,
                size: body.component.size,
                limit,
            }));
        }
        let component_hash = body.component.hash;
        let component = match self.node.blobs().get(&component_hash).await {
            Ok(Some(bytes)) => bytes,
            // Staged in memory too: bytes that match the hash may still not be a component this
            // host accepts, and rejected bytes must not end up in its store.
            _ => {
                let store = &staging;
                fetch_blob(
                    store,
                    &connection,
                    component_hash,
                    body.component.size,
                    &agent,
                    progress,
                )
                .await
                .map_err(|reason| failed(component_hash, reason))?;
                read_blob(store, component_hash)
                    .await
                    .map_err(|reason| failed(component_hash, reason))?
            }
        };
        if component.len() as u64 != body.component.size {
            return Err(failed(
                component_hash,
                format!(
                    "component is {} bytes but the manifest says {}",
                    component.len(),
                    body.component.size
                ),
            ));
        }
        // Compiled now, on the blocking pool, so the first call of a fetched agent never compiles.
        self.node
            .check_component(component.clone())
            .await
            .map_err(|e| failed(component_hash, format!("rejected component: {e}")))?;
        connection.close(0u32.into(), b"done");

        let store_error = |hash: Hash| {
            move |e: &dyn std::fmt::Display| FetchError::Store {
                hash,
                message: e.to_string(),
            }
        };
        self.node
            .blobs()
            .put(component)
            .await
            .map_err(|e| Attempt::Fatal(store_error(component_hash)(&e)))?;
        self.node
            .blobs()
            .put(manifest.as_bytes().to_vec())
            .await
            .map_err(|e| Attempt::Fatal(store_error(manifest_hash)(&e)))?;
        self.node
            .registry()
            .insert_manifest(&manifest)
            .map_err(|e| Attempt::Fatal(store_error(manifest_hash)(&e)))?;
        tracing::info!(%agent, manifest = %manifest_hash, peer = %peer.id.fmt_short(), "fetched");
        self.announce(&manifest).await;
        Ok(manifest)
    }

    /// Stops serving and closes the endpoint.
    ///
    /// This also closes the node's blob store (iroh's router shuts down the protocols it
    /// serves), so call it last, after the node's other work is done.
    pub async fn shutdown(self) {
        self.listener.abort();
        self.announcer.abort();
        if let Err(error) = self.router.shutdown().await {
            tracing::warn!(%error, "network shutdown");
        }
    }
}

enum Attempt {
    /// This peer failed; another may do better.
    Failed(PeerFailure),
    /// No peer can help (e.g. the agent is too large for this host).
    Fatal(FetchError),
}

/// Fetches one blob into `store` with BLAKE3-verified streaming, giving up if it grows past
/// `max_bytes` or stalls. Only verified chunks are ever written, and a blob left incomplete
/// stays marked partial, never complete.
async fn fetch_blob(
    staging: &iroh_blobs::api::Store,
    connection: &iroh::endpoint::Connection,
    hash: Hash,
    max_bytes: u64,
    what: &str,
    progress: &dyn FetchProgress,
) -> Result<(), String> {
    let iroh_hash = iroh_blobs::Hash::from_bytes(*hash.as_bytes());
    progress.start(what, max_bytes);
    let mut stream = staging
        .remote()
        .fetch(connection.clone(), iroh_hash)
        .stream();
    let result = loop {
        let item = match tokio::time::timeout(STALL_TIMEOUT, stream.next()).await {
            Err(_) => {
                break Err(format!(
                    "transfer stalled for {} s",
                    STALL_TIMEOUT.as_secs()
                ));
            }
            Ok(None) => break Err("transfer ended without a result".to_string()),
            Ok(Some(item)) => item,
        };
        match item {
            GetProgressItem::Progress(bytes) if bytes > max_bytes => {
                break Err(format!(
                    "peer sent more than the expected {max_bytes} bytes"
                ));
            }
            GetProgressItem::Progress(bytes) => progress.progress(bytes),
            GetProgressItem::Done(_) => break Ok(()),
            GetProgressItem::Error(error) => break Err(describe_get_error(&error)),
        }
    };
    progress.finish();
    result?;
    if !staging.has(iroh_hash).await.unwrap_or(false) {
        return Err("the peer does not have it".into());
    }
    Ok(())
}

/// Reads a complete, verified blob back from `store`.
async fn read_blob(store: &iroh_blobs::api::Store, hash: Hash) -> Result<bytes::Bytes, String> {
    store
        .get_bytes(iroh_blobs::Hash::from_bytes(*hash.as_bytes()))
        .await
        .map_err(|e| format!("reading the verified blob: {e}"))
}

/// Where a peer was tried: its direct addresses, or that it had none.
fn addresses(peer: &EndpointAddr) -> String {
    let addrs: Vec<String> = peer.ip_addrs().map(ToString::to_string).collect();
    if addrs.is_empty() {
        "no known address".into()
    } else {
        addrs.join(", ")
    }
}

fn describe_get_error(error: &iroh_blobs::get::GetError) -> String {
    use iroh_blobs::get::GetError;
    use iroh_blobs::get::fsm::DecodeError;
    match error {
        // A provider that cannot find a blob resets the stream before sending its header.
        GetError::AtBlobHeaderNext { .. }
            if error.iroh_error_code() == Some(iroh_blobs::protocol::ERR_INTERNAL) =>
        {
            "the peer does not have it".into()
        }
        GetError::Decode {
            source: DecodeError::ParentHashMismatch { .. } | DecodeError::LeafHashMismatch { .. },
            ..
        } => format!(
            "verification failed, the peer served data that does not match the hash: {error:#}"
        ),
        other => format!("transfer failed: {other:#}"),
    }
}
