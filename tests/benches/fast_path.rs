//! The fast path, each figure beside its anchor measured in the same run:
//!
//! 1. a warm in-process call (`cpu-kernel echo`, the trivial agent, and `ride-driver quote`):
//!    agora's `Node::run` (resolve, pooled instantiate, call, sign and commit a receipt) beside
//!    raw wasmtime on the same component in the same process (fresh store, pooled instantiate,
//!    call, drop) — p50/p99 one call at a time, and calls/s with many callers on all cores —
//!    with receipts handed out once committed (the default) and as soon as signed (pipelined);
//! 2. metering: a CPU-bound guest (`cpu-kernel hash`) on raw wasmtime with fuel and epochs on,
//!    each alone, and neither, as ratios to neither;
//! 3. the deterministic execution profile (`agora-det/1`: NaN canonicalisation, memory
//!    initialised by code rather than copy-on-write mappings) against the configuration before
//!    it, on raw wasmtime, calls of the two alternating so that drift in the machine falls on
//!    both: an integer kernel, a float-heavy one, the ride negotiation's quote;
//! 4. re-execution: `Node::reexecute` of a receipt (hash the component, the input and the
//!    transcript, run under the receipt's profile, limits and environment replaying its
//!    transcript, compare) beside `Node::run` of
//!    the call it re-checks.
//!
//! `cargo bench -p agora-tests --bench fast_path` (`-- --quick` for a short run).

use std::sync::Arc;

use anyhow::Context;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agora_host::{AGORA_DET_1, DataDir, Limits, Node, NodeConfig, Profile, examples};
use agora_registry::ReceiptDurability;
use agora_tests::{CPU_KERNEL, golden_agent, interpreted_agent};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod raw {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "agent",
        exports: { default: async },
    });
}
use raw::agora::agent::host::LogLevel;
use raw::agora::agent::types::{AgentError, Request};

/// One way to make a call, as the sections time it.
type Call = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send + Sync,
>;

const QUOTE: &[u8] = br#"{"trip":{"distance_m":12500,"duration_s":1500,"demand_pct":120}}"#;

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    // As the `agora` binary runs. SAFETY: no other thread exists yet.
    unsafe { agora_host::without_error_backtraces() };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(quick))
}

