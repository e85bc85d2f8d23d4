//! The sandbox agora runs untrusted agents in: one wasmtime engine, one linker, and a fresh
//! store for every call.
//!
//! An agent gets exactly the `agora:agent/host` interface and a locked-down WASI 0.2: no
//! preopened directories, no environment or arguments, stdout and stderr captured into bounded
//! buffers, sockets and name lookup linked (language runtimes import them) but denied on every
//! use, and outgoing HTTP handed to the host, which sends only what the agent was granted. Each call runs under fuel (deterministic metering, reported in the
//! receipt), an epoch deadline (wall clock, so a guest stuck in a loop with fuel to spare still
//! stops), a limiter that counts all memories and tables of the instance together, a bounded
//! wasm stack, and bounds on output and logs. Clocks are virtual and randomness is seeded
//! ([`CallWorld`]), so a call runs the same on every host under the same [`Profile`].
//!
//! The sandbox knows nothing of the registry or the network: what a guest's host calls reach
//! (agent memory, other agents) is behind one trait, [`HostServices`], which the host answers
//! live and a re-execution answers from a transcript ([`Replay`]). It uses the registry crate
//! only for the record types a call produces (hashes, outcomes, transcripts).
//!
//! Every knob, with its default, unit and what happens at the limit, is a field of [`Limits`].
//!
//! ```
//! use agora_sandbox::{CheckError, Limits, Sandbox};
//!
//! let sandbox = Sandbox::new(Limits::default())?;
//! // A core module is not a component: refused with a typed error before anything runs.
//! let core_module = b"\0asm\x01\0\0\0";
//! match sandbox.check(core_module) {
//!     Err(CheckError::NotAComponent(_)) => {}
//!     other => panic!("{:?}", other.map(|_| ())),
//! }
//! # Ok::<(), wasmtime::Error>(())
//! ```
//!
//! The parts: [`limits`] (every bound), [`error`] (why a component is refused), `load`
//! (checking and compiling once, the loaded agents), `compile` (the compiler, bounded in time
//! and, in a child process, in memory), `engine` (the one wasmtime configuration, pooling and
//! its fallback), `profile` (the deterministic execution profile), `cache` (compiled code on
//! disk, authenticated), `limiter` (memory and tables of one call), `environment` (virtual
//! clocks and seeded randomness), `services` (the host services a guest reaches, live or
//! replayed), `outcome` (how a call's end becomes an outcome), `host_fns` (the
//! `agora:agent/host` interface), `model_fns` (`agora:agent/model`) and `http_fns`
//! (`wasi:http/outgoing-handler`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use agora_registry::{CallEnvironment, Hash};
use wasmtime::Engine;
use wasmtime::component::Linker;

mod cache;
mod call;
pub use call::{AgentState, CallWorld, Invocation, NestedCall};
mod compile;
mod engine;
mod environment;
pub mod error;
mod host_fns;
mod http_fns;
pub use http_fns::is_credential_header;
mod limiter;
pub mod limits;
mod load;
mod model_fns;
mod outcome;
mod profile;
mod services;

pub use cache::CacheStats;
use cache::CompiledCache;
pub use compile::{Compiler, serve_compile_worker};
pub use engine::{Allocation, reset_in_place};
pub use error::CheckError;
pub use host_fns::CallState;
use host_fns::add_host_interface;
use limiter::GuestMemory;
pub use limits::{CallLimits, Limits};
pub use load::MODEL_CAPABILITY;
use load::{Compilation, Loaded};
use outcome::classify_trap;
pub use outcome::truncate;
pub use profile::{AGORA_DET_1, Feature, Profile};
pub use services::Divergence;
pub use services::{
    AgentAnswer, AgentCall, HostServices, HttpExchange, HttpRequest, ModelRequest, NoServices,
    Replay, ServiceFuture,
};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        // The widest world: every agent's imports are a subset of it.
        world: "thinking-agent",
        exports: { default: async },
    });
}

pub use bindings::agora::agent::host::LogLevel;
pub use bindings::agora::agent::types::{AgentError, AgentInfo, Request};
use bindings::{ThinkingAgent as Agent, ThinkingAgentPre as AgentPre};

/// The runtime named in receipts: fuel counts compare only under the same wasmtime.
pub const RUNTIME_VERSION: &str = "wasmtime 48.0.8";

