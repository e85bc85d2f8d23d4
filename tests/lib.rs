//! Test harness for agora's system tests: real hosts in temporary data dirs, running real
//! components built from `guest-examples/` and from the hostile guests in `tests/guests/`.

use agora_host::{DataDir, Limits, Node, NodeConfig, PublishOptions};
use agora_registry::{SignedManifest, SignedReceipt};

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// A host in its own temporary data dir, removed when dropped.
pub struct TestHost {
    /// The host.
    pub node: Node,
    /// Keeps the data dir alive.
    pub dir: tempfile::TempDir,
}

impl TestHost {
    /// A host with default limits.
    pub async fn new() -> Self {
        Self::with_limits(Limits::default()).await
    }

    /// A host with the given limits.
    pub async fn with_limits(limits: Limits) -> Self {
        Self::with_config(|config| config.limits(limits)).await
    }

    /// A host whose configuration `configure` makes from the default one.
    pub async fn with_config(configure: impl FnOnce(NodeConfig) -> NodeConfig) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = DataDir::new(dir.path());
        data_dir.keygen().expect("keygen");
        let node = Node::open(configure(NodeConfig::new(data_dir)))
            .await
            .expect("open node");
        TestHost { node, dir }
    }

    /// Publishes `component` with default options.
    pub async fn publish(&self, component: &[u8]) -> SignedManifest {
        self.node
            .publish(component, PublishOptions::default())
            .await
            .expect("publish")
            .manifest
    }

    /// Publishes `component` under `name`.
    pub async fn publish_as(&self, component: &[u8], name: &str) -> SignedManifest {
        self.node
            .publish(
                component,
                PublishOptions {
                    name: Some(name.into()),
                    ..PublishOptions::default()
                },
            )
            .await
            .expect("publish")
            .manifest
    }

    /// The input and transcript this host keeps for its `receipt`, as a verifier fetches them.
    pub fn kept(&self, receipt: &SignedReceipt) -> (Vec<u8>, Vec<u8>) {
        let body = receipt.body();
        let registry = self.node.registry();
        let input = registry.call_data(&body.input_hash).expect("read input");
        let transcript = registry
            .call_data(
                &body
                    .transcript
                    .expect("a receipt names its transcript")
                    .hash,
            )
            .expect("read transcript");
        (
            input.expect("input kept"),
            transcript.expect("transcript kept"),
        )
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// A request signed by `caller` for `host` to run `action` with `payload` on `agent`, valid for
/// a minute, with 5e7 fuel.
pub fn sign_request(
    caller: &agora_registry::SecretKey,
    host: agora_registry::PublicKey,
    agent: agora_registry::Hash,
    action: &str,
    payload: &[u8],
) -> agora_registry::SignedRequest {
    sign_request_with_fuel(caller, host, agent, action, payload, 50_000_000)
}

/// [`sign_request`] with the caller's fuel budget.
pub fn sign_request_with_fuel(
    caller: &agora_registry::SecretKey,
    host: agora_registry::PublicKey,
    agent: agora_registry::Hash,
    action: &str,
    payload: &[u8],
    fuel_limit: u64,
) -> agora_registry::SignedRequest {
    agora_registry::Signed::sign(
        agora_registry::CallRequest {
            caller: caller.public(),
            host,
            agent,
            input_hash: agora_registry::request_hash(action, payload),
            fuel_limit,
            nonce: agora_registry::CallRequest::new_nonce(),
            expires_at_ms: now_ms() + 60_000,
        },
        caller,
    )
    .expect("sign request")
}

/// Feedback signed by `rater` giving `receipt` a `score`.
pub fn sign_feedback(
    rater: &agora_registry::SecretKey,
    receipt: &agora_registry::SignedReceipt,
    score: u8,
) -> agora_registry::SignedFeedback {
    agora_registry::Signed::sign(
        agora_registry::Feedback {
            receipt: receipt.hash(),
            rater: rater.public(),
            score,
            tags: vec![],
            created_at_ms: now_ms(),
        },
        rater,
    )
    .expect("sign feedback")
}

/// A host that exists only as a key: it signs receipts in a chain, each answering a caller's
/// signed request, with the charge the manifest's price gives, as an honest host would send
/// them to its peers. Tests edit receipts to make it lie.
pub struct SigningHost {
    /// Its key.
    pub key: agora_registry::SecretKey,
    /// Its last receipt: sequence number and hash.
    pub head: Option<(u64, agora_registry::Hash)>,
}

impl Default for SigningHost {
    fn default() -> Self {
        Self::new()
    }
}

impl SigningHost {
    /// A host with a fresh key and no receipts.
    pub fn new() -> Self {
        SigningHost {
            key: agora_registry::SecretKey::generate(),
            head: None,
        }
    }

    /// Its next receipt: `caller` asked it to run `agent`, which used `fuel_used` fuel and
    /// ended with `outcome`; `edit` may change the receipt before it is signed.
    pub fn call(
        &mut self,
        agent: &SignedManifest,
        caller: &agora_registry::SecretKey,
        outcome: agora_registry::Outcome,
        edit: impl FnOnce(&mut agora_registry::Receipt),
    ) -> (agora_registry::SignedReceipt, agora_registry::SignedRequest) {
        let request = sign_request(caller, self.key.public(), agent.hash(), "quote", b"{}");
        let fuel_used = 900_000;
        let mut body = agora_registry::Receipt {
            agent: agora_registry::AgentRef {
                manifest: agent.hash(),
                component: agent.body().component.hash,
            },
            request: Some(request.hash()),
            caller: Some(caller.public()),
            input_hash: request.body().input_hash,
            output_hash: None,
            outcome,
            fuel_limit: request.body().fuel_limit,
            fuel_used,
            charge: agora_registry::rules::charge_for(fuel_used, agent.body().price_per_mfuel),
            wall_time_us: 1,
            nested: vec![],
            parent_call: None,
            host: self.key.public(),
            runtime: agora_host::RUNTIME_VERSION.into(),
            profile: None,
            environment: None,
            input_size: None,
            transcript: None,
            seq: self.head.map_or(0, |(seq, _)| seq + 1),
            prev: self.head.map(|(_, hash)| hash),
            timestamp_ms: now_ms(),
            limits: None,
            model_usage: vec![],
            egress: None,
        };
        edit(&mut body);
        let receipt = agora_registry::Signed::sign(body, &self.key).expect("sign receipt");
        self.head = Some((receipt.body().seq, receipt.hash()));
        (receipt, request)
    }
}

/// Wraps a core module implementing `agora:agent/handler` (canonical ABI, legacy export names)
/// into a component of the `agent` world: agents written as core WebAssembly by hand, for
/// behaviour a compiler will not emit, or bytes no compiler version can change.
///
/// # Panics
/// If `core_wat` is not a valid core module of the `agent` world.
pub fn handmade_component(core_wat: &str) -> Vec<u8> {
    let mut module = wat::parse_str(core_wat).expect("core module");
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve
        .push_file(concat!(env!("CARGO_MANIFEST_DIR"), "/../wit/agent.wit"))
        .expect("the agent world");
    let world = resolve
        .select_world(&[package], Some("agent"))
        .expect("world agent");
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
        false,
    )
    .expect("embed metadata");
    wit_component::ComponentEncoder::default()
        .module(&module)
        .expect("module")
        .validate(true)
        .encode()
        .expect("component")
}