async fn bench(quick: bool) -> anyhow::Result<()> {
    let (calls, window) = if quick {
        (500, Duration::from_secs(1))
    } else {
        (5_000, Duration::from_secs(5))
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "agora fast path: {calls} sequential calls per figure, {window:?} per throughput figure, {cores} cores"
    );

    let dir = tempfile::tempdir()?;
    let data_dir = DataDir::new(dir.path());
    data_dir.keygen()?;
    let node = Node::open(NodeConfig::new(data_dir).limits(Limits::default())).await?;
    println!("agora allocation: {:?}", node.sandbox().stats().allocation);
    // The same host handing receipts out as soon as they are signed, committed a moment later.
    let pipelined_dir = tempfile::tempdir()?;
    let pipelined_data = DataDir::new(pipelined_dir.path());
    pipelined_data.keygen()?;
    let pipelined = Node::open(
        NodeConfig::new(pipelined_data)
            .limits(Limits::default())
            .receipts(ReceiptDurability::Pipelined),
    )
    .await?;
    let cases: [(&str, &[u8], &str, &[u8]); 2] = [
        ("cpu-kernel echo", CPU_KERNEL, "echo", b"hi"),
        ("ride-driver quote", examples::RIDE_DRIVER, "quote", QUOTE),
    ];
    // The anchor resets instances after a call as agora does (in place, see
    // `agora_host::sandbox::reset_in_place`); wasmtime's default settings are measured beside it.
    let anchor = RawWasmtime::resetting_in_place(true, true)?;
    let anchor_default = RawWasmtime::new(true, true)?;

    println!();
    println!("## 1. warm in-process call");
    println!(
        "| call | receipts | agora p50 | raw p50 | ratio | agora p99 | raw p99 | ratio | agora calls/s ({CALLERS} callers) | raw calls/s | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut defaults = Vec::new();
    for (name, component, action, payload) in cases {
        let mut subjects: Vec<(&str, Call)> = Vec::new();
        for (receipts, node) in [("committed", &node), ("pipelined", &pipelined)] {
            let agent = publish(node, component).await?;
            let node = node.clone();
            subjects.push((
                receipts,
                Arc::new(move || {
                    let (node, agent) = (node.clone(), agent.clone());
                    Box::pin(async move {
                        node.run(&agent, action, payload, None)
                            .await?
                            .into_output()?;
                        anyhow::Ok(())
                    })
                }),
            ));
        }
        for (which, raw) in [
            ("raw", &anchor),
            ("raw, wasmtime's defaults", &anchor_default),
        ] {
            let (raw, compiled) = (raw.clone(), raw.load(component)?);
            subjects.push((
                which,
                Arc::new(move || {
                    let (raw, compiled) = (raw.clone(), compiled.clone());
                    Box::pin(async move {
                        raw.call(&compiled, action, payload).await?;
                        anyhow::Ok(())
                    })
                }),
            ));
        }
        // In alternating rounds, so that this machine's drift (a shared VM's is large) falls
        // on every side of each ratio.
        let mut samples = vec![Vec::new(); subjects.len()];
        let mut rates = vec![0.0; subjects.len()];
        for _ in 0..ROUNDS {
            for ((_, call), samples) in subjects.iter().zip(&mut samples) {
                let call = call.clone();
                samples.extend(timed(calls / ROUNDS, move || call()).await?);
            }
        }
        for _ in 0..ROUNDS {
            for ((_, call), rate) in subjects.iter().zip(&mut rates) {
                let call = call.clone();
                *rate += throughput(window / ROUNDS as u32, move || call()).await? / ROUNDS as f64;
            }
        }
        let latencies: Vec<Latencies> = samples.into_iter().map(Latencies::of).collect();
        let (raw, raw_rate) = (&latencies[2], rates[2]);
        for i in 0..2 {
            let (agora, agora_rate) = (&latencies[i], rates[i]);
            println!(
                "| {name} | {} | {} | {} | {:.2}× | {} | {} | {:.2}× | {agora_rate:.0} | {raw_rate:.0} | {:.2}× |",
                subjects[i].0,
                us(agora.p50),
                us(raw.p50),
                ratio(agora.p50, raw.p50),
                us(agora.p99),
                us(raw.p99),
                ratio(agora.p99, raw.p99),
                agora_rate / raw_rate,
            );
        }
        defaults.push((name, latencies[3].clone(), rates[3]));
    }
    println!();
    println!("raw wasmtime with its default pool settings (decommitting memory after each call):");
    println!("| call | p50 | p99 | calls/s |");
    println!("|---|---|---|---|");
    for (name, latencies, rate) in defaults {
        println!(
            "| {name} | {} | {} | {rate:.0} |",
            us(latencies.p50),
            us(latencies.p99)
        );
    }

    println!();
    println!("## 2. metering cost: cpu-kernel hash, raw wasmtime, pooled");
    let rounds: &[u8] = if quick { b"500" } else { b"2000" };
    let repeats = if quick { 20 } else { 50 };
    let mut neither = None;
    println!("| fuel | epochs | p50 | ratio to neither |");
    println!("|---|---|---|---|");
    for (fuel, epochs) in [(false, false), (true, false), (false, true), (true, true)] {
        let engine = RawWasmtime::new(fuel, epochs)?;
        let compiled = engine.load(CPU_KERNEL)?;
        let sample = latencies(repeats, || {
            let (engine, compiled) = (engine.clone(), compiled.clone());
            async move {
                engine.call(&compiled, "hash", rounds).await?;
                anyhow::Ok(())
            }
        })
        .await?;
        let base = *neither.get_or_insert(sample.p50);
        println!(
            "| {} | {} | {:.2} ms | {:.2}× |",
            on(fuel),
            on(epochs),
            sample.p50.as_secs_f64() * 1e3,
            ratio(sample.p50, base)
        );
    }
    let agent = publish(&node, CPU_KERNEL).await?;
    let sample = latencies(repeats, || {
        let (node, agent) = (node.clone(), agent.clone());
        async move {
            node.run(&agent, "hash", rounds, Some(100_000_000_000))
                .await?
                .into_output()?;
            anyhow::Ok(())
        }
    })
    .await?;
    println!(
        "| agora (fuel, epochs, receipt) | | {:.2} ms | {:.2}× |",
        sample.p50.as_secs_f64() * 1e3,
        ratio(sample.p50, neither.unwrap_or(sample.p50))
    );

    println!();
    println!("## 3. the deterministic profile's cost: raw wasmtime, pooled, fuel and epochs on");
    // What agora ran before the profile: wasmtime's defaults for both.
    let before = Profile {
        nan_canonicalization: false,
        memory_init_cow: true,
        ..AGORA_DET_1
    };
    let mandelbrot = 96u32.to_le_bytes();
    let golden = golden_agent();
    let driver_js = interpreted_agent("js", "ride-driver-js");
    let workloads: [(&str, &[u8], &str, &[u8]); 3] = [
        ("cpu-kernel hash (integer)", CPU_KERNEL, "hash", rounds),
        (
            "golden mandelbrot (float)",
            &golden,
            "mandelbrot",
            &mandelbrot,
        ),
        ("ride-driver quote", examples::RIDE_DRIVER, "quote", QUOTE),
    ];
    println!("| call | before p50 | {} p50 | ratio |", AGORA_DET_1.name);
    println!("|---|---|---|---|");
    let engines = [
        RawWasmtime::with_profile(&before)?,
        RawWasmtime::with_profile(&AGORA_DET_1)?,
    ];
    for (name, component, action, payload) in workloads {
        let compiled = [engines[0].load(component)?, engines[1].load(component)?];
        let mut samples = [Vec::new(), Vec::new()];
        for round in 0..repeats * 8 {
            for which in [round % 2, 1 - round % 2] {
                let started = Instant::now();
                engines[which]
                    .call(&compiled[which], action, payload)
                    .await?;
                if round >= repeats {
                    samples[which].push(started.elapsed());
                }
            }
        }
        let p50 = samples.map(|mut s| {
            s.sort();
            s[s.len() / 2]
        });
        println!(
            "| {name} | {} | {} | {:.2}× |",
            us(p50[0]),
            us(p50[1]),
            ratio(p50[1], p50[0])
        );
    }

    println!();
    println!("## 4. re-executing a receipt against running its call, same node, warm");
    println!("and the input and transcript a host keeps per receipt for verifiers");
    println!("| call | run p50 | re-execute p50 | ratio | input bytes | transcript bytes |");
    println!("|---|---|---|---|---|---|");
    // The rider negotiates with one driver: its receipt's transcript holds the driver's answers.
    let driver = node
        .publish(examples::RIDE_DRIVER, Default::default())
        .await?
        .manifest
        .hash();
    let negotiation = serde_json::to_vec(&serde_json::json!({
        "trip": {"distance_m": 12500, "duration_s": 1500, "demand_pct": 120},
        "budget_cents": 2_200,
        "drivers": [driver],
        "max_rounds": 4,
    }))?;
    let trader_py = interpreted_agent("py", "energy-trader-py");
    let offer =
        br#"{"household":"solar-house","net_wh":3000,"reserve_cents_per_kwh":12,"slot":"t18"}"#;
    let checks: [(&str, &[u8], &str, &[u8]); 5] = [
        ("ride-driver quote", examples::RIDE_DRIVER, "quote", QUOTE),
        (
            "ride-rider negotiate (call-agent)",
            examples::RIDE_RIDER,
            "negotiate",
            &negotiation,
        ),
        ("ride-driver-js quote", &driver_js, "quote", QUOTE),
        ("energy-trader-py offer", &trader_py, "offer", offer),
        (
            "golden mandelbrot (float)",
            &golden,
            "mandelbrot",
            &mandelbrot,
        ),
    ];
    for (name, component, action, payload) in checks {
        let agent = publish(&node, component).await?;
        let receipt = node.run(&agent, action, payload, None).await?.receipt;
        let body = receipt.body();
        let kept = |hash| {
            node.registry()
                .call_data(hash)?
                .context("kept for verifiers")
        };
        let input = kept(&body.input_hash)?;
        let transcript = kept(&body.transcript.context("a transcript")?.hash)?;
        let run = latencies(repeats * 4, || {
            let (node, agent) = (node.clone(), agent.clone());
            async move {
                node.run(&agent, action, payload, None).await?;
                anyhow::Ok(())
            }
        })
        .await?;
        let check = latencies(repeats * 4, || {
            let (node, receipt) = (node.clone(), receipt.clone());
            let (input, transcript) = (&input, &transcript);
            async move {
                let again = node
                    .reexecute(&receipt, component, input, transcript)
                    .await?;
                anyhow::ensure!(
                    again.verdict == agora_host::Verdict::Matches,
                    "{name}: {again:?}"
                );
                anyhow::Ok(())
            }
        })
        .await?;
        println!(
            "| {name} | {} | {} | {:.2}× | {} | {} |",
            us(run.p50),
            us(check.p50),
            ratio(check.p50, run.p50),
            input.len(),
            transcript.len()
        );
    }
    node.shutdown().await?;
    Ok(())
}

/// Concurrent callers in the throughput figures.
const CALLERS: usize = 64;

/// Rounds each warm-call figure is split into, agora's and raw wasmtime's alternating.
const ROUNDS: usize = 5;

#[derive(Clone)]
struct Latencies {
    p50: Duration,
    p99: Duration,
}

impl Latencies {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
        Latencies {
            p50: at(0.5),
            p99: at(0.99),
        }
    }
}

