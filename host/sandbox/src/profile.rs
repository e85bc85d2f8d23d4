//! The deterministic execution profile: the part of the engine configuration that decides what
//! a guest computes and how much fuel it spends, named, frozen and hashed into every receipt.
//!
//! Two hosts running the same component on the same input under the same profile reach the
//! same outcome, the same output and the same fuel, whatever their CPU, operating system or
//! allocation strategy. What would otherwise differ, and what the profile pins:
//!
//! - **NaN bit patterns.** x86-64 produces a NaN with the sign bit set where aarch64 produces
//!   it clear; a guest can store the bits. NaN canonicalisation makes every float operation
//!   that yields a NaN yield the canonical one.
//! - **Relaxed SIMD**, whose results are allowed to differ between CPUs: off.
//! - **Memory initialisation.** With copy-on-write images, wasmtime initialises memory by
//!   mapping it where the platform can (Linux) and by running generated code that spends fuel
//!   where it cannot (bytecodealliance/wasmtime#14331): off, so every host spends the fuel.
//! - **Memory layout** (reservation, guards, room for growth): fixed to wasmtime's 64-bit
//!   defaults rather than left to the platform's.
//! - **Features**: exactly the WebAssembly proposals agents may use; threads off.
//! - **Fuel costs**: wasmtime's cost table, pinned by the exact wasmtime version and hashed.
//!
//! Outcomes that depend on the host whatever the profile (a wall-clock timeout, the host's
//! memory for all calls, a stack overflow — how deep a guest gets within the stack bound
//! depends on the compiler and CPU) are marked as not reproducible in the receipt
//! ([`agora_registry::Outcome::is_reproducible`]).
//!
//! A profile never changes once released: a change to any setting, to the cost table or to
//! the wasmtime version is a new profile with a new name (the golden vectors in the system
//! tests fail until it is).

use agora_registry::Hash;
use wasmtime::{Config, OperatorCost};

/// A named, immutable engine configuration; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    /// Name and version, e.g. `agora-det/1`.
    pub name: &'static str,
    /// The exact wasmtime version whose semantics and fuel costs the profile pins.
    pub wasmtime: &'static str,
    /// Every float operation yielding a NaN yields the canonical NaN.
    pub nan_canonicalization: bool,
    /// Memory initialised by mapping copy-on-write images (spends no fuel, and only where the
    /// platform supports it) instead of by code that spends fuel everywhere.
    pub memory_init_cow: bool,
    /// Address space reserved for each linear memory, in bytes.
    pub memory_reservation: u64,
    /// Guard region after each linear memory, in bytes.
    pub memory_guard: u64,
    /// Extra address space reserved for a memory to grow into, in bytes.
    pub memory_reservation_for_growth: u64,
    /// A guard region before each linear memory too.
    pub guard_before_linear_memory: bool,
    /// The WebAssembly proposals, each on or off.
    pub features: &'static [(Feature, bool)],
}

/// The profile every call runs under.
pub const AGORA_DET_1: Profile = Profile {
    name: "agora-det/1",
    wasmtime: "48.0.8",
    nan_canonicalization: true,
    memory_init_cow: false,
    memory_reservation: 1 << 32,
    memory_guard: 32 << 20,
    memory_reservation_for_growth: 2 << 30,
    guard_before_linear_memory: true,
    features: &AGENT_FEATURES,
};

