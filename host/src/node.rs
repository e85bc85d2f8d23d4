//! A host node: its identity, registry, blob store and sandbox, and the operations on them.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agora_registry::{
    AGENT_WORLD, AgentRef, ComponentRef, Hash, Inserted, KvNamespace, Manifest, ManifestLimits,
    Outcome, ParentCall, PublicKey, Receipt, Registry, SecretKey, Signed, SignedManifest,
    SignedReceipt, SignedRequest, request_hash,
};

use crate::blobs::BlobStore;
use crate::error::{ExecutionError, OpenError, PublishError, RunError};
use crate::limits::Limits;
use crate::sandbox::{LogLine, Request, Sandbox};

/// Where a host keeps its state, and how it is laid out.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// A data dir rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    /// The default: `$AGORA_DATA_DIR`, else the user's data directory (`~/.local/share/agora`).
    pub fn default_location() -> PathBuf {
        std::env::var_os("AGORA_DATA_DIR")
            .map(PathBuf::from)
            .or_else(|| dirs::data_dir().map(|d| d.join("agora")))
            .unwrap_or_else(|| PathBuf::from(".agora"))
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The secret key file (mode 0600).
    pub fn key_path(&self) -> PathBuf {
        self.root.join("keys").join("host.key")
    }

    /// The iroh-blobs store directory.
    pub fn blobs_path(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// The SQLite registry.
    pub fn registry_path(&self) -> PathBuf {
        self.root.join("registry.db")
    }

    /// The compiled-code cache (see [`Limits::max_compiled_cache_bytes`]).
    pub fn compiled_path(&self) -> PathBuf {
        self.root.join("compiled")
    }

    /// Creates the root if missing, readable only by its owner (mode 0700): it holds the secret
    /// key and agents' private memory. An existing directory keeps the mode it has.
    fn create_private(&self) -> std::io::Result<()> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            builder.mode(0o700);
        }
        builder.create(&self.root)
    }

    /// Creates a new key; fails if one exists.
    pub fn keygen(&self) -> Result<PublicKey, agora_registry::Error> {
        self.create_private()
            .map_err(|source| agora_registry::Error::KeyFile {
                path: self.key_path(),
                source,
            })?;
        let key = SecretKey::generate();
        key.write_new(&self.key_path())?;
        Ok(key.public())
    }
}

/// How to open a [`Node`].
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where state lives.
    pub data_dir: DataDir,
    /// The host's limits.
    pub limits: Limits,
    /// Publishers besides this host's own key whose agents a bare name or a component hash
    /// may resolve to (see [`Registry::resolve`](agora_registry::Registry::resolve)). Default:
    /// none, so names resolve only to this host's own releases.
    pub trusted_publishers: Vec<PublicKey>,
}

impl NodeConfig {
    /// A configuration with default limits, trusting no publisher but itself.
    pub fn new(data_dir: DataDir) -> Self {
        NodeConfig {
            data_dir,
            limits: Limits::default(),
            trusted_publishers: Vec::new(),
        }
    }

    /// Replaces the limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Lets bare names and component hashes resolve to these publishers' agents too.
    pub fn trust_publishers(mut self, publishers: impl IntoIterator<Item = PublicKey>) -> Self {
        self.trusted_publishers.extend(publishers);
        self
    }
}

/// What to put in a manifest besides what the component itself says.
#[derive(Clone, Debug, Default)]
pub struct PublishOptions {
    /// Agent name; defaults to the name from `info()`.
    pub name: Option<String>,
    /// Version; defaults to the version from `info()`.
    pub version: Option<String>,
    /// Description; defaults to the one from `info()`.
    pub description: Option<String>,
    /// Limits; default to this host's.
    pub limits: Option<ManifestLimits>,
    /// Price per million fuel.
    pub price_per_mfuel: u64,
}

/// The result of publishing.
#[derive(Clone, Debug)]
pub struct Published {
    /// The signed manifest.
    pub manifest: SignedManifest,
    /// Whether the release is new (or the same release was already published).
    pub inserted: Inserted,
}

