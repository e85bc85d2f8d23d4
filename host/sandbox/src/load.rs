//! Loading components: checked and compiled once, kept in memory (bounded) and on disk.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use agora_registry::Hash;
use wasmtime::component::Component;

use super::bindings::ThinkingAgentPre as AgentPre;
use super::{CheckedComponent, Sandbox, lock, truncate};
use crate::error::CheckError;

/// The WASI 0.2 packages a component may import. Anything else (besides agora:agent) is refused.
const WASI_PACKAGES: &[&str] = &[
    "wasi:cli",
    "wasi:clocks",
    "wasi:filesystem",
    "wasi:http",
    "wasi:io",
    "wasi:random",
    "wasi:sockets",
];

/// Interfaces whose use carries authority beyond computing. They are linked so that agents built
/// by runtimes that import them unconditionally still run, but every use is denied; the manifest
/// records which of them a component imports.
const AUTHORITY_PACKAGES: &[&str] = &["wasi:filesystem", "wasi:sockets", "wasi:http"];

/// The interface through which an agent calls the host's language models: a capability, which
/// the agent's manifest must declare models for.
pub const MODEL_CAPABILITY: &str = "agora:agent/model";

/// One component's compilation: whoever comes first compiles, the rest wait for its result.
pub(super) type Compilation = Arc<OnceLock<Result<Arc<CheckedComponent>, CheckError>>>;

/// Most refused components remembered; past it the memory starts again.
const MAX_REFUSED: usize = 10_000;

/// Loaded agents, least recently used first out.
pub(super) struct Loaded {
    agents: HashMap<Hash, (Arc<CheckedComponent>, u64)>,
    clock: u64,
    capacity: usize,
}

impl Loaded {
    pub(super) fn new(capacity: usize) -> Self {
        Loaded {
            agents: HashMap::new(),
            clock: 0,
            capacity,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.agents.len()
    }

    fn get(&mut self, hash: &Hash) -> Option<Arc<CheckedComponent>> {
        self.clock += 1;
        let clock = self.clock;
        self.agents.get_mut(hash).map(|(agent, used)| {
            *used = clock;
            agent.clone()
        })
    }

    fn insert(&mut self, hash: Hash, agent: Arc<CheckedComponent>) {
        if self.capacity == 0 {
            return;
        }
        if self.agents.len() >= self.capacity && !self.agents.contains_key(&hash) {
            // Linear in the table, and only when a new agent is loaded into a full one.
            if let Some(oldest) = self
                .agents
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(hash, _)| *hash)
            {
                self.agents.remove(&oldest);
            }
        }
        self.clock += 1;
        self.agents.insert(hash, (agent, self.clock));
    }
}

impl Sandbox {
    /// Checks untrusted component bytes: size cap, a valid component, imports only from
    /// `agora:agent` and WASI 0.2, an `agora:agent/handler` export, and linking against this
    /// host. Compiles once per content hash (or loads this host's own compiled code from disk).
    ///
    /// This may take seconds for a large component: call it off the async executor.
    pub fn check(&self, bytes: &[u8]) -> Result<Arc<CheckedComponent>, CheckError> {
        self.within_size(bytes)?;
        // Everything is keyed by the hash of the bytes themselves, never by a hash someone claims.
        self.check_hashed(Hash::of(bytes), bytes)
    }

    /// [`Sandbox::check`] for bytes whose hash the caller has just computed itself.
    pub fn check_hashed(
        &self,
        hash: Hash,
        bytes: &[u8],
    ) -> Result<Arc<CheckedComponent>, CheckError> {
        self.within_size(bytes)?;
        if let Some(checked) = self.cached(&hash) {
            return Ok(checked);
        }
        if let Some(refused) = lock(&self.refused).get(&hash) {
            return Err(refused.clone());
        }
        let cell = lock(&self.compiling).entry(hash).or_default().clone();
        let result = cell
            .get_or_init(|| {
                let result = self.load_or_compile(&hash, bytes);
                match &result {
                    Ok(checked) => lock(&self.loaded).insert(hash, checked.clone()),
                    Err(error) => {
                        let mut refused = lock(&self.refused);
                        if refused.len() >= MAX_REFUSED {
                            refused.clear();
                        }
                        refused.insert(hash, error.clone());
                    }
                }
                result
            })
            .clone();
        lock(&self.compiling).remove(&hash);
        result
    }

    fn within_size(&self, bytes: &[u8]) -> Result<(), CheckError> {
        let size = bytes.len() as u64;
        if size > self.limits.max_component_bytes {
            return Err(CheckError::TooLarge {
                size,
                limit: self.limits.max_component_bytes,
            });
        }
        Ok(())
    }

