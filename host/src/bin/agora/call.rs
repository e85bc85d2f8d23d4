//! `agora call` and `agora rate`: calling an agent on another host, by its API URL (HTTP) or its
//! ticket (iroh), as this data dir's key; and rating such a call.
//!
//! Both need only the data dir's key and registry, not its blob store, so they work beside a
//! host running on the same data dir.

use std::io::Write;
use std::process::ExitCode;

use agora_host::DataDir;
use agora_host::client::ApiClient;
use agora_host::invoke::{self, CallError, InvokeMessage};
use agora_host::net::{NetConfig, Network};
use agora_registry::{Hash, PublicKey, Registry, SecretKey, SignedFeedback};
use anyhow::{Context, bail};

use crate::ui::spinner;

/// Where a call goes.
enum Target {
    /// A host's HTTP API.
    Http(ApiClient),
    /// A host on iroh, from its ticket; its endpoint id is its key.
    Iroh(iroh::EndpointAddr),
}

impl Target {
    fn parse(text: &str) -> anyhow::Result<Target> {
        if text.starts_with("http://") || text.starts_with("https://") {
            Ok(Target::Http(ApiClient::new(text)?))
        } else {
            Ok(Target::Iroh(Network::parse_ticket(text).context(
                "--on takes a host's API URL (http://127.0.0.1:7070) or its ticket from `agora host`",
            )?))
        }
    }
}

/// The caller: this data dir's key and registry.
struct Caller {
    key: SecretKey,
    registry: Registry,
}

impl Caller {
    fn open(data_dir: &DataDir) -> anyhow::Result<Caller> {
        let key_path = data_dir.key_path();
        if !key_path.exists() {
            bail!(
                "{} holds no key to sign calls with; create one with `agora keygen`",
                data_dir.root().display()
            );
        }
        let key = SecretKey::load(&key_path)?;
        let registry = Registry::open(&data_dir.registry_path())?;
        Ok(Caller { key, registry })
    }
}

#[derive(clap::Args)]
pub(crate) struct CallArgs {
    /// The agent: its manifest hash (over HTTP also its name, or name@version).
    pub agent: String,
    /// The action to perform.
    #[arg(long, short)]
    pub action: String,
    /// The payload, JSON; `@file` reads it from a file.
    #[arg(long, short, default_value = "{}")]
    pub payload: String,
    /// The host: its API URL (`http://127.0.0.1:7070`) or its ticket from `agora host`.
    #[arg(long, value_name = "URL|TICKET")]
    pub on: String,
    /// The most fuel this call may use (and be charged for).
    #[arg(long, default_value_t = 1_000_000_000)]
    pub fuel: u64,
    /// Reach the host through n0's relays and discovery (tickets only).
    #[arg(long)]
    pub internet: bool,
}

pub(crate) async fn call(data_dir: DataDir, options: CallArgs) -> anyhow::Result<ExitCode> {
    let payload = match options.payload.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading payload file {path}"))?
        }
        None => options.payload.clone(),
    };
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&payload) {
        bail!("--payload is not JSON: {e}");
    }
    let caller = Caller::open(&data_dir)?;
    let target = Target::parse(&options.on)?;
    let net = net_config(options.internet);
    let (host, agent) = match &target {
        Target::Http(client) => {
            let host = http_host_key(client).await?;
            (host, http_agent(client, &options.agent).await?)
        }
        Target::Iroh(addr) => {
            let agent = options.agent.parse::<Hash>().context(
                "over iroh, name the agent by its manifest hash (`agora agents` on its host lists them)",
            )?;
            (invoke_host_key(addr)?, agent)
        }
    };
    let (request, message) = InvokeMessage::sign(
        &caller.key,
        host,
        agent,
        &options.action,
        &payload,
        options.fuel,
    )?;
    let spinner = spinner(&format!("calling {} on {host}", options.agent));
    let answer = match &target {
        Target::Http(client) => invoke::over_http(client, &message).await,
        Target::Iroh(addr) => agora_host::net::invoke::call(&net, addr, &message).await,
    };
    spinner.finish_and_clear();
    let called = invoke::check(&request, answer?)?;
    // The receipt is this caller's evidence of the call: kept, with the request it answers and
    // the manifest it is about.
    caller
        .registry
        .insert_manifest(&called.manifest)
        .context("keeping the agent's manifest")?;
    caller
        .registry
        .insert_receipt(&called.receipt, Some(&request))
        .context("keeping the receipt")?;
    let receipt = called.receipt.body();
    let summary = format!(
        "outcome {}, fuel {} of {}, charge {}, receipt {}",
        receipt.outcome.name(),
        receipt.fuel_used,
        receipt.fuel_limit,
        receipt.charge,
        called.receipt.hash()
    );
    let code = match called.output {
        Some(output) => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{output}")?;
            eprintln!("{summary}");
            ExitCode::SUCCESS
        }
        None => {
            eprintln!(
                "error: {}",
                called.error.as_deref().unwrap_or("the call gave no output")
            );
            eprintln!("{summary}");
            ExitCode::from(2)
        }
    };
    eprintln!(
        "rate it: agora rate {} <0-100> --on {}",
        called.receipt.hash(),
        options.on
    );
    Ok(code)
}

