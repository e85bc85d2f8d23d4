//! Compiling untrusted components, bounded in time and, in a child process, in memory.
//!
//! Cranelift's memory grows with the size and shape of the code it compiles, and a component is
//! untrusted input: one crafted function could make an in-process compile take the host's
//! memory. [`Compiler::Process`] compiles in a child process (`<program> compile-worker`) that
//! sets its own `RLIMIT_DATA` to [`Limits::max_compile_memory_bytes`] before it reads the
//! component, and is killed at [`Limits::max_compile_time`]. A compile that runs out of its
//! memory, crashes the compiler or overruns its time ends the child, never the host, and the
//! component is refused with a typed error and remembered as bad.
//!
//! The child runs this host's own binary with the engine configuration the parent derives from
//! the same limits, and the parent loads what it returns exactly as it loads code it compiled
//! itself (wasmtime checks the engine configuration again when deserialising). It is trusted as
//! much as an in-process compile: no less, since it is the same code, and no more.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use wasmtime::Engine;

use super::truncate;
use crate::error::CheckError;
use crate::limits::Limits;

/// Where a [`Sandbox`](super::Sandbox) compiles components.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Compiler {
    /// On a thread of this process: bounded in time (the thread is abandoned at the deadline and
    /// finishes in the background), not in memory. The library's default, since a library
    /// cannot know which program to start.
    #[default]
    InProcess,
    /// In a child process, `program compile-worker …`, bounded in time (killed at the deadline)
    /// and in memory ([`Limits::max_compile_memory_bytes`]). `program` must be the `agora`
    /// binary of the same build; the `agora` command uses itself.
    Process(PathBuf),
}

impl Compiler {
    /// Compiling in a child process of the running executable, which must be the `agora` binary
    /// (or another that answers `compile-worker` with [`serve_compile_worker`]).
    pub fn this_executable() -> std::io::Result<Self> {
        Ok(Compiler::Process(std::env::current_exe()?))
    }
}

/// Exit code of a worker whose input did not compile (the message is on its stderr).
const EXIT_INVALID: i32 = 2;
/// Exit code of a worker that could not set its memory bound.
const EXIT_NO_BOUND: i32 = 3;
/// What a worker prints when it runs out of its memory: Rust's message for a failed allocation
/// (before it aborts), or the OS error of a thread or mapping it could not get.
const OUT_OF_MEMORY: &[&str] = &["memory allocation of", "Cannot allocate memory"];
/// Most of a worker's stderr kept for an error message.
const MAX_STDERR: u64 = 4 << 10;

/// Compiles `bytes` with `engine` as `compiler` says, into the serialised form
/// [`wasmtime::component::Component::deserialize`] reads.
pub(super) fn compile(
    engine: &Engine,
    compiler: &Compiler,
    limits: &Limits,
    bytes: &[u8],
) -> Result<Vec<u8>, CheckError> {
    match compiler {
        Compiler::InProcess => compile_on_thread(engine, bytes, limits.max_compile_time),
        Compiler::Process(program) => compile_in_child(program, limits, bytes),
    }
}

fn compile_on_thread(
    engine: &Engine,
    bytes: &[u8],
    deadline: Duration,
) -> Result<Vec<u8>, CheckError> {
    let (done, result) = mpsc::sync_channel(1);
    let engine = engine.clone();
    let bytes = bytes.to_vec();
    std::thread::Builder::new()
        .name("agora-compile".into())
        .spawn(move || {
            let _ = done.send(engine.precompile_component(&bytes));
        })
        .map_err(|e| CheckError::Invalid(format!("cannot start a compiler thread: {e}")))?;
    match result.recv_timeout(deadline) {
        Ok(Ok(artifact)) => Ok(artifact),
        Ok(Err(error)) => Err(CheckError::Invalid(truncate(&format!("{error:#}"), 2048))),
        Err(_) => Err(CheckError::CompileTimeout { limit: deadline }),
    }
}