/// How often the epoch advances; the wall-clock deadline is accurate to about this.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// How often a running guest yields to the async runtime, in fuel units.
const FUEL_YIELD_INTERVAL: u64 = 1_000_000;
/// Messages in receipts and errors are cut to this many bytes.
pub const MAX_MESSAGE_BYTES: usize = 512;
/// Longest a call waits for room in the host's memory budget before it is refused.
const HOST_MEMORY_WAIT: Duration = Duration::from_secs(1);

/// A call refused because the host's memory for all calls had no room for it.
#[derive(Debug, thiserror::Error)]
#[error("the host's memory for running calls is in use ({used} of {budget} bytes)")]
pub struct HostBusy {
    pub used: u64,
    pub budget: u64,
}

/// Bytes of names and values one `wasi:http` fields object may hold.
const HTTP_FIELDS_BYTES: usize = 8 << 10;
/// How wasmtime 48 reports a crossing over the hostcall fuel ([`Limits::max_transfer_bytes`]):
/// its error type is private, so the message is matched (a test fails if it changes).
const TRANSFER_LIMIT_MESSAGE: &str = "too much data is being copied between the host and the guest";

/// One line an agent logged through the `log` host function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// Severity.
    pub level: LogLevel,
    /// The message, truncated to the host's per-message bound.
    pub message: String,
}

/// A component that passed every check, compiled and linked, ready to instantiate. Shared
/// behind an `Arc`, so a call never copies it.
pub struct CheckedComponent {
    pre: AgentPre<AgentState>,
    /// Every interface the component imports.
    pub imports: Vec<String>,
    /// The authority-bearing interfaces among the imports (without versions), sorted.
    pub capabilities: Vec<String>,
}

impl std::fmt::Debug for CheckedComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedComponent")
            .field("imports", &self.imports)
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

/// The engine, linker and loaded agents shared by every call on a host.
///
/// Loading a component goes, fastest first: the in-memory table of loaded agents (bounded, least
/// recently used evicted); the compiled-code cache on disk (authenticated: only code this host
/// compiled is ever loaded); and
/// compiling, once per component however many callers ask at once, under
/// [`Limits::max_compile_time`] and, with [`Compiler::Process`],
/// [`Limits::max_compile_memory_bytes`]. Components that fail are remembered and refused without
/// compiling again.
pub struct Sandbox {
    engine: Engine,
    /// [`AGORA_DET_1`]'s hash, which every receipt names.
    profile_hash: Hash,
    allocation: Allocation,
    linker: Linker<AgentState>,
    limits: Limits,
    loaded: Mutex<Loaded>,
    /// Compilations in flight: later callers for the same component wait for the first.
    compiling: Mutex<HashMap<Hash, Compilation>>,
    /// Components refused, so they are not compiled again.
    refused: Mutex<HashMap<Hash, CheckError>>,
    disk: Option<CompiledCache>,
    compiler: Compiler,
    compiles: AtomicU64,
    /// Bounds top-level calls so that a call and its nested calls always find pool slots.
    slots: Option<Arc<tokio::sync::Semaphore>>,
    /// The linear memory of all running calls, against the host-wide budget.
    guest_memory: Arc<GuestMemory>,
    /// The epoch ticker holds a weak reference to this and stops once the sandbox is dropped.
    _ticker: Arc<()>,
}

