//! Why a component is refused.

/// A component refused at publish (or fetch) time.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// Larger than the host accepts.
    #[error("component is {size} bytes; this host accepts at most {limit}")]
    TooLarge {
        /// The component's size.
        size: u64,
        /// The host's limit.
        limit: u64,
    },
    /// A core module or other bytes where a component was expected.
    #[error(
        "not a WebAssembly component ({0}); build agents for wasm32-wasip2 or with a component toolchain"
    )]
    NotAComponent(String),
    /// Bytes that do not validate or compile.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// Imports outside the `agora:agent/host` interface and WASI 0.2.
    #[error("component imports interfaces outside agora:agent and WASI 0.2: {}", imports.join(", "))]
    ForbiddenImports {
        /// The offending import names.
        imports: Vec<String>,
    },
    /// The component does not export `agora:agent/handler`.
    #[error("component does not export agora:agent/handler@0.1.x (it exports: {})", if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") })]
    MissingHandler {
        /// What it exports instead.
        exports: Vec<String>,
    },
    /// The imports are allowed by name but do not link (e.g. a function with the wrong signature).
    #[error("component does not link against this host: {0}")]
    Link(String),
    /// Calling `info()` failed.
    #[error("component's info() failed: {0}")]
    Info(String),
    /// Compiling took longer than the host allows; the component is refused from now on.
    #[error("component took longer than {limit:?} to compile; this host refuses it")]
    CompileTimeout {
        /// The host's limit ([`Limits::max_compile_time`](crate::Limits::max_compile_time)).
        limit: std::time::Duration,
    },
    /// Compiling needed more memory than the host allows; the component is refused from now on.
    #[error("component needs more than {limit} bytes of memory to compile; this host refuses it")]
    CompileMemory {
        /// The host's limit
        /// ([`Limits::max_compile_memory_bytes`](crate::Limits::max_compile_memory_bytes)).
        limit: u64,
    },
    /// The compiler process ended without a result (a crash in the compiler, not in the host);
    /// the component is refused from now on.
    #[error("compiling the component crashed the compiler process ({status}): {message}")]
    CompilerCrashed {
        /// How the process ended.
        status: String,
        /// What it printed, cut to a bound.
        message: String,
    },
}
