//! HTTP invocation under load, beside `wasmtime serve` in the same run.
//!
//! - agora: `POST /v1/invoke` of `cpu-kernel echo` with a fresh caller-signed request each time
//!   (1,000 callers, each request used once: the host verifies the signature, admits the caller,
//!   records the request against replay, runs the agent in a fresh instance, signs and commits
//!   the receipt, and answers with it), served by the real API server on loopback; once with
//!   receipts handed out after their commit (the default), once as soon as they are signed;
//! - anchor: `wasmtime serve` (wasmtime-cli of the wasmtime agora embeds) running
//!   `tests/guests/http-hello`, which answers `hi` like `echo` does, a fresh instance per
//!   request, as wasmtime serves by default.
//!
//! Both are driven by `wrk` from a second process with the same threads and connections; agora's
//! requests come from a Lua script cycling through requests signed before the run.
//!
//! `just bench-http` installs what it needs (wrk from Debian, wasmtime-cli with cargo) and runs
//! it; by hand: `AGORA_WASMTIME=/path/to/wasmtime cargo bench -p agora-tests --bench
//! http_invoke` (`-- --quick` for 3 s runs).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agora_host::api::{ApiConfig, ApiServer};
use agora_host::invoke::InvokeMessage;
use agora_host::{DataDir, Limits, Node, NodeConfig, PublishOptions};
use agora_registry::{ReceiptDurability, SecretKey};
use agora_tests::{CPU_KERNEL, HTTP_HELLO};
use anyhow::{Context, bail};

/// The wasmtime-cli version to compare with: the wasmtime agora embeds.
const WASMTIME_VERSION: &str = "48.0.8";
/// wrk's threads and connections for both servers. 32 connections is the API's default number
/// of invocations running at once, so agora is measured without shedding load.
const WRK_THREADS: usize = 2;
const WRK_CONNECTIONS: usize = 32;
/// Callers the pre-signed requests come from: each caller's rate stays under the API's default
/// per-caller limit (20 a second).
const CALLERS: usize = 1_000;

const LUA: &str = r#"
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
function init(args)
  requests = {}
  for body in io.lines(args[1] .. "." .. id) do
    requests[#requests + 1] = wrk.format("POST", "/v1/invoke",
      { ["Content-Type"] = "application/json" }, body)
  end
  next_request = 0
end
function request()
  next_request = next_request % #requests + 1
  return requests[next_request]
end
"#;

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    // As the `agora` binary runs; `wasmtime serve` inherits it too, so neither side captures a
    // backtrace for each error wasmtime makes and drops (with RUST_BACKTRACE=1 set, both did).
    // SAFETY: no other thread exists yet.
    unsafe { agora_host::without_error_backtraces() };
    let duration = if quick { 3 } else { 10 };
    let wasmtime = wasmtime_cli()?;
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk not found: install it (apt install wrk), or run `just bench-http`");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "HTTP invoke under wrk ({WRK_THREADS} threads, {WRK_CONNECTIONS} connections, {duration} s each), {cores} cores, same run"
    );
    let dir = tempfile::tempdir()?;

    // The anchor first, so agora's pre-signed requests are fresh when its run starts.
    let hello = dir.path().join("http_hello.wasm");
    std::fs::write(&hello, HTTP_HELLO)?;
    let port = free_port()?;
    let mut serve = WasmtimeServe::start(&wasmtime, &hello, port)?;
    let anchor = wrk(&format!("http://127.0.0.1:{port}/"), duration, None)?;
    serve.stop();

    let agora = runtime.block_on(agora_run(
        &dir.path().join("committed"),
        duration,
        ReceiptDurability::Committed,
    ))?;
    let pipelined = runtime.block_on(agora_run(
        &dir.path().join("pipelined"),
        duration,
        ReceiptDurability::Pipelined,
    ))?;

    println!();
    println!(
        "| server | requests/s | p50 | p99 | non-2xx | ratio to wasmtime serve (requests/s) |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| wasmtime serve {WASMTIME_VERSION}, http-hello | {:.0} | {} | {} | {} | 1.00× |",
        anchor.rate, anchor.p50, anchor.p99, anchor.non_2xx
    );
    for (receipts, figures) in [("committed", agora), ("pipelined", pipelined)] {
        println!(
            "| agora POST /v1/invoke, cpu-kernel echo, signed request, receipts {receipts} | {:.0} | {} | {} | {} | {:.2}× |",
            figures.rate,
            figures.p50,
            figures.p99,
            figures.non_2xx,
            figures.rate / anchor.rate
        );
    }
    Ok(())
}