/// The golden agent (`tests/golden/numeric.wat`): floating-point and SIMD kernels in core
/// WebAssembly, whose outcome, output and fuel under the deterministic profile are pinned.
pub fn golden_agent() -> Vec<u8> {
    handmade_component(include_str!("golden/numeric.wat"))
}

/// An example agent written in Python or JavaScript, built by
/// `guest-examples/build-interpreted.sh` into `target/guests/{py,js}/<name>.wasm`.
///
/// # Panics
/// If it has not been built, saying how to build it: a test that needs it fails rather than
/// skips.
pub fn interpreted_agent(language: &str, name: &str) -> Vec<u8> {
    let path = target_dir()
        .join("guests")
        .join(language)
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. Build the Python and JavaScript example agents first: \
             ./guest-examples/build-interpreted.sh (needs Python 3.11+ with pip and Node 20+ \
             with npm; installs componentize-py and componentize-js from their registries)",
            path.display()
        )
    })
}

/// The Cargo target dir, where the build scripts put what they install and build.
fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// An outside client written in Python, as a command: the interpreter of the virtualenv
/// `tests/clients/install.sh` installed it into (`target/toolchains/<venv>`), running `script`
/// from `tests/clients/`.
///
/// # Panics
/// If the client is not installed, saying how to install it: a test that needs it fails rather
/// than skips.
pub fn python_client(venv: &str, script: &str) -> tokio::process::Command {
    let python = target_dir()
        .join("toolchains")
        .join(venv)
        .join("bin")
        .join("python");
    assert!(
        python.exists(),
        "{} is missing. Install the outside clients the tests use first: tests/clients/install.sh \
         (needs Python 3.11+ with pip; installs them from PyPI)",
        python.display()
    );
    let mut command = tokio::process::Command::new(python);
    command
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("clients")
                .join(script),
        )
        .kill_on_drop(true);
    command
}