/// The WebAssembly features agents may use: what the three toolchains agents are built with emit
/// (Rust through LLVM for wasm32-wasip2, componentize-py's CPython built with wasi-sdk,
/// componentize-js's SpiderMonkey), and nothing else. Every other proposal wasmtime 48 supports is
/// off, so a component that uses one is refused when it is checked, naming the feature: each is
/// attack surface no agent needs (new compiler and runtime code, much of it outside wasmtime's
/// best-tested tier), and some would make fuel or results differ between hosts.
const AGENT_FEATURES: [(Feature, bool); 35] = [
    // Needed: agents are components; the MVP's successors every toolchain above emits by default
    // (multi-value returns, bulk memory operations, reference types for tables); SIMD, which
    // CPython and SpiderMonkey builds may use and which is deterministic; extended constant
    // expressions, which componentize-py's CPython uses in its data segment offsets.
    (Feature::ComponentModel, true),
    (Feature::MultiValue, true),
    (Feature::BulkMemory, true),
    (Feature::ReferenceTypes, true),
    (Feature::Simd, true),
    (Feature::ExtendedConst, true),
    // Relaxed SIMD results differ between CPUs: a receipt's output would not be re-checkable.
    (Feature::RelaxedSimd, false),
    // Shared memory and atomics waits; agents are single-threaded, calls are one store each.
    (Feature::Threads, false),
    (Feature::SharedEverythingThreads, false),
    // A garbage-collected heap is host memory outside the linear-memory limiter.
    (Feature::Gc, false),
    (Feature::FunctionReferences, false),
    // Exceptions, stack switching, tail calls: unwinding and stack machinery no agent needs.
    (Feature::Exceptions, false),
    (Feature::StackSwitching, false),
    (Feature::TailCall, false),
    // Memories beyond 4 GiB, several memories per module, custom page sizes: the memory
    // limits and the pool's slots are sized for one 32-bit memory per module.
    (Feature::Memory64, false),
    (Feature::MultiMemory, false),
    (Feature::CustomPageSizes, false),
    // Newer instructions no toolchain above emits.
    (Feature::WideArithmetic, false),
    (Feature::BranchHinting, false),
    // The component model's async, threading and error-context extensions: agents export a
    // synchronous handler.
    (Feature::ComponentModelAsync, false),
    (Feature::ComponentModelMoreAsyncBuiltins, false),
    (Feature::ComponentModelAsyncStackful, false),
    (Feature::ComponentModelThreading, false),
    (Feature::ComponentModelErrorContext, false),
    (Feature::ComponentModelGc, false),
    (Feature::ComponentModelMap, false),
    (Feature::ComponentModelMemory64, false),
    (Feature::ComponentModelFixedLengthLists, false),
    (Feature::ComponentModelImplements, false),
    // Not proposals but the same kind of switch: deterministic relaxed SIMD (moot while relaxed
    // SIMD is off, pinned so that turning it on cannot make it CPU-dependent).
    (Feature::RelaxedSimdDeterministic, true),
    // Code runs natively, compiled by Cranelift.
    (Feature::CraneliftOptSpeed, true),
    // Fuel, the deterministic meter, and epochs, the wall clock (which stops guests, and is
    // why a timeout is not reproducible).
    (Feature::ConsumeFuel, true),
    (Feature::EpochInterruption, true),
    // Traps are caught with signal handlers; bounds checks are elided inside the guards.
    (Feature::SignalsBasedTraps, true),
    // Tables are initialised lazily (no fuel either way; pinned so the layout is one).
    (Feature::TableLazyInit, true),
];

/// One on-or-off switch of the engine a profile pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(
    missing_docs,
    reason = "each is the wasmtime `Config` setting of the same name"
)]
pub enum Feature {
    ComponentModel,
    MultiValue,
    BulkMemory,
    ReferenceTypes,
    Simd,
    ExtendedConst,
    RelaxedSimd,
    Threads,
    SharedEverythingThreads,
    Gc,
    FunctionReferences,
    Exceptions,
    StackSwitching,
    TailCall,
    Memory64,
    MultiMemory,
    CustomPageSizes,
    WideArithmetic,
    BranchHinting,
    ComponentModelAsync,
    ComponentModelMoreAsyncBuiltins,
    ComponentModelAsyncStackful,
    ComponentModelThreading,
    ComponentModelErrorContext,
    ComponentModelGc,
    ComponentModelMap,
    ComponentModelMemory64,
    ComponentModelFixedLengthLists,
    ComponentModelImplements,
    RelaxedSimdDeterministic,
    CraneliftOptSpeed,
    ConsumeFuel,
    EpochInterruption,
    SignalsBasedTraps,
    TableLazyInit,
}