/// What the sandbox did since it started, for tests and `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SandboxStats {
    /// How instances are allocated.
    pub allocation: Option<Allocation>,
    /// Components compiled by this process.
    pub compiles: u64,
    /// Agents loaded in memory now.
    pub loaded: usize,
    /// The compiled-code cache on disk, if there is one.
    pub disk: Option<CacheStats>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("limits", &self.limits)
            .field("allocation", &self.allocation)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Builds the engine and linker for `limits`, with no compiled-code cache on disk, and starts
    /// the epoch ticker that enforces wall-clock deadlines (it stops when the sandbox is dropped).
    pub fn new(limits: Limits) -> wasmtime::Result<Self> {
        Self::build(limits, None)
    }

    /// Like [`Sandbox::new`], keeping compiled code in `cache_dir`, authenticated with a key
    /// derived from `host_key` (so only what this host compiled is ever loaded).
    pub fn with_compiled_cache(
        limits: Limits,
        cache_dir: &Path,
        host_key: &agora_registry::SecretKey,
    ) -> wasmtime::Result<Self> {
        Self::build(limits, Some((cache_dir, host_key.to_bytes())))
    }

    fn build(limits: Limits, cache: Option<(&Path, [u8; 32])>) -> wasmtime::Result<Self> {
        let (engine, allocation) = engine::build(&limits)?;
        let disk = match cache {
            Some((dir, secret)) if limits.max_compiled_cache_bytes > 0 => Some(
                CompiledCache::open(
                    dir,
                    &secret,
                    engine::engine_key(&engine),
                    limits.max_compiled_cache_bytes,
                )
                .map_err(|e| wasmtime::format_err!("compiled-code cache {}: {e}", dir.display()))?,
            ),
            _ => None,
        };

        let mut linker = Linker::<AgentState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        add_host_interface(&mut linker)?;
        model_fns::add_model_interface(&mut linker)?;

        let slots = match allocation {
            Allocation::Pooling { instances } => {
                let per_call = limits.max_call_depth.saturating_add(1).max(1);
                let calls = usize::try_from(instances / per_call).unwrap_or(1).max(1);
                Some(Arc::new(tokio::sync::Semaphore::new(calls)))
            }
            Allocation::OnDemand => None,
        };
        let guest_memory = Arc::new(GuestMemory::new(limits.max_guest_memory_bytes));
        let ticker = Arc::new(());
        spawn_epoch_ticker(engine.clone(), Arc::downgrade(&ticker));
        Ok(Sandbox {
            engine,
            profile_hash: AGORA_DET_1.hash(),
            allocation,
            linker,
            loaded: Mutex::new(Loaded::new(limits.max_loaded_agents)),
            limits,
            compiling: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            guest_memory,
            disk,
            compiler: Compiler::InProcess,
            compiles: AtomicU64::new(0),
            slots,
            _ticker: ticker,
        })
    }

    /// Compiles components as `compiler` says from now on (default: in this process).
    pub fn with_compiler(mut self, compiler: Compiler) -> Self {
        self.compiler = compiler;
        self
    }

    /// The deterministic execution profile every call runs under.
    pub fn profile(&self) -> &'static Profile {
        &AGORA_DET_1
    }

    /// The hash of [`Sandbox::profile`], as receipts name it.
    pub fn profile_hash(&self) -> Hash {
        self.profile_hash
    }

    /// The host limits this sandbox enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// What the sandbox did since it started.
    pub fn stats(&self) -> SandboxStats {
        SandboxStats {
            allocation: Some(self.allocation),
            compiles: self.compiles.load(Ordering::Relaxed),
            loaded: lock(&self.loaded).len(),
            disk: self.disk.as_ref().map(CompiledCache::stats),
        }
    }

    /// Waits for a pool slot for a top-level call (see [`Limits::pooled_instances`]).
    async fn slot(&self, depth: u32) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if depth > 0 {
            return None;
        }
        let slots = self.slots.clone()?;
        slots.acquire_owned().await.ok()
    }

    /// Calls the agent's `info()` under the host's default limits, with no host services.
    pub async fn info(&self, component: &CheckedComponent) -> Result<AgentInfo, CheckError> {
        let limits = CallLimits {
            max_fuel: self.limits.default_fuel,
            max_memory_bytes: self.limits.max_memory_bytes,
            max_wall: self.limits.max_wall,
            max_output_bytes: self.limits.max_output_bytes,
        };
        let _slot = self.slot(0).await;
        // `info` must not depend on host state; it sees the same fixed world on every host.
        let world = CallWorld {
            environment: CallEnvironment {
                clock_ms: 0,
                salt: Hash::from_bytes([0; 32]),
            },
            seed: [0; 32],
        };
        let mut store = self
            .new_store(
                CallState::new(
                    "(publishing)".into(),
                    Arc::new(NoServices),
                    0,
                    &self.limits,
                    limits.max_wall,
                ),
                &limits,
                self.limits.default_fuel,
                &world,
            )
            .map_err(|e| CheckError::Info(e.to_string()))?;
        let call = async {
            let agent = component.pre.instantiate_async(&mut store).await?;
            agent.agora_agent_handler().call_info(&mut store).await
        };
        match tokio::time::timeout(limits.max_wall + Duration::from_secs(1), call).await {
            Ok(Ok(info)) => Ok(info),
            Ok(Err(e)) => Err(CheckError::Info(truncate(
                &format!("{e:#}"),
                MAX_MESSAGE_BYTES,
            ))),
            Err(_) => Err(CheckError::Info("timed out".into())),
        }
    }
}

fn spawn_epoch_ticker(engine: Engine, alive: Weak<()>) {
    let spawned = std::thread::Builder::new()
        .name("agora-epoch".into())
        .spawn(move || {
            while alive.upgrade().is_some() {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        });
    if let Err(error) = spawned {
        // Without the ticker every deadline is "never"; fuel still bounds every call.
        tracing::error!(%error, "could not start the epoch ticker; wall-clock deadlines are off");
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