fn compile_in_child(
    program: &PathBuf,
    limits: &Limits,
    bytes: &[u8],
) -> Result<Vec<u8>, CheckError> {
    let start_failed = |e: std::io::Error| {
        CheckError::Invalid(format!(
            "cannot start the compiler process {}: {e}",
            program.display()
        ))
    };
    let mut child = Command::new(program)
        .arg("compile-worker")
        .arg("--memory-bytes")
        .arg(limits.max_compile_memory_bytes.to_string())
        .arg("--max-wasm-stack")
        .arg(limits.max_wasm_stack.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .spawn()
        .map_err(start_failed)?;
    let (Some(mut stdin), Some(mut stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(CheckError::Invalid(
            "the compiler process has no pipes".into(),
        ));
    };
    // Pipes are drained on threads of their own so that neither side blocks the other, and the
    // deadline below holds whatever the child does.
    let input = bytes.to_vec();
    let feeder = std::thread::spawn(move || {
        // A child that dies early closes the pipe; its exit status says why.
        let _ = stdin.write_all(&input);
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.take(MAX_STDERR).read_to_string(&mut text);
        text
    });
    let (done, output) = mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut artifact = Vec::new();
        let read = stdout.read_to_end(&mut artifact).map(|_| artifact);
        let _ = done.send(read);
    });
    let artifact = match output.recv_timeout(limits.max_compile_time) {
        Ok(artifact) => artifact,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(CheckError::CompileTimeout {
                limit: limits.max_compile_time,
            });
        }
    };
    let status = child
        .wait()
        .map_err(|e| CheckError::Invalid(format!("waiting for the compiler process: {e}")))?;
    let _ = feeder.join();
    let stderr = stderr_reader.join().unwrap_or_default();
    let stderr = stderr.trim();
    if status.success() {
        return artifact
            .map_err(|e| CheckError::Invalid(format!("reading the compiler's output: {e}")));
    }
    if OUT_OF_MEMORY.iter().any(|sign| stderr.contains(sign)) {
        return Err(CheckError::CompileMemory {
            limit: limits.max_compile_memory_bytes,
        });
    }
    Err(match status.code() {
        Some(EXIT_INVALID) => CheckError::Invalid(truncate(stderr, 2048)),
        _ => CheckError::CompilerCrashed {
            status: status.to_string(),
            message: truncate(stderr, 2048),
        },
    })
}

/// The child's side: bounds its own memory, reads a component from stdin, compiles it with the
/// engine configuration for `limits` and writes the compiled code to stdout. Returns the
/// process's exit code; a compile that exhausts the bound aborts the process (Rust's handling of
/// a failed allocation), which the parent reports as [`CheckError::CompileMemory`].
pub fn serve_compile_worker(limits: &Limits) -> i32 {
    if let Err(error) = bound_memory(limits.max_compile_memory_bytes) {
        eprintln!("cannot bound the compiler's memory: {error}");
        return EXIT_NO_BOUND;
    }
    // The parent checked the component's size against its own limit; the memory bound above
    // holds whatever arrives.
    let mut bytes = Vec::new();
    if let Err(error) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("reading the component: {error}");
        return EXIT_INVALID;
    }
    let engine = match Engine::new(&super::engine::compile_config(limits)) {
        Ok(engine) => engine,
        Err(error) => {
            eprintln!("building the engine: {error:#}");
            return EXIT_INVALID;
        }
    };
    match engine.precompile_component(&bytes) {
        Ok(artifact) => match std::io::stdout().lock().write_all(&artifact) {
            Ok(()) => 0,
            Err(error) => {
                eprintln!("writing the compiled code: {error}");
                EXIT_INVALID
            }
        },
        Err(error) => {
            eprintln!("{error:#}");
            EXIT_INVALID
        }
    }
}

/// Limits this process's data (heap, anonymous writable mappings, thread stacks) to `bytes`.
#[cfg(unix)]
fn bound_memory(bytes: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: bytes as libc::rlim_t,
        rlim_max: bytes as libc::rlim_t,
    };
    // SAFETY: setrlimit reads the struct it is given and touches nothing else.
    if unsafe { libc::setrlimit(libc::RLIMIT_DATA, &limit) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
fn bound_memory(_bytes: u64) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "memory bounds need setrlimit (a Unix system)",
    ))
}