/// HTTP/1.1 spoken byte by byte, for tests of the HTTP edge: what a test writes is exactly what
/// the server reads, malformed or slow as the test needs.
pub mod raw_http {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Longest an exchange may take before the test fails.
    const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

    /// A response as read off the wire.
    #[derive(Debug)]
    pub struct Answer {
        /// The status code.
        pub status: u16,
        /// The header block, as sent.
        pub head: String,
        /// The body, as sent (no transfer decoding: the server sends lengths, not chunks).
        pub body: Vec<u8>,
    }

    impl Answer {
        /// A header's value, by case-insensitive name.
        pub fn header(&self, name: &str) -> Option<&str> {
            self.head.lines().skip(1).find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.eq_ignore_ascii_case(name).then(|| value.trim())
            })
        }

        /// The `error` the server named in a JSON body.
        pub fn error(&self) -> String {
            serde_json::from_slice::<serde_json::Value>(&self.body)
                .ok()
                .and_then(|body| body["error"].as_str().map(String::from))
                .unwrap_or_else(|| {
                    format!("(no JSON error: {})", String::from_utf8_lossy(&self.body))
                })
        }
    }

    /// A request with `Connection: close` and the given extra header lines (each ending in
    /// `\r\n`).
    pub fn request(method: &str, path: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
        let mut bytes = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra_headers}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    /// A JSON POST.
    pub fn post_json(path: &str, body: &[u8]) -> Vec<u8> {
        request("POST", path, "Content-Type: application/json\r\n", body)
    }

    /// Writes `request` on a fresh connection and reads the response to the end.
    pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Answer {
        tokio::time::timeout(EXCHANGE_TIMEOUT, async {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            // A server that refuses early (413) may close before it has read everything; its
            // answer is still there to read.
            let _ = stream.write_all(request).await;
            read_answer(&mut stream).await
        })
        .await
        .expect("the server answered in time")
    }

    /// Reads one response to the end of the connection.
    pub async fn read_answer(stream: &mut tokio::net::TcpStream) -> Answer {
        let mut response = Vec::new();
        // A server that answers early (413, 431) may reset the connection while the client
        // still writes; what was read before the reset is the answer.
        let _ = stream.read_to_end(&mut response).await;
        parse(&response)
    }

    /// Splits a response into status, head and body.
    pub fn parse(response: &[u8]) -> Answer {
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| {
                panic!(
                    "no response head in {:?}",
                    String::from_utf8_lossy(response)
                )
            });
        let head = String::from_utf8_lossy(&response[..split]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        Answer {
            status,
            head,
            body: response[split + 4..].to_vec(),
        }
    }
}
