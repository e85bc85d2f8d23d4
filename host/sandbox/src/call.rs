//! One call: the store a guest runs in (its limits, clocks, randomness and host services), the
//! deadlines that stop it, and what it produced.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_registry::{CallEnvironment, Hash, Outcome};
use wasmtime::component::ResourceTable;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::http_fns::GuestHttp;

use super::limiter::InstanceLimiter;
use super::{
    Agent, AgentError, CallLimits, CallState, CheckedComponent, Divergence, EPOCH_TICK,
    FUEL_YIELD_INTERVAL, HOST_MEMORY_WAIT, HTTP_FIELDS_BYTES, HostBusy, HostServices, LogLine,
    MAX_MESSAGE_BYTES, Request, Sandbox, classify_trap, environment, truncate,
};

impl Sandbox {
    pub(crate) fn new_store(
        &self,
        call: CallState,
        limits: &CallLimits,
        fuel: u64,
        world: &CallWorld,
    ) -> wasmtime::Result<Store<AgentState>> {
        let stdout = MemoryOutputPipe::new(self.limits.max_log_bytes);
        let stderr = MemoryOutputPipe::new(self.limits.max_log_bytes);
        let mut wasi = WasiCtx::builder();
        wasi.stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        environment::virtualise(&mut wasi, &world.environment, &world.seed);
        let wasi = wasi.build();
        let mut http = WasiHttpCtx::new();
        // Room for the headers of real requests and responses, and no more host memory than
        // that per fields object.
        http.set_field_size_limit(HTTP_FIELDS_BYTES);
        let http_hooks = GuestHttp::new(call.services.clone(), &self.limits);
        let mut table = ResourceTable::new();
        table.set_max_capacity(self.limits.max_resource_handles);
        let state = AgentState {
            wasi,
            http,
            http_hooks,
            table,
            limiter: InstanceLimiter::new(
                limits.max_memory_bytes,
                self.guest_memory.clone(),
                self.limits.max_table_elements,
                self.limits.max_instances,
            ),
            stdout,
            stderr,
            call,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        // What the guest hands the host is counted before it is copied, per crossing.
        store.set_hostcall_fuel(self.limits.max_transfer_bytes);
        store.set_max_component_handles(self.limits.max_resource_handles);
        store.set_fuel(fuel)?;
        store.fuel_async_yield_interval(Some(FUEL_YIELD_INTERVAL))?;
        // At every epoch tick the guest yields to the executor, and past its deadline it stops.
        // Fuel yields alone are not enough: a guest spinning in cheap host calls (a WASI clock)
        // spends little fuel per call, and would hold its thread for its whole wall time.
        let deadline = Instant::now() + limits.max_wall;
        let model_time = store.data().call.model_time.clone();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline + model_time.paused() {
                Ok(UpdateDeadline::Interrupt)
            } else {
                // tokio's own yield: it lets the runtime poll its timers and I/O before the guest
                // resumes (a plain wake-up would put the guest straight back in the run queue).
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });
        Ok(store)
    }