/// The p50 and p99 of `n` calls one at a time, after a warm-up.
async fn latencies<F, Fut>(n: usize, call: F) -> anyhow::Result<Latencies>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    Ok(Latencies::of(timed(n, call).await?))
}

/// `n` calls one at a time, after a warm-up, each timed.
async fn timed<F, Fut>(n: usize, call: F) -> anyhow::Result<Vec<Duration>>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    for _ in 0..n / 10 + 5 {
        call().await?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        call().await?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// Calls per second with [`CALLERS`] tasks calling back to back on the multi-threaded runtime.
async fn throughput<F, Fut>(window: Duration, call: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for _ in 0..CALLERS {
        let (stop, done, call) = (stop.clone(), done.clone(), call.clone());
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                call().await?;
                done.fetch_add(1, Ordering::Relaxed);
                // A call that never waits would otherwise keep its worker (and the timer) forever.
                tokio::task::yield_now().await;
            }
            anyhow::Ok(())
        });
    }
    tokio::time::sleep(window).await;
    let (calls, elapsed) = (done.load(Ordering::Relaxed), started.elapsed());
    stop.store(true, Ordering::Relaxed);
    while let Some(task) = tasks.join_next().await {
        task??;
    }
    Ok(calls as f64 / elapsed.as_secs_f64())
}