    /// A component already loaded, in memory or from this host's compiled-code cache on disk,
    /// without its bytes: `hash` must be the hash of bytes this host checked before (a manifest's
    /// component hash from its own registry). `None` if it has to be checked from its bytes.
    ///
    /// Reading the disk cache takes milliseconds for a large component: call it off the async
    /// executor unless [`Sandbox::cached`] already answered.
    pub fn load_compiled(&self, hash: &Hash) -> Option<Arc<CheckedComponent>> {
        if let Some(checked) = self.cached(hash) {
            return Some(checked);
        }
        let checked = Arc::new(self.load_from_disk(hash)?);
        lock(&self.loaded).insert(*hash, checked.clone());
        Some(checked)
    }

    /// A component loaded in memory, if any.
    pub fn cached(&self, hash: &Hash) -> Option<Arc<CheckedComponent>> {
        lock(&self.loaded).get(hash)
    }

    /// The component's compiled code from disk, checked again (imports, exports, linking: cheap
    /// next to compiling, and a changed host must not run what it no longer links).
    fn load_from_disk(&self, hash: &Hash) -> Option<CheckedComponent> {
        let disk = self.disk.as_ref()?;
        let artifact = disk.load(hash)?;
        // SAFETY: the entry's tag verified, so these are bytes this host's engine configuration
        // produced from the component with this hash (see `cache`); nobody else can make a tag.
        let component = match unsafe { Component::deserialize(&self.engine, &artifact) } {
            Ok(component) => component,
            Err(error) => {
                disk.reject_component(hash, &format!("{error:#}"));
                return None;
            }
        };
        match self.link(&component) {
            Ok(checked) => Some(checked),
            Err(error) => {
                disk.reject_component(hash, &error.to_string());
                None
            }
        }
    }

    fn load_or_compile(
        &self,
        hash: &Hash,
        bytes: &[u8],
    ) -> Result<Arc<CheckedComponent>, CheckError> {
        match bytes.get(..8) {
            Some([0, b'a', b's', b'm', 0x0d, 0, 1, 0]) => {}
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {
                return Err(CheckError::NotAComponent(
                    "this is a core WebAssembly module".into(),
                ));
            }
            _ => {
                return Err(CheckError::NotAComponent(
                    "missing the component header".into(),
                ));
            }
        }
        if let Some(checked) = self.load_from_disk(hash) {
            return Ok(Arc::new(checked));
        }
        let artifact = self.compile(bytes)?;
        // SAFETY: `artifact` was just produced by this engine from `bytes`.
        let component = unsafe { Component::deserialize(&self.engine, &artifact) }
            .map_err(|e| CheckError::Invalid(truncate(&format!("{e:#}"), 2048)))?;
        let checked = self.link(&component)?;
        // Only components that pass every check take space on disk.
        if let Some(disk) = &self.disk {
            disk.store(hash, &artifact);
        }
        Ok(Arc::new(checked))
    }

    fn compile(&self, bytes: &[u8]) -> Result<Vec<u8>, CheckError> {
        self.compiles.fetch_add(1, Ordering::Relaxed);
        super::compile::compile(&self.engine, &self.compiler, &self.limits, bytes)
    }

    /// Checks a compiled component's imports and exports and links it against this host.
    fn link(&self, component: &Component) -> Result<CheckedComponent, CheckError> {
        let ty = component.component_type();

        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let forbidden: Vec<String> = imports
            .iter()
            .filter(|name| !import_allowed(name))
            .cloned()
            .collect();
        if !forbidden.is_empty() {
            return Err(CheckError::ForbiddenImports { imports: forbidden });
        }
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        if !exports
            .iter()
            .any(|name| name.starts_with("agora:agent/handler@0.1."))
        {
            return Err(CheckError::MissingHandler { exports });
        }
        let pre = self
            .linker
            .instantiate_pre(component)
            .and_then(AgentPre::new)
            .map_err(|e| CheckError::Link(truncate(&format!("{e:#}"), 2048)))?;

        let mut capabilities: Vec<String> = imports
            .iter()
            .filter_map(|name| {
                let interface = name.split('@').next().unwrap_or(name);
                let package = interface.split('/').next().unwrap_or(interface);
                (AUTHORITY_PACKAGES.contains(&package) || interface == MODEL_CAPABILITY)
                    .then(|| interface.to_owned())
            })
            .collect();
        capabilities.sort();
        capabilities.dedup();

        Ok(CheckedComponent {
            pre,
            imports,
            capabilities,
        })
    }
}

fn import_allowed(name: &str) -> bool {
    let Some((interface, version)) = name.split_once('@') else {
        return false;
    };
    let Some((package, _)) = interface.split_once('/') else {
        return false;
    };
    (package == "agora:agent" && version.starts_with("0.1."))
        || (WASI_PACKAGES.contains(&package) && version.starts_with("0.2."))
}
