//! The host's ceilings for untrusted agents. One struct, every field with its unit and default.

use std::time::Duration;

use agora_registry::{KvQuota, ManifestLimits, StrangerQuotas};

/// Everything a host bounds. A call runs under the lower of these and its manifest's limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest component accepted at publish or fetch, in bytes. Default 64 MiB: components
    /// that embed a language runtime are large (componentize-py about 18 MiB, componentize-js
    /// about 12 MiB). Larger ones are refused before they are read or compiled.
    pub max_component_bytes: u64,
    /// Longest one component may take to compile. Default 120 s (a 12 MiB componentize-js
    /// component takes about 9 s on one core). A component that takes longer is refused with
    /// [`CheckError::CompileTimeout`](crate::CheckError::CompileTimeout) and remembered as bad, so
    /// it is never compiled again by this process; a compiler process is killed, an in-process
    /// compiler thread finishes in the background.
    pub max_compile_time: Duration,
    /// Memory one compile may use, in bytes, when components are compiled in a child process
    /// ([`Compiler::Process`](crate::Compiler::Process), what the `agora` command does): the
    /// compiler's heap, mappings and thread stacks together (`RLIMIT_DATA`). Default 2 GiB (the
    /// componentize-js and componentize-py example agents, 12 and 18 MiB, peak at about 450 MB
    /// resident). A component that needs more is
    /// refused with [`CheckError::CompileMemory`](crate::CheckError::CompileMemory) and
    /// remembered as bad; the host is untouched. Not enforced for in-process compiles.
    pub max_compile_memory_bytes: u64,
    /// Compiled agents kept loaded in memory, least recently used evicted first. Default 1,000.
    /// A warm call of a loaded agent does no disk I/O and no compilation; an evicted one is
    /// loaded again from the compiled-code cache on disk (milliseconds).
    pub max_loaded_agents: usize,
    /// Compiled code kept on disk in the data dir's `compiled/`, in bytes. Default 4 GiB; the
    /// least recently used entries are deleted past it. 0 turns the disk cache off.
    pub max_compiled_cache_bytes: u64,
    /// Component instances the pooling instance allocator keeps slots for, which bounds how many
    /// calls (nested calls included) run at once: top-level calls beyond
    /// `pooled_instances / (max_call_depth + 1)` wait for a slot. Default 1,000, reserving about
    /// 16 TiB of address space (not memory); if the machine cannot reserve it the host logs a
    /// warning and allocates on demand instead. 0 turns pooling off.
    pub pooled_instances: u32,
    /// Fuel for a call whose caller names no budget. Default 1e9 (about 50 ms of tight loop).
    pub default_fuel: u64,
    /// Most fuel any call may have. Default 1e11.
    pub max_fuel: u64,
    /// Linear memory of one instance, all memories together, in bytes. Default 128 MiB.
    pub max_memory_bytes: u64,
    /// Linear memory of every call running at once, together, in bytes. Default 8 GiB. A
    /// top-level call starts only when its own memory limit (at most all of this) is free,
    /// waiting up to 1 s for it, else it is refused (`RunError::HostBusy`, HTTP 503). A call that
    /// grows past what is left ends `host-memory`, which is never blamed on the agent.
    pub max_guest_memory_bytes: u64,
    /// Elements of all tables of one instance together. Default 100,000.
    pub max_table_elements: usize,
    /// Core instances, memories and tables one component may create. Default 64 each.
    pub max_instances: usize,
    /// Native stack a guest may use, in bytes. Default 512 KiB.
    pub max_wasm_stack: usize,
    /// Wall-clock time of one call. Default 5 s.
    pub max_wall: Duration,
    /// Output of one call, in bytes. Default 1 MiB.
    pub max_output_bytes: u64,
    /// Most bytes a guest may hand the host in one crossing: its result, or the arguments of one
    /// host call (a log message before it is truncated, a kv value, a `call-agent` payload,
    /// WASI data), every string and list in it counted, aliases included. Default 1 MiB +
    /// 64 KiB (the output cap and room for its envelope). Over it the call ends `output-limit`
    /// before the host copies anything (wasmtime's hostcall fuel).
    pub max_transfer_bytes: usize,
    /// Host resources (WASI streams and pollables, `wasi:http` fields, …) one call may hold at
    /// once. Default 1,000. Over it the call traps.
    pub max_resource_handles: usize,
    /// Everything one call may log (host `log`, stdout and stderr each), in bytes. Default 64 KiB.
    pub max_log_bytes: usize,
    /// One `log` message; longer ones are truncated. Default 1 KiB.
    pub max_log_message_bytes: usize,
    /// Depth of `call-agent` chains: a top-level call is depth 0. Default 4.
    pub max_call_depth: u32,
    /// Outbound HTTP requests one call may make, where its manifest declares the origins and the
    /// host grants them. Default 16. Past it a request fails with `connection-limit-reached`
    /// before it leaves the sandbox.
    pub max_http_requests: u32,
    /// Body of one outbound request, in bytes. Default 1 MiB. A larger body fails the request
    /// with `HTTP-request-body-size`; nothing is sent.
    pub max_http_request_bytes: u64,
    /// One outbound response, headers and body, in bytes. Default 256 KiB: the transcript keeps
    /// every response (in hex) for replay, so 16 of them fill at most 8 MiB of its 16. A larger
    /// response is cut: the request fails with `HTTP-response-body-size` and the bytes read are
    /// counted in the receipt.
    pub max_http_response_bytes: u64,
    /// Longest one outbound request may take: resolving, connecting, sending and reading the
    /// whole response. Default 10 s, and never past the call's own deadline (HTTP time counts
    /// as the agent's wall time). Past it the request fails with `connection-timeout`.
    pub max_http_time: Duration,
    /// Each agent's persistent memory on this host.
    pub kv: KvQuota,
    /// What keys this host does not trust may have stored here: manifests, waiting records,
    /// receipts and feedback, per key and in all. Defaults and what happens at each limit:
    /// [`StrangerQuotas`].
    pub strangers: StrangerQuotas,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_component_bytes: 64 << 20,
            max_compile_time: Duration::from_secs(120),
            max_compile_memory_bytes: 2 << 30,
            max_loaded_agents: 1_000,
            max_compiled_cache_bytes: 4 << 30,
            pooled_instances: 1_000,
            default_fuel: 1_000_000_000,
            max_fuel: 100_000_000_000,
            max_memory_bytes: 128 << 20,
            max_guest_memory_bytes: 8 << 30,
            max_table_elements: 100_000,
            max_instances: 64,
            max_wasm_stack: 512 << 10,
            max_wall: Duration::from_secs(5),
            max_output_bytes: 1 << 20,
            max_transfer_bytes: (1 << 20) + (64 << 10),
            max_resource_handles: 1_000,
            max_log_bytes: 64 << 10,
            max_log_message_bytes: 1 << 10,
            max_call_depth: 4,
            max_http_requests: 16,
            max_http_request_bytes: 1 << 20,
            max_http_response_bytes: 256 << 10,
            max_http_time: Duration::from_secs(10),
            kv: KvQuota::default(),
            strangers: StrangerQuotas::default(),
        }
    }
}

impl Limits {
    /// The manifest limits a publisher gets when it names none: this host's ceilings.
    pub fn manifest_defaults(&self) -> ManifestLimits {
        ManifestLimits {
            max_fuel: self.max_fuel,
            max_memory_bytes: self.max_memory_bytes,
            max_wall_ms: self.max_wall.as_millis() as u64,
            max_output_bytes: self.max_output_bytes,
        }
    }

    /// The limits one call of an agent runs under: the lower of the host's and the manifest's.
    pub fn for_call(&self, manifest: &ManifestLimits) -> CallLimits {
        CallLimits {
            max_fuel: self.max_fuel.min(manifest.max_fuel),
            max_memory_bytes: self.max_memory_bytes.min(manifest.max_memory_bytes),
            max_wall: self
                .max_wall
                .min(Duration::from_millis(manifest.max_wall_ms)),
            max_output_bytes: self.max_output_bytes.min(manifest.max_output_bytes),
        }
    }
}

/// The per-call limits after combining host and manifest.
#[derive(Clone, Copy, Debug)]
pub struct CallLimits {
    pub max_fuel: u64,
    pub max_memory_bytes: u64,
    pub max_wall: Duration,
    pub max_output_bytes: u64,
}
