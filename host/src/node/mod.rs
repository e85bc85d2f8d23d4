//! A host node: its identity, registry, blob store and sandbox, and the operations on them:
//! [`data_dir`] (where a host keeps its state, how it is opened), [`publish`] (checking and
//! signing a release), [`run`] (resolving an agent, running it and signing the receipt).

mod data_dir;
mod fraud;
mod publish;
mod reexecute;
mod run;
mod services;

pub use data_dir::{DataDir, NodeConfig};
pub use fraud::{FraudError, FraudRecorded};
pub use publish::{PublishOptions, Published};
pub use reexecute::{ReexecuteError, Reexecution, Verdict};
pub use run::Execution;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agora_registry::{Hash, PublicKey, Registry, SecretKey, SignedManifest};

use crate::blobs::BlobStore;
use crate::error::{OpenError, RunError};
use crate::sandbox::Sandbox;

/// A host: the identity that signs manifests and receipts, the registry, the blob store and the
/// sandbox. Cheap to clone.
#[derive(Clone)]
pub struct Node(Arc<NodeInner>);

struct NodeInner {
    data_dir: DataDir,
    key: SecretKey,
    /// This host's key, then the publishers its operator trusts.
    trusted: Vec<PublicKey>,
    registry: Registry,
    blobs: BlobStore,
    sandbox: Sandbox,
    /// The language models offered to agents, shared by every call's session.
    models: Arc<crate::model::ModelConfig>,
    /// Where agents' outbound HTTP may go, shared by every call's session.
    egress: Arc<crate::egress::EgressPolicy>,
    /// Manifests looked up by hash, so a warm call reads nothing from the registry. Manifests
    /// are immutable; bounded like the loaded agents.
    manifests: std::sync::Mutex<std::collections::HashMap<Hash, SignedManifest>>,
    /// Where to fetch the component of an agent known only by its manifest: the network, while
    /// the node is on one (held weakly: the network holds the node).
    component_source: std::sync::RwLock<Option<std::sync::Weak<dyn ComponentSource>>>,
}