/// Publishes `component` on `node` with default options; its manifest hash, as `Node::run`
/// takes it.
async fn publish(node: &Node, component: &[u8]) -> anyhow::Result<String> {
    let published = node.publish(component, Default::default()).await?;
    Ok(published.manifest.hash().to_hex())
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-12)
}

fn on(yes: bool) -> &'static str {
    if yes { "on" } else { "off" }
}

/// Raw wasmtime, as an embedder following wasmtime's docs would run an agent: one engine with
/// the pooling allocator, one linker with WASI 0.2 and no-op host functions, and per call a fresh
/// store, an instantiation from the pre-instantiated component, the call, and drop.
#[derive(Clone)]
struct RawWasmtime {
    engine: Engine,
    linker: Arc<Linker<RawState>>,
    fuel: bool,
    epochs: bool,
}

struct RawState {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for RawState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl raw::agora::agent::types::Host for RawState {}

impl raw::agora::agent::host::Host for RawState {
    fn log(&mut self, _level: LogLevel, _message: String) {}
    fn kv_get(&mut self, _key: String) -> Option<Vec<u8>> {
        None
    }
    fn kv_set(&mut self, _key: String, _value: Vec<u8>) -> Result<(), String> {
        Ok(())
    }
    fn call_agent(&mut self, _agent: String, _req: Request) -> Result<Vec<u8>, AgentError> {
        Err(AgentError::Refused("no nested calls here".into()))
    }
}

impl RawWasmtime {
    fn new(fuel: bool, epochs: bool) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.consume_fuel(fuel);
        config.epoch_interruption(epochs);
        Self::build(config, fuel, epochs)
    }

