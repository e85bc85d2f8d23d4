//! The one wasmtime configuration every agent runs under, and the key that names it.
//!
//! Everything that changes compiled code or how instances are allocated is set here, so the
//! compiled-code cache can be keyed by [`engine_key`] and a change of configuration is a change
//! of key (old entries become misses, never mismatches).

use std::hash::{Hash as _, Hasher};

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::profile::AGORA_DET_1;
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
pub fn build(limits: &Limits) -> wasmtime::Result<(Engine, Allocation)> {
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
pub fn compile_config(limits: &Limits) -> Config {
    base_config(limits)
}

fn base_config(limits: &Limits) -> Config {
    let mut config = Config::new();
    // Everything that decides what a guest computes and the fuel it spends, fixed and named.
    AGORA_DET_1.apply(&mut config);
    // How deep a guest may recurse: a stack overflow is not reproducible on another host
    // whatever this is (the depth depends on the compiler and CPU), so it is a host limit and
    // not part of the profile.
    config.max_wasm_stack(limits.max_wasm_stack);
    // wasmtime's own compile cache stays off (its default): it trusts whatever it finds in its
    // directory. agora's (see `cache`) authenticates every entry.
    config
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
        .table_elements(limits.max_table_elements);
    reset_in_place(&mut pool);
    pool
}

/// How agora resets a pooled instance's memory and tables after a call: in place, not by
/// decommitting them. Resetting what a call touched with memset is cheaper than decommitting it
/// and faulting it back in on the next call, and each `madvise` that decommits makes the kernel
/// interrupt every other core running this process to flush its TLB (with a writer and a
/// signer thread beside the calls, that was a tenth of a warm call). With `PAGEMAP_SCAN`
/// (Linux 6.7 and later) only the pages a call dirtied are reset, up to 2 MiB; without it, the
/// lowest 2 MiB are. Public so that benchmarks can give raw wasmtime the same settings.
pub fn reset_in_place(pool: &mut PoolingAllocationConfig) {
    pool.linear_memory_keep_resident(LINEAR_MEMORY_KEEP_RESIDENT)
        .pagemap_scan(wasmtime::Enabled::Auto)
        .table_keep_resident(64 << 10);
}

/// Bytes of a pooled linear memory reset in place rather than decommitted after a call.
const LINEAR_MEMORY_KEEP_RESIDENT: usize = 2 << 20;

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
pub fn engine_key(engine: &Engine) -> [u8; 32] {
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
