//! Fetching by content hash from peers: verified streaming into a staging store, size gates
//! before download, and errors that say which peer, which hash and what happened.

use agora_registry::{Hash, SignedManifest};
use iroh::EndpointAddr;
use iroh_blobs::api::remote::GetProgressItem;
use iroh_blobs::store::mem::MemStore;
use n0_future::StreamExt;

use super::{CONNECT_TIMEOUT, FetchError, MAX_MANIFEST_BYTES, PeerFailure, STALL_TIMEOUT};
use crate::node::Node;

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

/// What fetching needs of the network: the node to store into, the endpoint to dial from, and
/// the gossip to announce what was fetched. Cheap to clone; also the node's source of components
/// it knows only by manifest (see [`crate::node::ComponentSource`]).
#[derive(Clone)]
pub(crate) struct Fetcher {
    pub(super) node: Node,
    pub(super) endpoint: iroh::Endpoint,
    pub(super) announcements: iroh_gossip::api::GossipSender,
}

impl crate::node::ComponentSource for Fetcher {
    fn fetch(
        &self,
        manifest: SignedManifest,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            // The publisher's host announced it, and has it; its address is known if it is, or
            // was, a neighbour.
            let publisher = iroh::EndpointId::from_bytes(manifest.body().publisher.as_bytes())
                .map_err(|e| e.to_string())?;
            self.fetch_agent(
                manifest.hash(),
                &[EndpointAddr::new(publisher)],
                &NoProgress,
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        })
    }
}

impl Fetcher {
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
        super::announce(&self.announcements, &manifest).await;
        Ok(manifest)
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