#[derive(clap::Args)]
pub(crate) struct RateArgs {
    /// The receipt's hash, as `agora call` printed it.
    pub receipt: Hash,
    /// 0 (useless) to 100 (excellent).
    #[arg(value_parser = clap::value_parser!(u8).range(0..=100))]
    pub score: u8,
    /// A short label (`fair-price`, `slow`); repeatable.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// The host that ran the call: its API URL or its ticket.
    #[arg(long, value_name = "URL|TICKET")]
    pub on: String,
    /// Reach the host through n0's relays and discovery (tickets only).
    #[arg(long)]
    pub internet: bool,
}

pub(crate) async fn rate(data_dir: DataDir, options: RateArgs) -> anyhow::Result<ExitCode> {
    let caller = Caller::open(&data_dir)?;
    let feedback: SignedFeedback = agora_registry::Signed::sign(
        agora_registry::Feedback {
            receipt: options.receipt,
            rater: caller.key.public(),
            score: options.score,
            tags: options.tags,
            created_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
        },
        &caller.key,
    )?;
    let hash = match Target::parse(&options.on)? {
        Target::Http(client) => {
            let body = feedback.as_bytes().to_vec();
            let answer = client
                .post_json("/v1/feedback", body)
                .await
                .map_err(CallError::from)?;
            answer["hash"]
                .as_str()
                .and_then(|hash| hash.parse::<Hash>().ok())
                .unwrap_or_else(|| feedback.hash())
        }
        Target::Iroh(addr) => {
            agora_host::net::invoke::send_feedback(&net_config(options.internet), &addr, &feedback)
                .await?
        }
    };
    // Kept here too when this registry holds the receipt; the host's copy is what counts.
    if let Err(error) = caller.registry.insert_feedback(&feedback) {
        tracing::info!(%error, "feedback not kept locally");
    }
    println!("feedback {hash}");
    Ok(ExitCode::SUCCESS)
}

fn net_config(internet: bool) -> NetConfig {
    if internet {
        NetConfig::internet(([0, 0, 0, 0], 0).into())
    } else {
        NetConfig::local()
    }
}

fn invoke_host_key(addr: &iroh::EndpointAddr) -> anyhow::Result<PublicKey> {
    Ok(agora_host::net::invoke::host_key(addr)?)
}

/// The key of the host serving the API: a signed request names the one host that may run it.
async fn http_host_key(client: &ApiClient) -> anyhow::Result<PublicKey> {
    let host = client.get_json("/v1/host").await?;
    host["key"]
        .as_str()
        .and_then(|key| key.parse().ok())
        .context("the host's /v1/host names no key")
}

/// The agent's manifest hash: given, or the best-ranked agent the host lists under that name
/// (`name` or `name@version`).
async fn http_agent(client: &ApiClient, agent: &str) -> anyhow::Result<Hash> {
    if let Ok(hash) = agent.parse::<Hash>() {
        return Ok(hash);
    }
    let (name, version) = match agent.split_once('@') {
        Some((name, version)) => (name, Some(version)),
        None => (agent, None),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("`{agent}` is neither a manifest hash nor an agent name");
    }
    let listed = client
        .get_json(&format!("/v1/agents?name={name}&limit=500"))
        .await?;
    listed["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["name"] == name && version.is_none_or(|v| a["version"] == v))
        .and_then(|a| a["manifest"].as_str()?.parse().ok())
        .with_context(|| format!("the host lists no agent named {agent}"))
}