    /// Runs `handle(request)` in a fresh instance. Never fails because of the guest: every guest
    /// failure is an [`Outcome`].
    pub async fn invoke(
        &self,
        component: &CheckedComponent,
        call: CallState,
        limits: &CallLimits,
        fuel: u64,
        request: &Request,
        world: &CallWorld,
    ) -> wasmtime::Result<Invocation> {
        // A call starts only into a host with room for it; nested calls run within their
        // caller's admission, and what anyone grows is charged as it happens.
        if call.depth == 0
            && !self
                .guest_memory
                .admit(limits.max_memory_bytes, HOST_MEMORY_WAIT)
                .await
        {
            return Err(wasmtime::Error::new(HostBusy {
                used: self.guest_memory.used(),
                budget: self.limits.max_guest_memory_bytes,
            }));
        }
        let _slot = self.slot(call.depth).await;
        let started = Instant::now();
        let wall = call.wall;
        let mut store = self.new_store(call, limits, fuel, world)?;
        let model_time = store.data().call.model_time.clone();
        let run = async {
            let agent: Agent = component.pre.instantiate_async(&mut store).await?;
            agent
                .agora_agent_handler()
                .call_handle(&mut store, request)
                .await
        };
        // The epoch deadline stops guest code; this backstop also stops a guest blocked in a
        // host call. Both move on by the time spent in model requests.
        let result = {
            let mut run = std::pin::pin!(run);
            loop {
                let paused = model_time.paused();
                let mut until = started + wall + EPOCH_TICK * 10 + paused;
                // A model request is bounded by the models' own timeout; wait it out.
                if model_time.waiting() {
                    until = until.max(Instant::now() + EPOCH_TICK);
                }
                match tokio::time::timeout_at(until.into(), &mut run).await {
                    Ok(done) => break Ok(done),
                    Err(elapsed) if !model_time.waiting() && model_time.paused() == paused => {
                        break Err(elapsed);
                    }
                    Err(_) => continue,
                }
            }
        };
        let wall_time = started.elapsed();
        let fuel_left = store.get_fuel().unwrap_or(0);
        let fuel_used = fuel.saturating_sub(fuel_left);
        let mut state = store.into_data();
        // Requests still under way end with the call (their tasks are aborted with its table).
        let (http, http_diverged) = super::lock(&state.http_hooks.record).close();
        drop(std::mem::take(&mut state.table));
        let transcript_full = !http
            .into_iter()
            .all(|call| state.call.transcript.append(call));
        if state.call.diverged.is_none() {
            state.call.diverged = http_diverged;
        }

        let (outcome, output) = match result {
            Err(_elapsed) => (Outcome::Timeout, None),
            Ok(_) if transcript_full => (Outcome::OutputLimit, None),
            Ok(Ok(Ok(output))) if output.len() as u64 > limits.max_output_bytes => {
                (Outcome::OutputLimit, None)
            }
            Ok(Ok(Ok(output))) => (Outcome::Ok, Some(output)),
            Ok(Ok(Err(agent_error))) => {
                let (error, message) = match agent_error {
                    AgentError::BadRequest(m) => ("bad-request", m),
                    AgentError::Refused(m) => ("refused", m),
                    AgentError::Internal(m) => ("internal", m),
                };
                (
                    Outcome::AgentError {
                        error: error.into(),
                        message: truncate(&message, MAX_MESSAGE_BYTES),
                    },
                    None,
                )
            }
            Ok(Err(error)) => (classify_trap(&error, &state), None),
        };
        Ok(Invocation {
            outcome,
            output,
            fuel_used,
            wall_time,
            logs: state.call.log.lines,
            stdout: state.stdout.contents().to_vec(),
            stderr: state.stderr.contents().to_vec(),
            nested: state.call.nested,
            transcript: state.call.transcript.transcript,
            diverged: state.call.diverged,
        })
    }

    /// Builds the store state for a call; see [`CallState`].
    pub fn call_state(
        &self,
        agent: String,
        services: Arc<dyn HostServices>,
        depth: u32,
        wall: Duration,
    ) -> CallState {
        CallState::new(agent, services, depth, &self.limits, wall)
    }
}

/// The clocks and randomness one call's guest sees (see `environment.rs`).
pub struct CallWorld {
    /// As the receipt records it.
    pub environment: CallEnvironment,
    /// [`CallEnvironment::seed`] of the call's input.
    pub seed: [u8; 32],
}

/// What one call produced, before it is signed into a receipt.
pub struct Invocation {
    pub outcome: Outcome,
    pub output: Option<Vec<u8>>,
    pub fuel_used: u64,
    pub wall_time: Duration,
    pub logs: Vec<LogLine>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub nested: Vec<NestedCall>,
    /// The host calls' answers, in order.
    pub transcript: agora_registry::Transcript,
    /// Set when the call replayed a transcript its guest's calls did not follow.
    pub diverged: Option<Divergence>,
}

/// A `call-agent` made during a call, as recorded for the caller's receipt.
#[derive(Clone, Copy, Debug)]
pub struct NestedCall {
    pub receipt: Hash,
    pub fuel_used: u64,
    pub charge: u64,
}

/// The store's data for one call.
pub struct AgentState {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) http_hooks: GuestHttp,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: InstanceLimiter,
    pub(crate) stdout: MemoryOutputPipe,
    pub(crate) stderr: MemoryOutputPipe,
    pub(crate) call: CallState,
}

impl WasiView for AgentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for AgentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}
