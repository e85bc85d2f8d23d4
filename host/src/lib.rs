//! The agora host: runs untrusted marketplace agents in a metered wasmtime sandbox and signs a
//! receipt for every execution.
//!
//! - [`Sandbox`] (the [`agora-sandbox`](sandbox) crate, re-exported) checks components (a valid component under a size cap, exporting
//!   `agora:agent/handler`, importing only `agora:agent/host` and WASI 0.2) and runs each call
//!   in a fresh store, instantiated from a pool, under fuel, memory, stack, wall-clock, output
//!   and log [`Limits`], under the deterministic execution profile [`AGORA_DET_1`] that every
//!   receipt names (the same component on the same input spends the same fuel on any host).
//!   It compiles a component once and keeps this host's compiled code on
//!   disk, authenticated, so a restart never compiles again. It reaches agent memory and other
//!   agents only through [`sandbox::HostServices`], which the node answers.
//! - [`Node`] is a host: its key, its [`agora_registry::Registry`] and its [`BlobStore`].
//!   [`Node::publish`] signs a manifest for a component; [`Node::run`] executes an agent and
//!   returns an [`Execution`] with the output (or a typed [`ExecutionError`]) and the signed
//!   receipt.
//! - [`net::Network`] puts a node on iroh: its key is its node id, it serves its blobs, fetches
//!   agents by manifest hash from peers with verified streaming, and learns of agents through
//!   the marketplace gossip topic, and re-executes a sample of other hosts' receipts to check
//!   them ([`net::AuditConfig`]). Local-only unless configured otherwise.
//! - [`api::ApiServer`] serves the registry and reputation over HTTP (`/v1`, `/healthz`,
//!   `/metrics`, an OpenAPI document) and accepts signed receipts, feedback and caller-signed
//!   invocations; [`client::ApiClient`] is its client.
//! - [`invoke`] calls an agent on another host with a caller-signed request, over HTTP or iroh
//!   ([`net::invoke`]), admits such calls on the host ([`invoke::Admission`]), and checks the
//!   signed receipt a caller gets back.
//! - [`model`] holds the language models a host offers its agents, and [`egress`] decides where
//!   their granted outbound HTTP may go.
//! - [`examples`] holds the example agents, compiled from `guest-examples/` when this crate is
//!   built, and [`demo`] runs the marketplace demo with them.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use agora_host::{DataDir, Node, NodeConfig, PublishOptions, examples};
//!
//! let dir = DataDir::new("/tmp/agora-example");
//! dir.keygen()?;
//! let node = Node::open(NodeConfig::new(dir)).await?;
//! let published = node.publish(examples::RIDE_DRIVER, PublishOptions::default()).await?;
//! let quote = br#"{"distance_km": 12.5, "minutes": 25, "demand": 1.2}"#;
//! let execution = node.run(&published.manifest.hash().to_hex(), "quote", quote, None).await?;
//! println!("{}", String::from_utf8_lossy(&execution.into_output()?));
//! # Ok(()) }
//! ```

pub mod api;
mod blobs;
pub mod client;
pub mod demo;
pub mod egress;
mod error;
pub mod examples;
pub mod invoke;
pub mod model;
pub mod net;
mod node;
pub mod report;
pub mod sync;
pub mod tls;

/// The sandbox agents run in (the `agora-sandbox` crate).
pub use agora_sandbox as sandbox;
pub use agora_sandbox::{
    AGORA_DET_1, AgentError, AgentInfo, Allocation, CacheStats, CheckedComponent, Compiler,
    Divergence, Feature, Limits, LogLevel, LogLine, Profile, RUNTIME_VERSION, Request, Sandbox,
    SandboxStats, serve_compile_worker,
};
pub use blobs::{BlobError, BlobStore};
pub use error::{CheckError, ExecutionError, OpenError, PublishError, RunError};
pub use node::{
    DataDir, Execution, FraudError, FraudRecorded, Node, NodeConfig, PublishOptions, Published,
    ReexecuteError, Reexecution, Verdict,
};

/// Stops library errors from capturing backtraces unless `RUST_LIB_BACKTRACE` asks for them.
///
/// Errors are values on a host's busiest path: every guest trap is one, and wasmtime makes one
/// when it disposes of a store's idle worker fiber after every call. With `RUST_BACKTRACE=1`
/// set (common on developer machines and in CI), each would walk and record the stack: measured
/// at a fifth of a warm call. Panics still print their backtraces under `RUST_BACKTRACE`; agora's
/// errors name their cause without one. The `agora` binary calls this first thing.
///
/// # Safety
///
/// It sets an environment variable: call it before any other thread exists.
pub unsafe fn without_error_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: the caller guarantees no other thread reads the environment meanwhile.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}
