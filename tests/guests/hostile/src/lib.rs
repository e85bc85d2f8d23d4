//! A guest that misbehaves on request, one action per attack, for agora's sandbox tests.
//! Actions that probe a denied capability return what happened as text instead of trapping,
//! so a test can check the denial itself.

wit_bindgen::generate!({ path: "../../../wit", world: "agent" });

use agora::agent::host::{self, LogLevel};
use agora::agent::types::{AgentError, AgentInfo, Request};

struct Hostile;

fn text(s: impl Into<String>) -> Result<Vec<u8>, AgentError> {
    Ok(s.into().into_bytes())
}

fn payload_str(req: &Request) -> String {
    String::from_utf8_lossy(&req.payload).into_owned()
}

#[allow(unconditional_recursion)]
fn recurse_forever(depth: u64) -> u64 {
    let frame = [depth; 64];
    std::hint::black_box(&frame);
    recurse_forever(depth + 1) + frame[0]
}

/// Recursion whose frames hold only WebAssembly locals, never the shadow stack in linear memory:
/// what runs out is the engine's stack (the host's `max_wasm_stack`), not the guest's memory.
#[inline(never)]
fn recurse_natively(depth: u64) -> u64 {
    if std::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    std::hint::black_box(recurse_natively(depth + 1)).wrapping_add(depth)
}

impl exports::agora::agent::handler::Guest for Hostile {
    fn info() -> AgentInfo {
        AgentInfo {
            name: "hostile".into(),
            version: "0.1.0".into(),
            description: "misbehaves on request".into(),
            actions: vec!["echo".into(), "loop".into(), "grow-memory".into()],
        }
    }