/// Publishes the kernel, signs the requests, serves the API and loads it with wrk.
async fn agora_run(
    dir: &Path,
    duration: u64,
    receipts: ReceiptDurability,
) -> anyhow::Result<Figures> {
    std::fs::create_dir_all(dir)?;
    let data_dir = DataDir::new(dir.join("agora"));
    data_dir.keygen()?;
    let node = Node::open(
        NodeConfig::new(data_dir)
            .limits(Limits::default())
            .receipts(receipts),
    )
    .await?;
    let agent = node
        .publish(CPU_KERNEL, PublishOptions::default())
        .await?
        .manifest
        .hash();
    let server = ApiServer::start(node.clone(), ApiConfig::default()).await?;

    // Enough for a run at 12,000 calls a second; a request used twice would be refused (409),
    // which the figures would show as non-2xx answers.
    let requests = 12_000 * duration as usize;
    let clock = Instant::now();
    let callers: Vec<SecretKey> = (0..CALLERS).map(|_| SecretKey::generate()).collect();
    let bodies = dir.join("requests");
    let mut files = (0..WRK_THREADS)
        .map(|thread| std::fs::File::create(bodies.with_extension(thread.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    for i in 0..requests {
        let (_, message) = InvokeMessage::sign(
            &callers[i % CALLERS],
            node.public_key(),
            agent,
            "echo",
            "hi",
            10_000_000,
        )?;
        let line = serde_json::to_string(&message)?;
        writeln!(files[i % WRK_THREADS], "{line}")?;
    }
    drop(files);
    println!(
        "signed {requests} requests from {CALLERS} callers in {:.1} s",
        clock.elapsed().as_secs_f64()
    );
    let script = dir.join("invoke.lua");
    std::fs::write(&script, LUA)?;
    let url = format!("http://{}/", server.addr());
    let args = [script.display().to_string(), bodies.display().to_string()];
    let figures = tokio::task::spawn_blocking(move || wrk(&url, duration, Some(&args))).await??;
    server.shutdown().await;
    node.shutdown().await?;
    Ok(figures)
}

/// What wrk reported.
struct Figures {
    rate: f64,
    p50: String,
    p99: String,
    non_2xx: u64,
}

/// Runs wrk against `url` for `seconds`, with a script and its arguments if given.
fn wrk(url: &str, seconds: u64, script: Option<&[String; 2]>) -> anyhow::Result<Figures> {
    let mut command = Command::new("wrk");
    command.args([
        format!("-t{WRK_THREADS}"),
        format!("-c{WRK_CONNECTIONS}"),
        format!("-d{seconds}s"),
        "--latency".into(),
    ]);
    if let Some([lua, bodies]) = script {
        command.args(["-s", lua, url, "--", bodies]);
    } else {
        command.arg(url);
    }
    let output = command.output().context("running wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned()))
    };
    let rate = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))?;
    let non_2xx = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Figures {
        rate,
        p50: field("50%").unwrap_or_else(|| "?".into()),
        p99: field("99%").unwrap_or_else(|| "?".into()),
        non_2xx,
    })
}

/// The wasmtime-cli to compare with: `AGORA_WASMTIME`, or where `just bench-http` installs it.
fn wasmtime_cli() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("AGORA_WASMTIME").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/toolchains")
                .join(format!("wasmtime-{WASMTIME_VERSION}"))
                .join("bin/wasmtime")
        },
        PathBuf::from,
    );
    let version = Command::new(&path)
        .arg("--version")
        .output()
        .with_context(|| {
            format!(
                "wasmtime-cli not found at {}: run `just bench-http`, or set AGORA_WASMTIME",
                path.display()
            )
        })?;
    let version = String::from_utf8_lossy(&version.stdout);
    if !version.contains(WASMTIME_VERSION) {
        bail!(
            "{} is {}, not wasmtime-cli {WASMTIME_VERSION}, the wasmtime agora embeds",
            path.display(),
            version.trim()
        );
    }
    Ok(path)
}

/// A port nobody listens on now.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A `wasmtime serve` process, killed when dropped.
struct WasmtimeServe(Child);

impl WasmtimeServe {
    fn start(wasmtime: &Path, component: &Path, port: u16) -> anyhow::Result<Self> {
        let child = Command::new(wasmtime)
            .arg("serve")
            // The component's Rust standard library imports wasi:cli (environment, exit).
            .arg("-Scli")
            .arg(format!("--addr=127.0.0.1:{port}"))
            .arg(component)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting wasmtime serve")?;
        let serve = WasmtimeServe(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if answers_hi(addr) {
                return Ok(serve);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("wasmtime serve did not answer on {addr} within 60 s")
    }

    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for WasmtimeServe {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `addr` answers a GET with `hi`.
fn answers_hi(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    // The body comes chunked.
    answer.starts_with("HTTP/1.1 200") && answer.contains("\r\nhi\r\n")
}