/// Where a node gets the component of an agent it knows only by its manifest (learned from
/// gossip): the network it is on. A component fetched is verified like any other.
pub(crate) trait ComponentSource: Send + Sync {
    /// Fetches and stores `manifest`'s component, or says why not.
    fn fetch(
        &self,
        manifest: SignedManifest,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("data_dir", &self.0.data_dir.root())
            .field("key", &self.0.key.public())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Opens the node in `config.data_dir`, which must hold a key (see [`DataDir::keygen`]).
    pub async fn open(config: NodeConfig) -> Result<Node, OpenError> {
        let data_dir = config.data_dir;
        data_dir
            .create_private()
            .map_err(|source| OpenError::DataDir {
                path: data_dir.root().to_owned(),
                source,
            })?;
        let key_path = data_dir.key_path();
        if !key_path.exists() {
            return Err(OpenError::NoKey { path: key_path });
        }
        let key = SecretKey::load(&key_path)?;
        let registry = Registry::open(&data_dir.registry_path())?;
        registry.set_stranger_quotas(config.limits.strangers);
        registry.set_receipt_durability(&key, config.receipts)?;
        let blobs =
            BlobStore::open(&data_dir.blobs_path())
                .await
                .map_err(|e| OpenError::Blobs {
                    path: data_dir.blobs_path(),
                    message: e.to_string(),
                })?;
        let sandbox = Sandbox::with_compiled_cache(config.limits, &data_dir.compiled_path(), &key)
            .map_err(|e| OpenError::Engine(format!("{e:#}")))?
            .with_compiler(config.compiler);
        tracing::debug!(allocation = ?sandbox.stats().allocation, "sandbox ready");
        let trusted: Vec<PublicKey> = std::iter::once(key.public())
            .chain(config.trusted_publishers)
            .collect();
        registry.trust(trusted.iter().copied());
        Ok(Node(Arc::new(NodeInner {
            data_dir,
            trusted,
            key,
            registry,
            blobs,
            sandbox,
            models: Arc::new(config.models),
            egress: Arc::new(crate::egress::EgressPolicy::new(config.egress)),
            manifests: Default::default(),
            component_source: std::sync::RwLock::new(None),
        })))
    }

    /// The host's public key: publisher of what it publishes, signer of its receipts.
    pub fn public_key(&self) -> PublicKey {
        self.0.key.public()
    }

    /// The publishers whose releases this host runs by name: its own key, then those its
    /// operator trusts.
    pub fn trusted_publishers(&self) -> &[PublicKey] {
        &self.0.trusted
    }

    /// Sets where to fetch components this node lacks (see [`ComponentSource`]).
    pub(crate) fn set_component_source(&self, source: std::sync::Weak<dyn ComponentSource>) {
        *self
            .0
            .component_source
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(source);
    }

    fn component_source(&self) -> Option<Arc<dyn ComponentSource>> {
        self.0
            .component_source
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()?
            .upgrade()
    }

    /// The secret key's bytes, for deriving the host's network identity from the same key.
    pub(crate) fn secret_key_bytes(&self) -> [u8; 32] {
        self.0.key.to_bytes()
    }

    /// The data dir.
    pub fn data_dir(&self) -> &DataDir {
        &self.0.data_dir
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.0.blobs
    }

    /// The sandbox.
    pub fn sandbox(&self) -> &Sandbox {
        &self.0.sandbox
    }

    /// Flushes the blob store. The registry commits every write as it happens.
    pub async fn shutdown(&self) -> Result<(), crate::blobs::BlobError> {
        self.0.blobs.shutdown().await
    }

    /// Checks and compiles a component (see [`Sandbox::check`]) on the blocking pool, so a
    /// large or slow component never stalls the async executor.
    pub async fn check_component(
        &self,
        bytes: impl Into<bytes::Bytes>,
    ) -> Result<Arc<crate::sandbox::CheckedComponent>, crate::error::CheckError> {
        let node = self.clone();
        let bytes = bytes.into();
        blocking(move || node.0.sandbox.check(&bytes)).await
    }

    async fn check_hashed(
        &self,
        hash: Hash,
        bytes: impl Into<bytes::Bytes>,
    ) -> Result<Arc<crate::sandbox::CheckedComponent>, crate::error::CheckError> {
        let node = self.clone();
        let bytes = bytes.into();
        blocking(move || node.0.sandbox.check_hashed(hash, &bytes)).await
    }

    async fn load_component(
        &self,
        agent: &str,
        manifest: &SignedManifest,
    ) -> Result<Arc<crate::sandbox::CheckedComponent>, RunError> {
        let component = &manifest.body().component;
        if let Some(checked) = self.0.sandbox.cached(&component.hash) {
            return Ok(checked);
        }
        // The hash comes from this host's own registry, which stored the manifest only with a
        // component it checked: its compiled code, if cached, is all a call needs.
        let node = self.clone();
        let hash = component.hash;
        if let Some(checked) = blocking(move || node.0.sandbox.load_compiled(&hash)).await {
            return Ok(checked);
        }
        let stored = |node: Node| async move {
            node.0
                .blobs
                .get(&component.hash)
                .await
                .map_err(|e| RunError::Blobs(e.to_string()))
        };
        let bytes = match stored(self.clone()).await? {
            Some(bytes) => bytes,
            None => {
                // Known from gossip, never fetched: fetched from its publisher now, once.
                let Some(source) = self.component_source() else {
                    return Err(RunError::MissingComponent {
                        agent: agent.to_owned(),
                        hash: component.hash,
                    });
                };
                if let Err(reason) = source.fetch(manifest.clone()).await {
                    tracing::info!(%agent, %reason, "fetching the component of a called agent");
                }
                stored(self.clone())
                    .await?
                    .ok_or_else(|| RunError::MissingComponent {
                        agent: agent.to_owned(),
                        hash: component.hash,
                    })?
            }
        };
        let actual = Hash::of(&bytes);
        if actual != component.hash {
            return Err(RunError::ComponentMismatch {
                agent: agent.to_owned(),
                expected: component.hash,
                actual,
            });
        }
        // `actual` was just computed from these bytes: no need to hash them again.
        self.check_hashed(actual, bytes)
            .await
            .map_err(|source| RunError::Check {
                agent: agent.to_owned(),
                source,
            })
    }
}

/// Runs `work` on tokio's blocking pool and waits for it, passing on a panic.
async fn blocking<R: Send + 'static>(work: impl FnOnce() -> R + Send + 'static) -> R {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}