    fn handle(req: Request) -> Result<Vec<u8>, AgentError> {
        match req.action.as_str() {
            "echo" => Ok(req.payload),
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "grow-memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "big-output" => Ok(vec![7u8; 100 << 20]),
            "panic" => panic!("the hostile guest panics on purpose"),
            "stack-overflow" => text(recurse_forever(0).to_string()),
            "native-stack-overflow" => text(recurse_natively(0).to_string()),
            // What a guest can learn of the world besides its input: every clock and random
            // source WASI offers, read twice.
            "world" => {
                let read = || {
                    let wall = wasi::clocks::wall_clock::now();
                    format!(
                        "wall {}.{:09} monotonic {} random {:016x} insecure {:016x} seed {:?}",
                        wall.seconds,
                        wall.nanoseconds,
                        wasi::clocks::monotonic_clock::now(),
                        wasi::random::random::get_random_u64(),
                        wasi::random::insecure::get_insecure_random_u64(),
                        wasi::random::insecure_seed::insecure_seed(),
                    )
                };
                text(format!("{}\n{}", read(), read()))
            }
            "open-file" => match std::fs::read(payload_str(&req)) {
                Ok(bytes) => text(format!("read {} bytes", bytes.len())),
                Err(e) => text(format!("denied: {e}")),
            },
            "write-file" => match std::fs::write("/tmp/agora-hostile", b"x") {
                Ok(()) => text("wrote"),
                Err(e) => text(format!("denied: {e}")),
            },
            "open-socket" => match std::net::TcpStream::connect(payload_str(&req)) {
                Ok(_) => text("connected"),
                Err(e) => text(format!("denied: {e}")),
            },
            "resolve" => {
                match std::net::ToSocketAddrs::to_socket_addrs(&(payload_str(&req).as_str(), 80)) {
                    Ok(addrs) => text(format!("resolved {} addresses", addrs.count())),
                    Err(e) => text(format!("denied: {e}")),
                }
            }
            "http" => {
                use wasi::http::outgoing_handler;
                use wasi::http::types::{Fields, OutgoingRequest, Scheme};
                let request = OutgoingRequest::new(Fields::new());
                let _ = request.set_scheme(Some(&Scheme::Http));
                let _ = request.set_authority(Some(&payload_str(&req)));
                let _ = request.set_path_with_query(Some("/"));
                match outgoing_handler::handle(request, None) {
                    Ok(response) => {
                        response.subscribe().block();
                        match response.get() {
                            Some(Ok(Ok(_))) => text("got a response"),
                            other => text(format!("denied: {other:?}")),
                        }
                    }
                    Err(e) => text(format!("denied: {e:?}")),
                }
            }
            "env" => text(format!(
                "{} vars, {} args",
                std::env::vars().count(),
                std::env::args().count()
            )),
            "log-flood" => loop {
                host::log(LogLevel::Info, &"flood ".repeat(200));
            },
            "empty-log-flood" => loop {
                host::log(LogLevel::Info, "");
            },
            "nul-keys" => {
                // Keys that begin with NUL, with 4 KiB values, until the quota says no; returns
                // the bytes of keys and values stored.
                let value = vec![7u8; 4096];
                let mut stored = 0usize;
                for i in 0..100_000u32 {
                    let key = format!("\0{i:0>250}");
                    if host::kv_set(&key, &value).is_err() {
                        break;
                    }
                    stored += key.len() + value.len();
                }
                text(stored.to_string())
            }
            "stdout-flood" => loop {
                println!("{}", "flood ".repeat(200));
            },
            // Calls the agent named in the payload with `recurse`, passing its own name on, and
            // reports how deep the chain went and what stopped it.
            "recurse" => {
                let me = payload_str(&req);
                let inner = Request {
                    action: "recurse".into(),
                    payload: req.payload.clone(),
                };
                match host::call_agent(&me, &inner) {
                    Ok(bytes) => {
                        let s = String::from_utf8_lossy(&bytes).into_owned();
                        let (depth, reason) = s.split_once(' ').unwrap_or(("0", ""));
                        let depth: u32 = depth.parse().unwrap_or(0);
                        text(format!("{} {reason}", depth + 1))
                    }
                    Err(e) => text(format!("0 {e:?}")),
                }
            }
            // Calls the agent named in the payload with `loop`, then reports what happened.
            "call-loop" => {
                let callee = payload_str(&req);
                let inner = Request {
                    action: "loop".into(),
                    payload: vec![],
                };
                let result = host::call_agent(&callee, &inner);
                text(format!("callee: {result:?}"))
            }
            "kv" => {
                let previous = host::kv_get("counter")
                    .map(|b| String::from_utf8_lossy(&b).parse::<u64>().unwrap_or(0))
                    .unwrap_or(0);
                host::kv_set("counter", (previous + 1).to_string().as_bytes())
                    .map_err(AgentError::Internal)?;
                text((previous + 1).to_string())
            }
            // Over the value quota, within what one host call may carry.
            "kv-hog" => match host::kv_set("hog", &vec![0u8; 512 << 10]) {
                Ok(()) => text("stored"),
                Err(e) => text(format!("refused: {e}")),
            },
            // One log message of 16 MiB: more than the host takes in one crossing.
            "big-log" => {
                host::log(LogLevel::Info, &"x".repeat(16 << 20));
                text("logged")
            }
            // A 100 MiB payload to the agent named in the payload.
            "big-call-payload" => {
                let inner = Request {
                    action: "echo".into(),
                    payload: vec![1u8; 100 << 20],
                };
                let result = host::call_agent(&payload_str(&req), &inner);
                text(format!("callee: {:?}", result.map(|r| r.len())))
            }
            // Holds wasi:http fields objects, 4 KiB of headers each, until the host stops handing
            // out more; reports how many it got if it ever stops asking.
            "fields-hoard" => {
                use wasi::http::types::Fields;
                let mut hoard = Vec::new();
                let value = vec![b'v'; 1024];
                for _ in 0..1_000_000u32 {
                    let fields = Fields::new();
                    for header in 0..4 {
                        let _ = fields.append(&format!("x-{header}"), &value);
                    }
                    hoard.push(fields);
                }
                text(format!("held {} fields objects", hoard.len()))
            }
            // Stores `payload` bytes under "blob".
            "kv-write" => {
                let size: usize = payload_str(&req).parse().unwrap_or(0);
                host::kv_set("blob", &vec![b'b'; size]).map_err(AgentError::Internal)?;
                text("written")
            }
            // Reads "blob" as many times as the payload says; returns the bytes read.
            "kv-read" => {
                let times: usize = payload_str(&req).parse().unwrap_or(0);
                let read: usize = (0..times)
                    .map(|_| host::kv_get("blob").map_or(0, |value| value.len()))
                    .sum();
                text(read.to_string())
            }
            // Holds as many MiB as the payload says, then spins until stopped.
            "hold-memory" => {
                let mib: usize = payload_str(&req).parse().unwrap_or(0);
                let hoard = vec![1u8; mib << 20];
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(
                        x.wrapping_add(u64::from(hoard[x as usize % hoard.len().max(1)])),
                    );
                }
            }
            // Spins reading the clock: a WASI host call that moves nothing and costs the guest
            // only the call itself.
            "clock-spin" => {
                let started = std::time::Instant::now();
                let mut reads = 0u64;
                loop {
                    reads += 1;
                    if std::hint::black_box(started.elapsed()).as_secs() > 3600 {
                        return text(reads.to_string());
                    }
                }
            }
            "unreachable" => std::process::abort(),
            other => Err(AgentError::BadRequest(format!("unknown action {other}"))),
        }
    }
}

export!(Hostile);