impl Feature {
    fn set(self, config: &mut Config, on: bool) {
        match self {
            Feature::ComponentModel => config.wasm_component_model(on),
            Feature::MultiValue => config.wasm_multi_value(on),
            Feature::BulkMemory => config.wasm_bulk_memory(on),
            Feature::ReferenceTypes => config.wasm_reference_types(on),
            Feature::Simd => config.wasm_simd(on),
            Feature::ExtendedConst => config.wasm_extended_const(on),
            Feature::RelaxedSimd => config.wasm_relaxed_simd(on),
            Feature::Threads => config.wasm_threads(on),
            Feature::SharedEverythingThreads => config.wasm_shared_everything_threads(on),
            Feature::Gc => config.wasm_gc(on),
            Feature::FunctionReferences => config.wasm_function_references(on),
            Feature::Exceptions => config.wasm_exceptions(on),
            Feature::StackSwitching => config.wasm_stack_switching(on),
            Feature::TailCall => config.wasm_tail_call(on),
            Feature::Memory64 => config.wasm_memory64(on),
            Feature::MultiMemory => config.wasm_multi_memory(on),
            Feature::CustomPageSizes => config.wasm_custom_page_sizes(on),
            Feature::WideArithmetic => config.wasm_wide_arithmetic(on),
            Feature::BranchHinting => config.wasm_branch_hinting(on),
            Feature::ComponentModelAsync => config.wasm_component_model_async(on),
            Feature::ComponentModelMoreAsyncBuiltins => {
                config.wasm_component_model_more_async_builtins(on)
            }
            Feature::ComponentModelAsyncStackful => config.wasm_component_model_async_stackful(on),
            Feature::ComponentModelThreading => config.wasm_component_model_threading(on),
            Feature::ComponentModelErrorContext => config.wasm_component_model_error_context(on),
            Feature::ComponentModelGc => config.wasm_component_model_gc(on),
            Feature::ComponentModelMap => config.wasm_component_model_map(on),
            Feature::ComponentModelMemory64 => config.wasm_component_model_memory64(on),
            Feature::ComponentModelFixedLengthLists => {
                config.wasm_component_model_fixed_length_lists(on)
            }
            Feature::ComponentModelImplements => config.wasm_component_model_implements(on),
            Feature::RelaxedSimdDeterministic => config.relaxed_simd_deterministic(on),
            Feature::CraneliftOptSpeed => config.cranelift_opt_level(if on {
                wasmtime::OptLevel::Speed
            } else {
                wasmtime::OptLevel::None
            }),
            Feature::ConsumeFuel => config.consume_fuel(on),
            Feature::EpochInterruption => config.epoch_interruption(on),
            Feature::SignalsBasedTraps => config.signals_based_traps(on),
            Feature::TableLazyInit => config.table_lazy_init(on),
        };
    }

    /// The switch's name in the profile's description: its variant name.
    fn name(self) -> String {
        format!("{self:?}")
    }
}

impl Profile {
    /// Sets everything the profile pins on `config`.
    pub fn apply(&self, config: &mut Config) {
        config
            .cranelift_nan_canonicalization(self.nan_canonicalization)
            .memory_init_cow(self.memory_init_cow)
            .memory_reservation(self.memory_reservation)
            .memory_guard_size(self.memory_guard)
            .memory_reservation_for_growth(self.memory_reservation_for_growth)
            .guard_before_linear_memory(self.guard_before_linear_memory);
        for &(feature, on) in self.features {
            feature.set(config, on);
        }
    }

