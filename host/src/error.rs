//! Typed errors of the host.

use std::path::PathBuf;

use agora_registry::{Hash, Outcome};

pub use agora_sandbox::CheckError;

/// A call that ran and did not produce output. Each names the agent and, for limits, the limit.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ExecutionError {
    /// The agent declined with one of its own errors.
    #[error("agent {agent} returned {error}: {message}")]
    Agent {
        /// The agent (`name@version`).
        agent: String,
        /// `bad-request`, `refused` or `internal`.
        error: String,
        /// The agent's message.
        message: String,
    },
    /// The guest trapped.
    #[error("agent {agent} trapped ({code}): {message}")]
    Trap {
        /// The agent.
        agent: String,
        /// Which trap.
        code: agora_registry::TrapCode,
        /// What wasmtime reported.
        message: String,
    },
    /// The guest's stack ran out (see [`Limits::max_wasm_stack`](crate::Limits::max_wasm_stack)).
    #[error("agent {agent} ran out of stack")]
    StackOverflow {
        /// The agent.
        agent: String,
    },
    /// The fuel budget ran out.
    #[error("agent {agent} ran out of fuel (limit {limit})")]
    FuelExhausted {
        /// The agent.
        agent: String,
        /// The budget.
        limit: u64,
    },
    /// The wall-clock deadline passed.
    #[error("agent {agent} timed out after {limit_ms} ms")]
    Timeout {
        /// The agent.
        agent: String,
        /// The deadline, in milliseconds.
        limit_ms: u64,
    },
    /// Memory (or tables or instances) beyond the limit.
    #[error("agent {agent} exceeded the memory limit of {limit_bytes} bytes")]
    MemoryLimit {
        /// The agent.
        agent: String,
        /// The limit.
        limit_bytes: u64,
    },
    /// Output beyond the limit.
    #[error("agent {agent} returned more than the output limit of {limit_bytes} bytes")]
    OutputLimit {
        /// The agent.
        agent: String,
        /// The limit.
        limit_bytes: u64,
    },
    /// Logging beyond the limit.
    #[error("agent {agent} logged more than the limit of {limit_bytes} bytes")]
    LogLimit {
        /// The agent.
        agent: String,
        /// The limit.
        limit_bytes: u64,
    },
    /// The host's memory for all running calls ran out while the agent grew within its own
    /// limit: the host was overloaded, the agent did nothing wrong.
    #[error("agent {agent} stopped: this host's memory for running calls ran out")]
    HostMemory {
        /// The agent.
        agent: String,
    },
}

/// A call that could not be started, or whose result could not be recorded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The registry failed or has no such agent.
    #[error(transparent)]
    Registry(#[from] agora_registry::Error),
    /// The component is not in the blob store.
    #[error("component {hash} of agent {agent} is not in this host's blob store")]
    MissingComponent {
        /// The agent.
        agent: String,
        /// The component hash.
        hash: Hash,
    },
    /// The stored component does not hash to what the manifest names.
    #[error("component of agent {agent} hashes to {actual}, but its manifest names {expected}")]
    ComponentMismatch {
        /// The agent.
        agent: String,
        /// What the manifest names.
        expected: Hash,
        /// What the bytes hash to.
        actual: Hash,
    },
    /// The stored component no longer passes the checks (e.g. this host's limits changed).
    #[error("agent {agent}: {source}")]
    Check {
        /// The agent.
        agent: String,
        /// Why.
        source: CheckError,
    },
    /// The payload is not the one the caller signed.
    #[error("payload and action do not match the input hash of signed request {request}")]
    InputMismatch {
        /// The request.
        request: Hash,
    },
    /// The blob store failed.
    #[error("blob store: {0}")]
    Blobs(String),
    /// The host had no memory free for another call: try again shortly, with a new request.
    #[error("agent {agent} not started: {reason}")]
    HostBusy {
        /// The agent.
        agent: String,
        /// How much memory is in use.
        reason: String,
    },
    /// Setting up the sandbox failed (not the guest's fault).
    #[error("sandbox setup for agent {agent}: {message}")]
    Sandbox {
        /// The agent.
        agent: String,
        /// What failed.
        message: String,
    },
}

/// Publishing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The component was refused.
    #[error(transparent)]
    Check(#[from] CheckError),
    /// The manifest fields are not acceptable.
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    /// The component imports `agora:agent/model` but the release declares no model to call.
    #[error(
        "the component imports agora:agent/model but declares no model; name each model it calls \
         and its tokens per call (`--model NAME:TOKENS`)"
    )]
    UndeclaredModels,
    /// The registry refused the manifest (e.g. the release already exists with other code).
    #[error(transparent)]
    Registry(#[from] agora_registry::Error),
    /// The blob store failed.
    #[error("blob store: {0}")]
    Blobs(String),
    /// The component file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Opening a host's data dir failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// No key yet.
    #[error("no key in {}; run `agora keygen` first", path.display())]
    NoKey {
        /// Where the key was expected.
        path: PathBuf,
    },
    /// The key or registry could not be opened.
    #[error(transparent)]
    Registry(#[from] agora_registry::Error),
    /// The blob store could not be opened.
    #[error("blob store at {}: {message}", path.display())]
    Blobs {
        /// The store directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The data dir could not be created.
    #[error("data dir {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The wasmtime engine could not be configured.
    #[error("wasmtime engine: {0}")]
    Engine(String),
}

impl ExecutionError {
    /// The typed error for a non-`ok` outcome, or `None` for `ok`.
    pub(crate) fn from_outcome(
        outcome: &Outcome,
        agent: String,
        fuel_limit: u64,
        limits: &crate::sandbox::CallLimits,
        log_limit: usize,
    ) -> Option<Self> {
        Some(match outcome {
            Outcome::Ok => return None,
            Outcome::AgentError { error, message } => ExecutionError::Agent {
                agent,
                error: error.clone(),
                message: message.clone(),
            },
            Outcome::Trap { code, message } => ExecutionError::Trap {
                agent,
                code: code.unwrap_or(agora_registry::TrapCode::Other),
                message: message.clone(),
            },
            Outcome::StackOverflow => ExecutionError::StackOverflow { agent },
            Outcome::FuelExhausted => ExecutionError::FuelExhausted {
                agent,
                limit: fuel_limit,
            },
            Outcome::Timeout => ExecutionError::Timeout {
                agent,
                limit_ms: limits.max_wall.as_millis() as u64,
            },
            Outcome::MemoryLimit => ExecutionError::MemoryLimit {
                agent,
                limit_bytes: limits.max_memory_bytes,
            },
            Outcome::OutputLimit => ExecutionError::OutputLimit {
                agent,
                limit_bytes: limits.max_output_bytes,
            },
            Outcome::LogLimit => ExecutionError::LogLimit {
                agent,
                limit_bytes: log_limit as u64,
            },
            Outcome::HostMemory => ExecutionError::HostMemory { agent },
        })
    }
}
