//! The `agora:agent/host` interface an agent imports, and the per-call state it works on.

use std::time::{Duration, Instant};

use agora_registry::Outcome;
use wasmtime::StoreContextMut;
use wasmtime::component::Linker;

use super::{
    AgentError, AgentState, LogLevel, LogLine, MAX_MESSAGE_BYTES, NestedCall, Request, truncate,
};
use crate::limits::Limits;
use crate::node::CallServices;

/// What one logged line costs against the log budget besides its message, in bytes: about the
/// host memory a kept line takes (a `LogLine` and its allocation).
pub(crate) const LOG_LINE_OVERHEAD: usize = 64;

/// Fuel every host call costs, whatever it moves: a host call does microseconds of host work,
/// where a unit of fuel is about one wasm instruction. Part of what a receipt's fuel means, so
/// fixed, not configurable: the same call costs the same fuel on every host.
pub(crate) const HOST_CALL_FUEL: u64 = 1_000;
/// Fuel per byte a host call moves between guest and host, both ways (a log message, a kv key
/// and value, a `call-agent` payload and its answer): a guest that shuttles data through the
/// host pays for the host's work in proportion.
pub(crate) const HOST_FUEL_PER_BYTE: u64 = 1;

/// Takes what a host call moving `bytes` costs out of the call's fuel; with too little left the
/// call ends `fuel-exhausted`, as if the guest had spent it itself.
fn charge(store: &mut StoreContextMut<'_, AgentState>, bytes: usize) -> wasmtime::Result<()> {
    let cost = HOST_CALL_FUEL.saturating_add((bytes as u64).saturating_mul(HOST_FUEL_PER_BYTE));
    let left = store.get_fuel()?;
    if left < cost {
        store.set_fuel(0)?;
        return Err(wasmtime::Trap::OutOfFuel.into());
    }
    store.set_fuel(left - cost)
}

/// Per-call context the host functions need.
pub(crate) struct CallState {
    /// `name@version`, for messages.
    pub agent: String,
    /// Host services; `None` while publishing (`info()` must not depend on host state).
    pub services: Option<CallServices>,
    /// 0 for a top-level call.
    pub depth: u32,
    pub max_depth: u32,
    /// When this call must be done; nested calls inherit what is left of it.
    pub deadline: Instant,
    pub wall: Duration,
    pub log: LogState,
    pub nested: Vec<NestedCall>,
}

impl CallState {
    pub(super) fn new(
        agent: String,
        services: Option<CallServices>,
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
        }
    }
}

pub(crate) struct LogState {
    pub(super) lines: Vec<LogLine>,
    used: usize,
    pub(super) max_total: usize,
    max_message: usize,
    pub(super) exceeded: bool,
}

pub(super) fn add_host_interface(
    linker: &mut Linker<AgentState>,
    limits: &Limits,
) -> wasmtime::Result<()> {
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
                let Some(services) = store.data().call.services.clone() else {
                    // No memory here (publishing, re-executing): a miss, at a miss's price.
                    charge(&mut store, 0)?;
                    return Ok((None,));
                };
                // A read can wait behind the registry's writer; off the async executor.
                let read = tokio::task::spawn_blocking(move || {
                    services.node.registry().kv_get(&services.kv, &key)
                })
                .await;
                let value = match read {
                    Ok(Ok(value)) => value,
                    // A storage failure is the host's problem; the agent sees an absent key and
                    // the operator sees the error.
                    Ok(Err(error)) => {
                        tracing::error!(%error, "agent kv read failed");
                        None
                    }
                    Err(join) => std::panic::resume_unwind(join.into_panic()),
                };
                charge(&mut store, value.as_ref().map_or(0, Vec::len))?;
                Ok((value,))
            })
        },
    )?;

    let kv_quota = limits.kv;
    host.func_wrap_async(
        "kv-set",
        move |mut store: StoreContextMut<'_, AgentState>, (key, value): (String, Vec<u8>)| {
            Box::new(async move {
                charge(&mut store, key.len() + value.len())?;
                let services = store.data().call.services.clone();
                let Some(services) = services else {
                    return Ok((Err(
                        "agent memory is not available while publishing".to_string()
                    ),));
                };
                // A write waits for a durable commit; keep that wait off the async executor.
                let written = tokio::task::spawn_blocking(move || {
                    services
                        .node
                        .registry()
                        .kv_set(&services.kv, &key, &value, &kv_quota)
                })
                .await;
                let result = match written {
                    Ok(result) => result.map_err(|e| e.to_string()),
                    Err(join) => std::panic::resume_unwind(join.into_panic()),
                };
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
                let Some(services) = state.call.services.clone() else {
                    return Ok((Err(AgentError::Refused(
                        "call-agent is not available while publishing".into(),
                    )),));
                };
                if state.call.depth >= state.call.max_depth {
                    return Ok((Err(AgentError::Refused(format!(
                        "call depth limit of {} reached",
                        state.call.max_depth
                    ))),));
                }
                let depth = state.call.depth + 1;
                let deadline = state.call.deadline;
                let nested = services
                    .node
                    .run_nested(
                        agent,
                        request,
                        remaining,
                        deadline,
                        services.manifest,
                        depth,
                    )
                    .await;
                let execution = match nested {
                    Ok(execution) => execution,
                    Err(error) => {
                        return Ok((Err(AgentError::BadRequest(truncate(
                            &error.to_string(),
                            MAX_MESSAGE_BYTES,
                        ))),));
                    }
                };
                // The callee's fuel comes out of the caller's budget.
                store.set_fuel(remaining.saturating_sub(execution.fuel_used))?;
                store.data_mut().call.nested.push(NestedCall {
                    receipt: execution.receipt.hash(),
                    fuel_used: execution.fuel_used,
                    charge: execution.charge,
                });
                charge(&mut store, execution.output.as_ref().map_or(0, Vec::len))?;
                let result = match (execution.outcome, execution.output) {
                    (Outcome::Ok, Some(output)) => Ok(output),
                    (Outcome::AgentError { error, message }, _) => Err(match error.as_str() {
                        "bad-request" => AgentError::BadRequest(message),
                        "refused" => AgentError::Refused(message),
                        _ => AgentError::Internal(message),
                    }),
                    (outcome, _) => Err(AgentError::Internal(format!(
                        "agent {} failed: {outcome}",
                        execution.agent
                    ))),
                };
                Ok((result,))
            })
        },
    )?;
    Ok(())
}
