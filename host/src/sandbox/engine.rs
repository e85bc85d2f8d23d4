//! The one wasmtime configuration every agent runs under, and the key that names it.
//!
//! Everything that changes compiled code or how instances are allocated is set here, so the
//! compiled-code cache can be keyed by [`engine_key`] and a change of configuration is a change
//! of key (old entries become misses, never mismatches).

use std::hash::{Hash as _, Hasher};

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::limits::Limits;

/// How instances are allocated, as decided at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// Slots reserved up front and reused from call to call: the fast path.
    Pooling {
        /// Component instances the pool holds.
        instances: u32,
    },
    /// Memory mapped for each instance and unmapped after it.
    OnDemand,
}

/// Builds the engine for `limits`: pooling if `limits.pooled_instances > 0` and the address space
/// for the pool can be reserved, on-demand otherwise (with a warning saying so).
pub(crate) fn build(limits: &Limits) -> wasmtime::Result<(Engine, Allocation)> {
    if limits.pooled_instances > 0 {
        let mut config = base_config(limits);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool(limits)));
        // Creating the engine reserves the pool, so this is the probe: on a machine with a small
        // address space (some aarch64 and riscv64 kernels, a ulimit -v) it fails here.
        match Engine::new(&config) {
            Ok(engine) => {
                return Ok((
                    engine,
                    Allocation::Pooling {
                        instances: limits.pooled_instances,
                    },
                ));
            }
            Err(error) => tracing::warn!(
                error = %format!("{error:#}"),
                instances = limits.pooled_instances,
                "cannot reserve the address space for the instance pool; allocating on demand \
                 (calls start slower; lower pooled_instances to keep pooling)"
            ),
        }
    }
    Ok((Engine::new(&base_config(limits))?, Allocation::OnDemand))
}

/// The configuration a compile-only engine uses (a compiler process): everything that shapes
/// compiled code, without an instance pool, whose address space a compiler does not need.
pub(crate) fn compile_config(limits: &Limits) -> Config {
    base_config(limits)
}

fn base_config(limits: &Limits) -> Config {
    let mut config = Config::new();
    // Fuel is the deterministic meter every receipt reports; epochs stop a guest on the wall
    // clock when it still has fuel to spare.
    config.consume_fuel(true);
    config.epoch_interruption(true);
    config.max_wasm_stack(limits.max_wasm_stack);
    enable_agent_features(&mut config);
    // wasmtime's own compile cache stays off (its default): it trusts whatever it finds in its
    // directory. agora's (see `cache`) authenticates every entry.
    config
}

/// The WebAssembly features agents may use: what the three toolchains agents are built with emit
/// (Rust through LLVM for wasm32-wasip2, componentize-py's CPython built with wasi-sdk,
/// componentize-js's SpiderMonkey), and nothing else. Every other proposal wasmtime 48 supports is
/// off, so a component that uses one is refused when it is checked, naming the feature: each is
/// attack surface no agent needs (new compiler and runtime code, much of it outside wasmtime's
/// best-tested tier), and some would make fuel or results differ between hosts.
fn enable_agent_features(config: &mut Config) {
    // Needed: agents are components; the MVP's successors every toolchain above emits by default
    // (multi-value returns, bulk memory operations, reference types for tables); SIMD, which
    // CPython and SpiderMonkey builds may use and which is deterministic; extended constant
    // expressions, which componentize-py's CPython uses in its data segment offsets.
    config
        .wasm_component_model(true)
        .wasm_multi_value(true)
        .wasm_bulk_memory(true)
        .wasm_reference_types(true)
        .wasm_simd(true)
        .wasm_extended_const(true);
    config
        // Relaxed SIMD results differ between CPUs: a receipt's output would not be re-checkable.
        .wasm_relaxed_simd(false)
        // Shared memory and atomics waits; agents are single-threaded, calls are one store each.
        .wasm_threads(false)
        .wasm_shared_everything_threads(false)
        // A garbage-collected heap is host memory outside the linear-memory limiter.
        .wasm_gc(false)
        .wasm_function_references(false)
        // Exceptions, stack switching, tail calls: unwinding and stack machinery no agent needs.
        .wasm_exceptions(false)
        .wasm_stack_switching(false)
        .wasm_tail_call(false)
        // Memories beyond 4 GiB, several memories per module, custom page sizes: the memory
        // limits and the pool's slots are sized for one 32-bit memory per module.
        .wasm_memory64(false)
        .wasm_multi_memory(false)
        .wasm_custom_page_sizes(false)
        // Newer instructions no toolchain above emits.
        .wasm_wide_arithmetic(false)
        .wasm_branch_hinting(false)
        // The component model's async, threading and error-context extensions: agents export a
        // synchronous handler.
        .wasm_component_model_async(false)
        .wasm_component_model_more_async_builtins(false)
        .wasm_component_model_async_stackful(false)
        .wasm_component_model_threading(false)
        .wasm_component_model_error_context(false)
        .wasm_component_model_gc(false)
        .wasm_component_model_map(false)
        .wasm_component_model_memory64(false)
        .wasm_component_model_fixed_length_lists(false)
        .wasm_component_model_implements(false);
}

fn pool(limits: &Limits) -> PoolingAllocationConfig {
    let instances = limits.pooled_instances;
    let mut pool = PoolingAllocationConfig::new();
    // Every call can take its component's full share of every kind of slot, so a call never
    // fails for want of a slot while it holds a permit (see `Sandbox::slot`): a slot is only
    // address space until it is used.
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(POOL_CORE_INSTANCES))
        .total_memories(instances.saturating_mul(POOL_MEMORIES))
        .total_tables(instances.saturating_mul(POOL_TABLES))
        // One fiber stack per running store.
        .total_stacks(instances)
        .max_core_instances_per_component(POOL_CORE_INSTANCES)
        .max_memories_per_component(POOL_MEMORIES)
        .max_tables_per_component(POOL_TABLES)
        .max_memories_per_module(POOL_MEMORIES)
        .max_tables_per_module(POOL_TABLES)
        .max_memory_size(usize::try_from(limits.max_memory_bytes).unwrap_or(usize::MAX))
        .table_elements(limits.max_table_elements)
        // Resetting a small resident prefix with memset is cheaper than decommitting it and
        // faulting it back in on the next call.
        .linear_memory_keep_resident(256 << 10)
        .table_keep_resident(64 << 10);
    pool
}

/// Core instances one component may have with pooling: language runtimes split into several
/// (componentize-py about a dozen); beyond this instantiation fails as the component's fault.
const POOL_CORE_INSTANCES: u32 = 32;
/// Linear memories one component may have with pooling; each slot reserves 4 GiB of address
/// space.
const POOL_MEMORIES: u32 = 4;
/// Tables one component may have with pooling.
const POOL_TABLES: u32 = 32;

/// A hash naming the compiled-code format of `engine`: wasmtime's version and every setting that
/// changes compiled code (wasmtime's precompile compatibility hash, which covers fuel, epochs and
/// the memory layout).
pub(crate) fn engine_key(engine: &Engine) -> [u8; 32] {
    struct Blake3Hasher(blake3::Hasher);
    impl Hasher for Blake3Hasher {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            let hash = self.0.finalize();
            u64::from_le_bytes(hash.as_bytes()[..8].try_into().unwrap_or([0; 8]))
        }
    }
    let mut hasher = Blake3Hasher(blake3::Hasher::new_derive_key(
        "agora 2026-12 compiled-code engine key",
    ));
    hasher.0.update(crate::RUNTIME_VERSION.as_bytes());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    *hasher.0.finalize().as_bytes()
}