/// The result of one call: the output or the typed reason there is none, and the signed receipt.
#[derive(Clone, Debug)]
pub struct Execution {
    /// The agent, `name@version`.
    pub agent: String,
    /// The agent's manifest.
    pub manifest: Hash,
    /// How the call ended.
    pub outcome: Outcome,
    /// The output, when the outcome is `ok`.
    pub output: Option<Vec<u8>>,
    /// The fuel budget.
    pub fuel_limit: u64,
    /// Fuel used, nested calls included.
    pub fuel_used: u64,
    /// The charge, nested calls included.
    pub charge: u64,
    /// Wall time.
    pub wall_time: Duration,
    /// Lines logged through `log`.
    pub logs: Vec<LogLine>,
    /// Captured stdout (bounded).
    pub stdout: Vec<u8>,
    /// Captured stderr (bounded).
    pub stderr: Vec<u8>,
    /// The host's signed receipt.
    pub receipt: SignedReceipt,
    error: Option<ExecutionError>,
}

impl Execution {
    /// Why there is no output, or `None` if the call succeeded.
    pub fn error(&self) -> Option<&ExecutionError> {
        self.error.as_ref()
    }

    /// The output, or the typed error naming the agent and the limit it hit.
    pub fn into_output(self) -> Result<Vec<u8>, ExecutionError> {
        match (self.error, self.output) {
            (None, Some(output)) => Ok(output),
            (Some(error), _) => Err(error),
            (None, None) => Err(ExecutionError::Trap {
                agent: self.agent,
                message: "no output".into(),
            }),
        }
    }
}