    /// The description the hash is taken over (as JSON with sorted keys): every setting, and
    /// wasmtime's fuel cost for every operator.
    pub fn describe(&self) -> serde_json::Value {
        let features: serde_json::Map<String, serde_json::Value> = (self.features.iter())
            .map(|&(feature, on)| (feature.name(), on.into()))
            .collect();
        serde_json::json!({
            "name": self.name,
            "wasmtime": self.wasmtime,
            "nan_canonicalization": self.nan_canonicalization,
            "memory_init_cow": self.memory_init_cow,
            "memory_reservation": self.memory_reservation,
            "memory_guard": self.memory_guard,
            "memory_reservation_for_growth": self.memory_reservation_for_growth,
            "guard_before_linear_memory": self.guard_before_linear_memory,
            "features": features,
            // wasmtime's table as this build of it has it: a release that changes a cost changes
            // the hash, even where the version string was not bumped.
            "fuel_costs": serde_json::to_value(OperatorCost::new()).unwrap_or_default(),
        })
    }

    /// The hash receipts name the profile by: BLAKE3, keyed for this use, over
    /// [`Profile::describe`].
    pub fn hash(&self) -> Hash {
        let mut description = String::new();
        canonical(&self.describe(), &mut description);
        let mut hasher = blake3::Hasher::new_derive_key("agora 2026-12 execution profile");
        hasher.update(description.as_bytes());
        Hash::from_bytes(*hasher.finalize().as_bytes())
    }
}

/// `value` as compact JSON with every object's keys sorted: what `serde_json` writes depends on
/// whether some crate in the build turned on its `preserve_order` feature, and the hash must not.
fn canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::from(key.as_str()).to_string());
                out.push(':');
                canonical(value, out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The released profile's hash, pinned: a change to any setting, to the feature list or to
    /// wasmtime's fuel costs fails here, and must come with a new profile name (old receipts
    /// name the old profile, and a host would claim they re-run the same when they do not).
    #[test]
    fn agora_det_1_is_frozen() {
        assert_eq!(
            AGORA_DET_1.hash().to_hex().as_str(),
            "c0a3eba1800daf3bc56359fc74fc03f5335c056b70ce73d790fd308c57d6eb1d"
        );
    }

    #[test]
    fn the_profile_names_the_wasmtime_this_host_is_built_with() {
        let lock = include_str!("../../../Cargo.lock");
        let pinned = format!(
            "name = \"wasmtime\"\nversion = \"{}\"",
            AGORA_DET_1.wasmtime
        );
        assert!(lock.contains(&pinned), "Cargo.lock has no {pinned}");
        assert_eq!(
            crate::RUNTIME_VERSION,
            format!("wasmtime {}", AGORA_DET_1.wasmtime)
        );
    }

    #[test]
    fn the_hash_does_not_depend_on_the_order_keys_were_written_in() {
        let mut forwards = String::new();
        canonical(
            &serde_json::json!({"a": 1, "b": {"c": [1, {"e": 2, "d": 3}]}}),
            &mut forwards,
        );
        let mut backwards = serde_json::Map::new();
        backwards.insert("b".into(), serde_json::json!({"c": [1, {"d": 3, "e": 2}]}));
        backwards.insert("a".into(), 1.into());
        let mut written = String::new();
        canonical(&serde_json::Value::Object(backwards), &mut written);
        assert_eq!(forwards, written);
        assert_eq!(forwards, r#"{"a":1,"b":{"c":[1,{"d":3,"e":2}]}}"#);
    }

    #[test]
    fn every_switch_is_pinned_once() {
        let mut names: Vec<String> = AGORA_DET_1.features.iter().map(|f| f.0.name()).collect();
        let count = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), count, "a switch is listed twice");
    }

    #[test]
    fn the_description_covers_the_fuel_cost_of_operators() {
        let description = AGORA_DET_1.describe();
        let costs = description["fuel_costs"].as_object().expect("a table");
        assert!(costs.len() > 100, "{} operator costs", costs.len());
        assert!(costs.contains_key("variable"));
    }
}
