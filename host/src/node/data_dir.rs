//! Where a host keeps its state, and how a [`Node`](super::Node) is opened on it.

use std::path::{Path, PathBuf};

use agora_registry::{PublicKey, SecretKey};

use crate::sandbox::Compiler;
use crate::sandbox::Limits;

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

    /// The peers this host remembers across restarts (see [`crate::net::Network`]).
    pub fn peers_path(&self) -> PathBuf {
        self.root.join("peers.json")
    }

    /// The compiled-code cache (see [`Limits::max_compiled_cache_bytes`]).
    pub fn compiled_path(&self) -> PathBuf {
        self.root.join("compiled")
    }

    /// Where imported embedded models live: `models/<name>.gguf`, which `agora host
    /// --offer-model <name>` runs in process.
    pub fn models_path(&self) -> PathBuf {
        self.root.join("models")
    }

    /// Creates the root if missing, readable only by its owner (mode 0700): it holds the secret
    /// key and agents' private memory. An existing directory keeps the mode it has.
    pub(super) fn create_private(&self) -> std::io::Result<()> {
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

/// How to open a [`Node`](crate::Node).
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
    /// Where components are compiled. Default: in this process (see [`Compiler`]); the `agora`
    /// command compiles in a child process of itself, bounded in memory.
    pub compiler: Compiler,
    /// The language models this host offers its agents. Default: none.
    pub models: crate::model::ModelConfig,
    /// Where agents' outbound HTTP may go. Default: nowhere.
    pub egress: crate::egress::EgressConfig,
    /// When a call's receipt is handed out: once committed (the default), or as soon as it is
    /// signed, committed in the writer's next group commit (see
    /// [`ReceiptDurability`](agora_registry::ReceiptDurability) for what each promises a
    /// caller after a crash).
    pub receipts: agora_registry::ReceiptDurability,
}

impl NodeConfig {
    /// A configuration with default limits, trusting no publisher but itself.
    pub fn new(data_dir: DataDir) -> Self {
        NodeConfig {
            data_dir,
            limits: Limits::default(),
            trusted_publishers: Vec::new(),
            compiler: Compiler::InProcess,
            models: crate::model::ModelConfig::default(),
            egress: crate::egress::EgressConfig::default(),
            receipts: agora_registry::ReceiptDurability::default(),
        }
    }

    /// Replaces the limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Offers these language models to the agents that declare them.
    pub fn models(mut self, models: crate::model::ModelConfig) -> Self {
        self.models = models;
        self
    }

    /// Lets agents send outbound HTTP where `egress` allows.
    pub fn egress(mut self, egress: crate::egress::EgressConfig) -> Self {
        self.egress = egress;
        self
    }

    /// Hands out receipts as `receipts` says.
    pub fn receipts(mut self, receipts: agora_registry::ReceiptDurability) -> Self {
        self.receipts = receipts;
        self
    }

    /// Compiles components as `compiler` says.
    pub fn compiler(mut self, compiler: Compiler) -> Self {
        self.compiler = compiler;
        self
    }

    /// Lets bare names and component hashes resolve to these publishers' agents too.
    pub fn trust_publishers(mut self, publishers: impl IntoIterator<Item = PublicKey>) -> Self {
        self.trusted_publishers.extend(publishers);
        self
    }
}
