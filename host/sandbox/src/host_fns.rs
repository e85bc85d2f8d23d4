//! The `agora:agent/host` interface an agent imports, and the per-call state it works on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agora_registry::transcript::MAX_TRANSCRIPT_BYTES;
use agora_registry::{CallAnswer, Hash, HostCall, Transcript, request_hash};
use wasmtime::StoreContextMut;
use wasmtime::component::Linker;

use super::services::{AgentCall, Divergence, HostServices};
use super::{AgentError, AgentState, LogLevel, LogLine, NestedCall, Request, truncate};
use crate::limits::Limits;

/// What one logged line costs against the log budget besides its message, in bytes: about the
/// host memory a kept line takes (a `LogLine` and its allocation).
pub const LOG_LINE_OVERHEAD: usize = 64;

/// Fuel every host call costs, whatever it moves: a host call does microseconds of host work,
/// where a unit of fuel is about one wasm instruction. Part of what a receipt's fuel means, so
/// fixed, not configurable: the same call costs the same fuel on every host.
pub const HOST_CALL_FUEL: u64 = 1_000;
/// Fuel per byte a host call moves between guest and host, both ways (a log message, a kv key
/// and value, a `call-agent` payload and its answer): a guest that shuttles data through the
/// host pays for the host's work in proportion.
pub const HOST_FUEL_PER_BYTE: u64 = 1;

/// Takes what a host call moving `bytes` costs out of the call's fuel; with too little left the
/// call ends `fuel-exhausted`, as if the guest had spent it itself.
pub(super) fn charge(
    store: &mut StoreContextMut<'_, AgentState>,
    bytes: usize,
) -> wasmtime::Result<()> {
    let cost = HOST_CALL_FUEL.saturating_add((bytes as u64).saturating_mul(HOST_FUEL_PER_BYTE));
    let left = store.get_fuel()?;
    if left < cost {
        store.set_fuel(0)?;
        return Err(wasmtime::Trap::OutOfFuel.into());
    }
    store.set_fuel(left - cost)
}

/// Per-call context the host functions need.
pub struct CallState {
    /// `name@version`, for messages.
    pub agent: String,
    /// Where host calls are answered: the node, a replayed transcript, or nothing at all.
    pub services: Arc<dyn HostServices>,
    /// 0 for a top-level call.
    pub depth: u32,
    pub max_depth: u32,
    /// When this call must be done; nested calls inherit what is left of it.
    pub deadline: Instant,
    pub wall: Duration,
    pub log: LogState,
    pub nested: Vec<NestedCall>,
    /// The answers this call's host calls got, for its receipt.
    pub transcript: TranscriptState,
    /// Set when a replayed guest's host call is not the one its transcript records.
    pub diverged: Option<Divergence>,
    /// Time the host spent answering model requests, which the call's deadline moves on by:
    /// model time is metered as tokens, not as the agent's wall time.
    pub model_time: Arc<ModelTime>,
}

/// The time one call has spent waiting for models.
#[derive(Debug, Default)]
pub struct ModelTime {
    paused_us: AtomicU64,
    waiting: std::sync::atomic::AtomicBool,
}

impl ModelTime {
    /// Time spent in finished model requests.
    pub fn paused(&self) -> Duration {
        Duration::from_micros(self.paused_us.load(Ordering::Relaxed))
    }

    /// Whether a model request is under way.
    pub fn waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed)
    }

    pub(super) fn start(&self) {
        self.waiting.store(true, Ordering::Relaxed);
    }

    /// Ends a model request that took `elapsed`.
    pub(super) fn finish(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.paused_us.fetch_add(micros, Ordering::Relaxed);
        self.waiting.store(false, Ordering::Relaxed);
    }
}

impl CallState {
    pub(super) fn new(
        agent: String,
        services: Arc<dyn HostServices>,
        depth: u32,
        limits: &Limits,
        wall: Duration,
    ) -> Self {
        CallState {
            agent,
            services,
            depth,
            max_depth: limits.max_call_depth,
            deadline: Instant::now() + wall,
            wall,
            log: LogState {
                lines: Vec::new(),
                used: 0,
                max_total: limits.max_log_bytes,
                max_message: limits.max_log_message_bytes,
                exceeded: false,
            },
            nested: Vec::new(),
            transcript: TranscriptState::default(),
            diverged: None,
            model_time: Arc::default(),
        }
    }

    /// When the call must be done, model time excluded.
    pub fn deadline(&self) -> Instant {
        self.deadline + self.model_time.paused()
    }
}

/// A call's transcript as it grows, bounded so that every receipt's transcript is one any host
/// keeps and any verifier accepts ([`MAX_TRANSCRIPT_BYTES`]).
#[derive(Default)]
pub struct TranscriptState {
    pub(super) transcript: Transcript,
    /// Its length as [`Transcript::to_bytes`] will write it.
    bytes: usize,
    pub(super) exceeded: bool,
}

impl TranscriptState {
    /// Adds `call` unless that would make the transcript longer than a receipt may name; then
    /// marks it exceeded and says `false`.
    pub(super) fn append(&mut self, call: HostCall) -> bool {
        // `{"calls":[` … `]}`, then the entry and, after the first, a comma.
        let framing = if self.bytes == 0 { 12 } else { 1 };
        let entry = serde_json::to_vec(&call).map_or(usize::MAX, |bytes| bytes.len());
        self.bytes = self.bytes.saturating_add(framing).saturating_add(entry);
        if self.bytes as u64 > MAX_TRANSCRIPT_BYTES {
            self.exceeded = true;
            return false;
        }
        self.transcript.calls.push(call);
        true
    }
}