/// Host services available to a running agent: its memory and `call-agent`.
#[derive(Clone)]
pub(crate) struct CallServices {
    pub node: Node,
    pub kv: KvNamespace,
    pub manifest: Hash,
}

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
    /// Manifests looked up by hash, so a warm call reads nothing from the registry. Manifests
    /// are immutable; bounded like the loaded agents.
    manifests: std::sync::Mutex<std::collections::HashMap<Hash, SignedManifest>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("data_dir", &self.0.data_dir.root)
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
        let blobs =
            BlobStore::open(&data_dir.blobs_path())
                .await
                .map_err(|e| OpenError::Blobs {
                    path: data_dir.blobs_path(),
                    message: e.to_string(),
                })?;
        let sandbox = Sandbox::with_compiled_cache(config.limits, &data_dir.compiled_path(), &key)
            .map_err(|e| OpenError::Engine(format!("{e:#}")))?;
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
            manifests: Default::default(),
        })))
    }

    /// The host's public key: publisher of what it publishes, signer of its receipts.
    pub fn public_key(&self) -> PublicKey {
        self.0.key.public()
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

    /// Publishes the component in `path`; see [`Node::publish`].
    pub async fn publish_file(
        &self,
        path: &Path,
        options: PublishOptions,
    ) -> Result<Published, PublishError> {
        let limit = self.0.sandbox.limits().max_component_bytes;
        let size = std::fs::metadata(path)
            .map_err(|source| PublishError::Read {
                path: path.to_owned(),
                source,
            })?
            .len();
        if size > limit {
            return Err(crate::error::CheckError::TooLarge { size, limit }.into());
        }
        let bytes = std::fs::read(path).map_err(|source| PublishError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.publish(&bytes, options).await
    }

    /// Checks a component, signs a manifest for it with this node's key, and stores both.
    pub async fn publish(
        &self,
        component: &[u8],
        options: PublishOptions,
    ) -> Result<Published, PublishError> {
        let hash = Hash::of(component);
        let checked = self.check_hashed(hash, component.to_vec()).await?;
        let info = self.0.sandbox.info(&checked).await?;
        let limits = options
            .limits
            .unwrap_or_else(|| self.0.sandbox.limits().manifest_defaults());
        let manifest = Manifest {
            name: options.name.unwrap_or(info.name),
            version: options.version.unwrap_or(info.version),
            publisher: self.public_key(),
            component: ComponentRef {
                hash,
                size: component.len() as u64,
            },
            world: AGENT_WORLD.into(),
            actions: info.actions,
            capabilities: checked.capabilities.clone(),
            limits,
            price_per_mfuel: options.price_per_mfuel,
            description: options.description.unwrap_or(info.description),
            created_at: unix_now().as_secs(),
        };
        // `info()` is untrusted output and options come from the operator: the same rules
        // every peer applies to a manifest it receives.
        manifest
            .check(unix_now().as_millis() as u64)
            .map_err(|e| match e {
                agora_registry::Error::Invalid { reason, .. } => {
                    PublishError::InvalidManifest(reason)
                }
                other => PublishError::Registry(other),
            })?;
        // Re-publishing a release returns it; a release is never signed twice, since two
        // manifests for one release are evidence against their publisher.
        if let Some(existing) =
            self.0
                .registry
                .release(&manifest.publisher, &manifest.name, &manifest.version)?
        {
            if existing.body().component.hash != hash {
                return Err(PublishError::Registry(
                    agora_registry::Error::ReleaseConflict {
                        name: manifest.name,
                        version: manifest.version,
                        publisher: manifest.publisher,
                        existing: existing.hash().to_hex(),
                    },
                ));
            }
            return Ok(Published {
                manifest: existing,
                inserted: Inserted::AlreadyPresent,
            });
        }
        let manifest = Signed::sign(manifest, &self.0.key)?;
        // Blobs first: a manifest in the registry must always have its component available.
        let stored = self
            .0
            .blobs
            .put(component.to_vec())
            .await
            .map_err(|e| PublishError::Blobs(e.to_string()))?;
        debug_assert_eq!(stored, hash);
        let inserted = self.0.registry.insert_manifest(&manifest)?;
        let manifest = match inserted {
            Inserted::New => {
                self.0
                    .blobs
                    .put(manifest.as_bytes().to_vec())
                    .await
                    .map_err(|e| PublishError::Blobs(e.to_string()))?;
                manifest
            }
            // Another process published the same manifest meanwhile.
            Inserted::AlreadyPresent | Inserted::Pending => manifest,
        };
        tracing::info!(
            agent = %manifest.body().name,
            version = %manifest.body().version,
            manifest = %manifest.hash(),
            component = %hash,
            "published"
        );
        Ok(Published { manifest, inserted })
    }

    /// The manifest an agent reference names: a manifest hash, `<publisher>/<name>[@<version>]`,
    /// or a bare name or component hash of this host's own or a trusted publisher's release.
    pub fn resolve(&self, reference: &str) -> Result<SignedManifest, agora_registry::Error> {
        let by_hash = reference.parse::<Hash>().ok();
        if let Some(hash) = &by_hash
            && let Some(manifest) = self.cached_manifest(hash)
        {
            return Ok(manifest);
        }
        let manifest = self.0.registry.resolve(reference, &self.0.trusted)?;
        if by_hash == Some(manifest.hash()) {
            self.cache_manifest(&manifest);
        }
        Ok(manifest)
    }

    /// [`Node::resolve`] for the call paths: from memory when cached, otherwise from the
    /// registry on the blocking pool, so that a cold lookup never stalls the executor.
    async fn resolve_async(
        &self,
        reference: &str,
    ) -> Result<SignedManifest, agora_registry::Error> {
        if let Ok(hash) = reference.parse::<Hash>()
            && let Some(manifest) = self.cached_manifest(&hash)
        {
            return Ok(manifest);
        }
        let (node, reference) = (self.clone(), reference.to_owned());
        blocking(move || node.resolve(&reference)).await
    }

    /// [`Node::manifest`] on the blocking pool when not cached.
    async fn manifest_async(
        &self,
        hash: &Hash,
    ) -> Result<Option<SignedManifest>, agora_registry::Error> {
        if let Some(manifest) = self.cached_manifest(hash) {
            return Ok(Some(manifest));
        }
        let (node, hash) = (self.clone(), *hash);
        blocking(move || node.manifest(&hash)).await
    }

    /// The manifest with this hash, from memory or the registry.
    fn manifest(&self, hash: &Hash) -> Result<Option<SignedManifest>, agora_registry::Error> {
        if let Some(manifest) = self.cached_manifest(hash) {
            return Ok(Some(manifest));
        }
        let manifest = self.0.registry.manifest(hash)?;
        if let Some(manifest) = &manifest {
            self.cache_manifest(manifest);
        }
        Ok(manifest)
    }

    fn cached_manifest(&self, hash: &Hash) -> Option<SignedManifest> {
        let cache = self.0.manifests.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(hash).cloned()
    }

    fn cache_manifest(&self, manifest: &SignedManifest) {
        let mut cache = self.0.manifests.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.0.sandbox.limits().max_loaded_agents.max(1) {
            cache.clear();
        }
        cache.insert(manifest.hash(), manifest.clone());
    }

    /// Runs `action` on the agent named by `agent` (see [`Node::resolve`]) with a fuel budget (default: the host's default, capped by the
    /// manifest's limit), and signs a receipt. Guest failures are outcomes in the returned
    /// [`Execution`], not errors.
    pub async fn run(
        &self,
        agent: &str,
        action: &str,
        payload: &[u8],
        fuel: Option<u64>,
    ) -> Result<Execution, RunError> {
        let manifest = self.resolve_async(agent).await?;
        let request = Request {
            action: action.to_owned(),
            payload: payload.to_vec(),
        };
        let wall = self.0.sandbox.limits().max_wall;
        self.execute(manifest, request, fuel, Instant::now() + wall, None, None)
            .await
    }

    /// Runs a caller-signed request: the payload must match the request's input hash, and the
    /// request must be addressed to this host, unexpired and not seen before. The receipt names
    /// the request and its caller, so the caller can rate the call.
    pub async fn run_request(
        &self,
        request: &SignedRequest,
        action: &str,
        payload: &[u8],
    ) -> Result<Execution, RunError> {
        let body = request.body();
        if request_hash(action, payload) != body.input_hash {
            return Err(RunError::InputMismatch {
                request: request.hash(),
            });
        }
        // A request for an agent this host does not have is refused before anything is stored.
        let manifest = self.manifest_async(&body.agent).await?.ok_or_else(|| {
            RunError::Registry(agora_registry::Error::UnknownAgent {
                reference: body.agent.to_hex(),
            })
        })?;
        self.0
            .registry
            .admit_request_async(request, &self.public_key(), unix_now().as_millis() as u64)
            .await?;
        let call = Request {
            action: action.to_owned(),
            payload: payload.to_vec(),
        };
        let wall = self.0.sandbox.limits().max_wall;
        self.execute(
            manifest,
            call,
            Some(body.fuel_limit),
            Instant::now() + wall,
            None,
            Some((request.hash(), body.caller)),
        )
        .await
    }

    /// A nested call from `call-agent`. Boxed because it recurses through the sandbox.
    pub(crate) fn run_nested(
        &self,
        agent: String,
        request: Request,
        fuel_available: u64,
        deadline: Instant,
        parent_manifest: Hash,
        depth: u32,
    ) -> Pin<Box<dyn Future<Output = Result<Execution, RunError>> + Send + 'static>> {
        let node = self.clone();
        Box::pin(async move {
            let manifest = node.resolve_async(&agent).await?;
            let parent = ParentCall {
                manifest: parent_manifest,
                depth,
            };
            node.execute(
                manifest,
                request,
                Some(fuel_available),
                deadline,
                Some(parent),
                None,
            )
            .await
        })
    }

    async fn execute(
        &self,
        manifest: SignedManifest,
        request: Request,
        fuel: Option<u64>,
        deadline: Instant,
        parent: Option<ParentCall>,
        signed_request: Option<(Hash, PublicKey)>,
    ) -> Result<Execution, RunError> {
        let body = manifest.body();
        let agent = format!("{}@{}", body.name, body.version);
        let component = self.load_component(&agent, &body.component).await?;
        let limits = self.0.sandbox.limits().for_call(&body.limits);
        let fuel_limit = fuel
            .unwrap_or(self.0.sandbox.limits().default_fuel)
            .min(limits.max_fuel);
        let wall = limits
            .max_wall
            .min(deadline.saturating_duration_since(Instant::now()));
        let services = CallServices {
            node: self.clone(),
            kv: KvNamespace {
                publisher: body.publisher,
                agent: body.name.clone(),
            },
            manifest: manifest.hash(),
        };
        let depth = parent.map_or(0, |p| p.depth);
        let call = self
            .0
            .sandbox
            .call_state(agent.clone(), Some(services), depth, wall);
        let invocation = self
            .0
            .sandbox
            .invoke(&component, call, &limits, fuel_limit, &request)
            .await
            .map_err(|e| match e.downcast_ref::<crate::sandbox::HostBusy>() {
                Some(busy) => RunError::HostBusy {
                    agent: agent.clone(),
                    reason: busy.to_string(),
                },
                None => RunError::Sandbox {
                    agent: agent.clone(),
                    message: format!("{e:#}"),
                },
            })?;

        // Saturating: the figures come from nested receipts and must not overflow into a panic.
        let nested_fuel =
            (invocation.nested.iter()).fold(0u64, |sum, n| sum.saturating_add(n.fuel_used));
        let nested_charge =
            (invocation.nested.iter()).fold(0u64, |sum, n| sum.saturating_add(n.charge));
        let own_fuel = invocation.fuel_used.saturating_sub(nested_fuel);
        let charge = agora_registry::rules::charge_for(own_fuel, body.price_per_mfuel)
            .saturating_add(nested_charge);
        let input_hash = request_hash(&request.action, &request.payload);
        let output_hash = invocation.output.as_deref().map(Hash::of);
        let receipt = Receipt {
            agent: AgentRef {
                manifest: manifest.hash(),
                component: body.component.hash,
            },
            request: signed_request.map(|(hash, _)| hash),
            caller: signed_request.map(|(_, caller)| caller),
            input_hash,
            output_hash,
            outcome: invocation.outcome.clone(),
            fuel_limit,
            fuel_used: invocation.fuel_used,
            charge,
            wall_time_us: invocation.wall_time.as_micros() as u64,
            nested: invocation.nested.iter().map(|n| n.receipt).collect(),
            parent_call: parent,
            host: self.0.key.public(),
            runtime: crate::RUNTIME_VERSION.into(),
            // The registry sets these to follow the chain.
            seq: 0,
            prev: None,
            timestamp_ms: unix_now().as_millis() as u64,
            limits: Some(agora_registry::CallLimits {
                memory_bytes: limits.max_memory_bytes,
                wall_ms: u64::try_from(limits.max_wall.as_millis()).unwrap_or(u64::MAX),
                output_bytes: limits.max_output_bytes,
            }),
        };
        // Signed and committed on the registry's writer thread, which wakes this task.
        let receipt = self
            .0
            .registry
            .append_receipt_async(&self.0.key, receipt)
            .await?;
        tracing::debug!(
            agent = %agent,
            outcome = %invocation.outcome,
            fuel = invocation.fuel_used,
            receipt = %receipt.hash(),
            "executed"
        );
        let error = ExecutionError::from_outcome(
            &invocation.outcome,
            agent.clone(),
            fuel_limit,
            &limits,
            self.0.sandbox.limits().max_log_bytes,
        );
        Ok(Execution {
            agent,
            manifest: manifest.hash(),
            outcome: invocation.outcome,
            output: invocation.output,
            fuel_limit,
            fuel_used: invocation.fuel_used,
            charge,
            wall_time: invocation.wall_time,
            logs: invocation.logs,
            stdout: invocation.stdout,
            stderr: invocation.stderr,
            receipt,
            error,
        })
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
        component: &ComponentRef,
    ) -> Result<Arc<crate::sandbox::CheckedComponent>, RunError> {
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
        let bytes = self
            .0
            .blobs
            .get(&component.hash)
            .await
            .map_err(|e| RunError::Blobs(e.to_string()))?
            .ok_or_else(|| RunError::MissingComponent {
                agent: agent.to_owned(),
                hash: component.hash,
            })?;
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