    /// The engine configured by `profile` (which turns fuel and epochs on).
    fn with_profile(profile: &Profile) -> anyhow::Result<Self> {
        let mut config = Config::new();
        profile.apply(&mut config);
        Self::build(config, true, true)
    }

    /// Like [`RawWasmtime::new`], resetting instances after a call as agora does.
    fn resetting_in_place(fuel: bool, epochs: bool) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.consume_fuel(fuel);
        config.epoch_interruption(epochs);
        Self::build_with(config, fuel, epochs, true)
    }

    fn build(config: Config, fuel: bool, epochs: bool) -> anyhow::Result<Self> {
        Self::build_with(config, fuel, epochs, false)
    }

    fn build_with(
        mut config: Config,
        fuel: bool,
        epochs: bool,
        reset_in_place: bool,
    ) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(1_000)
            .total_core_instances(8_000)
            .total_memories(2_000)
            .total_tables(8_000)
            .total_stacks(1_000)
            .max_memory_size(128 << 20);
        if reset_in_place {
            agora_host::sandbox::reset_in_place(&mut pool);
        }
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        raw::Agent::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;
        if epochs {
            let ticker = engine.clone();
            std::thread::spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(10));
                    ticker.increment_epoch();
                }
            });
        }
        Ok(RawWasmtime {
            engine,
            linker: Arc::new(linker),
            fuel,
            epochs,
        })
    }

    fn load(&self, component: &[u8]) -> anyhow::Result<Arc<raw::AgentPre<RawState>>> {
        let component = Component::new(&self.engine, component)?;
        Ok(Arc::new(raw::AgentPre::new(
            self.linker.instantiate_pre(&component)?,
        )?))
    }

    async fn call(
        &self,
        pre: &raw::AgentPre<RawState>,
        action: &str,
        payload: &[u8],
    ) -> anyhow::Result<Vec<u8>> {
        let state = RawState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        };
        let mut store = Store::new(&self.engine, state);
        if self.fuel {
            store.set_fuel(u64::MAX / 2)?;
            store.fuel_async_yield_interval(Some(1_000_000))?;
        }
        if self.epochs {
            store.set_epoch_deadline(500);
            store.epoch_deadline_trap();
        }
        let agent = pre.instantiate_async(&mut store).await?;
        let request = Request {
            action: action.into(),
            payload: payload.to_vec(),
        };
        agent
            .agora_agent_handler()
            .call_handle(&mut store, &request)
            .await?
            .map_err(|e| anyhow::anyhow!("{e:?}"))
    }
}