/// Adds a host call and its answer to the call's transcript: before the guest is charged for
/// the answer, so a replay that runs out of fuel there records the same calls. A guest whose
/// answers would make the transcript longer than a receipt may name ends `output-limit`.
pub(super) fn record(
    store: &mut StoreContextMut<'_, AgentState>,
    call: HostCall,
) -> wasmtime::Result<()> {
    let state = store.data_mut();
    if !state.call.transcript.append(call) {
        return Err(wasmtime::format_err!(
            "agent {}'s host calls got more than the {MAX_TRANSCRIPT_BYTES} bytes of answers a \
             transcript may hold",
            state.call.agent
        ));
    }
    Ok(())
}

/// Ends a replayed call whose guest asked for something its transcript does not record.
pub(super) fn diverge(
    store: &mut StoreContextMut<'_, AgentState>,
    divergence: Divergence,
) -> wasmtime::Error {
    store.data_mut().call.diverged = Some(divergence.clone());
    wasmtime::Error::new(divergence)
}

pub struct LogState {
    pub(super) lines: Vec<LogLine>,
    used: usize,
    pub(super) max_total: usize,
    max_message: usize,
    pub(super) exceeded: bool,
}

pub(super) fn add_host_interface(linker: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    // `types` holds only types; it still has to exist for components that import it.
    linker.instance("agora:agent/types@0.1.0")?;
    let mut host = linker.instance("agora:agent/host@0.1.0")?;

    host.func_wrap(
        "log",
        |mut store: StoreContextMut<'_, AgentState>, (level, message): (LogLevel, String)| {
            charge(&mut store, message.len())?;
            let state = store.data_mut();
            let log = &mut state.call.log;
            let message = truncate(&message, log.max_message);
            // A line costs its bytes plus what keeping it costs the host, so a flood of empty
            // messages exhausts the budget as surely as a flood of long ones.
            log.used += message.len() + LOG_LINE_OVERHEAD;
            if log.used > log.max_total {
                log.exceeded = true;
                return Err(wasmtime::format_err!(
                    "agent {} logged more than {} bytes",
                    state.call.agent,
                    log.max_total
                ));
            }
            tracing::debug!(agent = %state.call.agent, ?level, message = %message, "agent log");
            log.lines.push(LogLine { level, message });
            Ok(())
        },
    )?;

    host.func_wrap_async(
        "kv-get",
        |mut store: StoreContextMut<'_, AgentState>, (key,): (String,)| {
            Box::new(async move {
                charge(&mut store, key.len())?;
                let services = store.data().call.services.clone();
                let value = match services.kv_get(key.clone()).await {
                    Ok(value) => value,
                    Err(divergence) => return Err(diverge(&mut store, divergence)),
                };
                let found = value.as_ref().map_or(0, Vec::len);
                record(
                    &mut store,
                    HostCall::KvGet {
                        key,
                        value: value.clone(),
                    },
                )?;
                // The answer is charged like the question: a host call, plus its bytes.
                charge(&mut store, found)?;
                Ok((value,))
            })
        },
    )?;

    host.func_wrap_async(
        "kv-set",
        |mut store: StoreContextMut<'_, AgentState>, (key, value): (String, Vec<u8>)| {
            Box::new(async move {
                charge(&mut store, key.len() + value.len())?;
                let services = store.data().call.services.clone();
                let value_hash = Hash::of(&value);
                let result = match services.kv_set(key.clone(), value).await {
                    Ok(result) => result,
                    Err(divergence) => return Err(diverge(&mut store, divergence)),
                };
                record(
                    &mut store,
                    HostCall::KvSet {
                        key,
                        value_hash,
                        error: result.clone().err(),
                    },
                )?;
                Ok((result,))
            })
        },
    )?;

    host.func_wrap_async(
        "call-agent",
        |mut store: StoreContextMut<'_, AgentState>, (agent, request): (String, Request)| {
            Box::new(async move {
                charge(
                    &mut store,
                    agent.len() + request.action.len() + request.payload.len(),
                )?;
                let remaining = store.get_fuel()?;
                let state = store.data();
                let services = state.call.services.clone();
                let input_hash = request_hash(&request.action, &request.payload);
                let call = AgentCall {
                    agent: agent.clone(),
                    request,
                    fuel: remaining,
                    deadline: state.call.deadline(),
                    depth: state.call.depth + 1,
                    max_depth: state.call.max_depth,
                };
                let answer = match services.call_agent(call).await {
                    Ok(answer) => answer,
                    Err(divergence) => return Err(diverge(&mut store, divergence)),
                };
                record(
                    &mut store,
                    HostCall::CallAgent {
                        agent,
                        input_hash,
                        receipt: answer.receipt,
                        fuel_used: answer.fuel_used,
                        charge: answer.charge,
                        answer: answer.answer.clone(),
                    },
                )?;
                // The callee's fuel comes out of the caller's budget.
                store.set_fuel(remaining.saturating_sub(answer.fuel_used))?;
                if let Some(receipt) = answer.receipt {
                    store.data_mut().call.nested.push(NestedCall {
                        receipt,
                        fuel_used: answer.fuel_used,
                        charge: answer.charge,
                    });
                }
                let result = match answer.answer {
                    CallAnswer::Output(output) => {
                        charge(&mut store, output.len())?;
                        Ok(output)
                    }
                    CallAnswer::BadRequest(message) => Err(AgentError::BadRequest(message)),
                    CallAnswer::Refused(message) => Err(AgentError::Refused(message)),
                    CallAnswer::Internal(message) => Err(AgentError::Internal(message)),
                };
                Ok((result,))
            })
        },
    )?;
    Ok(())
}
