//! `agora`: publish, list and run marketplace agents on this machine.

mod admin;
mod call;
mod commands;
mod egress;
mod models;
mod reputation;
mod secret_file;
mod ui;
mod verify;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use agora_host::DataDir;
use agora_host::net::{NetConfig, Network};
use agora_registry::{Hash, PublicKey};
use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use admin::AdminCommand;
use commands::{PublishSpec, RunSpec, Work, open, shutdown_signal};
use reputation::reputation;
use ui::spinner;

/// Where `agora host --api` listens, and `agora reputation` asks, by default.
const DEFAULT_API: &str = "127.0.0.1:7070";

/// A runtime for an open marketplace of AI agents: sandboxed, metered WebAssembly agents,
/// signed manifests and a signed receipt for every execution.
#[derive(Parser)]
#[command(name = "agora", version, about)]
struct Cli {
    /// Where keys, blobs and the registry live.
    #[arg(long, global = true, env = "AGORA_DATA_DIR", default_value_os_t = DataDir::default_location())]
    data_dir: PathBuf,

    /// Log more (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create this data dir's ed25519 key (publisher and host identity), file mode 0600.
    Keygen,
    /// Check a component, sign a manifest for it and store both.
    Publish(PublishArgs),
    /// List the agents in the registry.
    Agents {
        /// Print the signed manifests as JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Run an agent and print its output; exits non-zero if the call fails.
    Run(RunArgs),
    /// Serve this host's agents to peers over iroh until Ctrl-C or SIGTERM.
    Host {
        #[command(flatten)]
        net: NetArgs,
        /// Also serve the HTTP API (registry, reputation, evidence) on this address
        /// (default 127.0.0.1:7070 when given without one).
        #[arg(long, num_args = 0..=1, default_missing_value = DEFAULT_API)]
        api: Option<std::net::SocketAddr>,
        /// Trust this key a priori when scoring, besides this host's own (repeatable): a host
        /// or caller the operator vouches for.
        #[arg(long = "anchor", value_name = "KEY")]
        anchors: Vec<PublicKey>,
        /// A web origin (e.g. `https://dashboard.example`) whose pages may call the API; repeat
        /// for more. By default a request carrying any `Origin` is refused.
        #[arg(long = "allow-origin", value_name = "ORIGIN")]
        allowed_origins: Vec<String>,
        /// Share of other hosts' receipts this host runs again to check them, from 0 (none) to
        /// 1 (every one), for hosts it holds much history with (default 0.05).
        #[arg(long, value_name = "SHARE", value_parser = share)]
        audit_rate: Option<f64>,
        /// The same for hosts it holds little history with (default 0.5).
        #[arg(long, value_name = "SHARE", value_parser = share)]
        audit_new_host_rate: Option<f64>,
        /// When a caller gets its receipt: `committed` (the default) once it is stored, so a
        /// receipt handed out survives this process being killed; `pipelined` as soon as it is
        /// signed, stored in the next group commit (about a millisecond later), so a crash may
        /// lose this host's copy of the last receipts, never a sequence number.
        #[arg(long, value_name = "WHEN", default_value = "committed", value_parser = receipts)]
        receipts: agora_registry::ReceiptDurability,
        #[command(flatten)]
        models: models::ModelArgs,
        #[command(flatten)]
        egress: egress::EgressArgs,
    },
    /// Call an agent on a host, by its API URL (HTTP) or its ticket (iroh), signed by this data
    /// dir's key; print the output and keep the verified receipt. Exits non-zero if the call fails.
    Call(call::CallArgs),
    /// Rate a call made with `agora call`: sign feedback on its receipt and send it to the host
    /// that ran it.
    Rate(call::RateArgs),
    /// Re-check a receipt: fetch it, its input, transcript and component from a host's API, run
    /// the call again here and sign what was found. Exits 0 if it matches, 3 if the receipt is
    /// wrong (a fraud proof: `--proof` writes it, `--report` sends it to hosts), 4 if its outcome
    /// cannot be reproduced.
    Verify(verify::VerifyArgs),
    /// Show an agent's reputation as a host's HTTP API reports it.
    Reputation {
        /// The agent: manifest hash, or name (name@version) as the host lists it.
        agent: String,
        /// The host's API.
        #[arg(long, env = "AGORA_API", default_value = "http://127.0.0.1:7070")]
        api: String,
        /// Print the API's JSON answers, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Fetch an agent by manifest hash from peers, verify it and store it.
    Fetch {
        /// The agent's manifest hash.
        manifest: Hash,
        /// Peers to fetch from (tickets printed by `agora host`), tried in order.
        #[arg(long = "from", required = true)]
        from: Vec<String>,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Language models this data dir's host can run in process.
    #[command(subcommand)]
    Model(models::ModelCommand),
    /// List receipts, newest first.
    Receipts {
        /// Only receipts about this agent (name, manifest hash or component hash).
        agent: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print the signed receipts as JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Compile one component read from stdin and write the compiled code to stdout, under a
    /// memory bound: the child process a host compiles in (see `agora_host::Compiler`).
    #[command(hide = true)]
    CompileWorker {
        /// The memory bound (`RLIMIT_DATA`), in bytes.
        #[arg(long)]
        memory_bytes: u64,
        /// The engine's wasm stack limit, in bytes, as the parent host has it.
        #[arg(long)]
        max_wasm_stack: usize,
    },
    /// Publish the example agents into a temporary data dir, run a ride negotiation and an
    /// energy auction, and print the receipts.
    Demo {
        /// Keep the demo's data dir here instead of a temporary one.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct PublishArgs {
    /// The component (.wasm) to publish.
    component: PathBuf,
    /// Agent name (default: the name the agent reports from info()).
    #[arg(long)]
    name: Option<String>,
    /// Version (default: the version from info()).
    #[arg(long)]
    version: Option<String>,
    /// Description (default: the description from info()).
    #[arg(long)]
    description: Option<String>,
    /// Most fuel per call (default: this host's ceiling).
    #[arg(long)]
    max_fuel: Option<u64>,
    /// Most linear memory per call, in bytes.
    #[arg(long)]
    max_memory: Option<u64>,
    /// Most wall time per call, in milliseconds.
    #[arg(long)]
    max_wall_ms: Option<u64>,
    /// Most output per call, in bytes.
    #[arg(long)]
    max_output: Option<u64>,
    /// Price per million fuel.
    #[arg(long, default_value_t = 0)]
    price: u64,
    /// A language model the agent calls, and the most tokens one call may spend on it
    /// (`NAME:TOKENS`); repeatable. Required for a component that imports agora:agent/model.
    #[arg(long = "model", value_parser = model_declaration)]
    models: Vec<agora_registry::ModelDeclaration>,
    /// An origin the agent sends outbound HTTP requests to (`https://api.example.com`,
    /// `https://*.example.com`); repeatable. A host sends them only where its operator grants
    /// (`agora host --grant-egress`).
    #[arg(long = "egress", value_name = "ORIGIN")]
    egress: Vec<String>,
}

fn model_declaration(text: &str) -> Result<agora_registry::ModelDeclaration, String> {
    let (name, tokens) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not NAME:TOKENS"))?;
    let max_tokens_per_call = tokens
        .parse()
        .map_err(|_| format!("{tokens:?} is not a number of tokens"))?;
    Ok(agora_registry::ModelDeclaration {
        name: name.to_owned(),
        max_tokens_per_call,
    })
}

#[derive(clap::Args)]
struct RunArgs {
    /// The agent: name, name@version, manifest hash or component hash.
    agent: String,
    /// The action to perform.
    #[arg(long, short)]
    action: String,
    /// The payload, JSON; `@file` reads it from a file.
    #[arg(long, short, default_value = "{}")]
    payload: String,
    /// Fuel budget (default: the host's default, capped by the manifest's limit).
    #[arg(long)]
    fuel: Option<u64>,
    /// Fetch the agent (by manifest hash) from these peers first, unless already present.
    #[arg(long = "from")]
    from: Vec<String>,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(clap::Args)]
struct NetArgs {
    /// UDP address to listen on (default: an ephemeral port on 127.0.0.1, or 0.0.0.0 with --internet).
    #[arg(long)]
    bind: Option<std::net::SocketAddr>,
    /// Use n0's relays and DNS discovery to reach peers beyond this network. Off by default:
    /// peers are reached only at the addresses in their tickets.
    #[arg(long)]
    internet: bool,
    /// Join the marketplace gossip through this peer (a ticket from `agora host`); repeatable.
    #[arg(long = "peer")]
    peers: Vec<String>,
}

/// Parses a share from 0 to 1.
fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!("{text:?} is not a share from 0 to 1")),
    }
}

fn receipts(text: &str) -> Result<agora_registry::ReceiptDurability, String> {
    match text {
        "committed" => Ok(agora_registry::ReceiptDurability::Committed),
        "pipelined" => Ok(agora_registry::ReceiptDurability::Pipelined),
        _ => Err(format!("{text:?} is neither `committed` nor `pipelined`")),
    }
}

impl NetArgs {
    fn config(&self) -> anyhow::Result<NetConfig> {
        let config = match (self.internet, self.bind) {
            (false, None) => NetConfig::local(),
            (false, Some(bind)) => NetConfig::local().bind(bind),
            (true, bind) => NetConfig::internet(bind.unwrap_or_else(|| ([0, 0, 0, 0], 0).into())),
        };
        let peers = self
            .peers
            .iter()
            .map(|ticket| Network::parse_ticket(ticket))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(config.peers(peers))
    }
}

fn main() -> ExitCode {
    // SAFETY: no other thread exists yet.
    unsafe { agora_host::without_error_backtraces() };
    let cli = Cli::parse();
    // The compiler child starts no runtime and no logging: it compiles and exits.
    if let Command::CompileWorker {
        memory_bytes,
        max_wasm_stack,
    } = cli.command
    {
        let limits = agora_host::Limits {
            max_compile_memory_bytes: memory_bytes,
            max_wasm_stack,
            ..agora_host::Limits::default()
        };
        return ExitCode::from(
            u8::try_from(agora_host::serve_compile_worker(&limits)).unwrap_or(1),
        );
    }
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let data_dir = DataDir::new(&cli.data_dir);
    match cli.command {
        Command::Keygen => {
            let key = data_dir.keygen()?;
            println!("{key}");
            eprintln!("key written to {}", data_dir.key_path().display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Publish(args) => {
            let command = AdminCommand::Publish(PublishSpec::from_args(args)?);
            on_data_dir(data_dir, command, NetConfig::local()).await
        }
        Command::Agents { json } => {
            on_data_dir(data_dir, AdminCommand::Agents { json }, NetConfig::local()).await
        }
        Command::Run(args) => {
            let command = AdminCommand::Run(RunSpec::from_args(&args)?);
            on_data_dir(data_dir, command, args.net.config()?).await
        }
        Command::Host {
            net,
            api,
            anchors,
            allowed_origins,
            audit_rate,
            audit_new_host_rate,
            receipts,
            models,
            egress,
        } => {
            admin::claim(&data_dir).await?;
            let node = open(
                data_dir.clone(),
                models.config(&data_dir)?,
                egress.config()?,
                receipts,
            )
            .await?;
            let mut audit = agora_host::net::AuditConfig::default();
            audit.sample_rate = audit_rate.unwrap_or(audit.sample_rate);
            audit.new_host_sample_rate = audit_new_host_rate.unwrap_or(audit.new_host_sample_rate);
            let config = net.config()?.audit(audit);
            let network = std::sync::Arc::new(Network::start(node.clone(), config).await?);
            // From here the CLI's commands on this data dir run in this host.
            let work = Work {
                node: node.clone(),
                network: Some(network.clone()),
            };
            // Without the socket the host still serves; only the CLI cannot reach it.
            let admin = match admin::serve(&data_dir, work) {
                Ok(admin) => Some(admin),
                Err(error) => {
                    eprintln!(
                        "warning: no admin socket ({error:#}); the CLI cannot act through this \
                         host, so stop it to use the CLI on its data dir"
                    );
                    None
                }
            };
            println!("host {}", node.public_key());
            eprintln!(
                "peers: {} remembered, rejoined at start (kept in {})",
                network.remembered_peers(),
                data_dir.peers_path().display()
            );
            println!("ticket {}", network.ticket());
            let api = match api {
                Some(listen) => {
                    let config = agora_host::api::ApiConfig {
                        listen,
                        extra_anchors: anchors,
                        gossip: Some(network.gossip_stats_handle()),
                        audit: Some(network.audit_stats_handle()),
                        allowed_origins,
                        // One rate per caller and one set of slots, over iroh and HTTP alike.
                        admission: Some(network.admission()),
                        ..agora_host::api::ApiConfig::default()
                    };
                    let server = agora_host::api::ApiServer::start(node.clone(), config).await?;
                    println!("api http://{}", server.addr());
                    Some(server)
                }
                None => None,
            };
            eprintln!(
                "serving {} agents; Ctrl-C to stop",
                node.registry().manifests()?.len()
            );
            // Say how connected the host is whenever that changes.
            let stats = network.gossip_stats_handle();
            let watch = tokio::spawn(async move {
                let mut shown = None;
                loop {
                    let now = stats.neighbours();
                    if shown != Some(now) {
                        eprintln!("peers: {now} connected");
                        shown = Some(now);
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            });
            shutdown_signal().await?;
            watch.abort();
            eprintln!("stopping");
            drop(admin);
            if let Some(api) = api {
                api.shutdown().await;
            }
            network.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Call(args) => call::call(data_dir, args).await,
        Command::Rate(args) => call::rate(data_dir, args).await,
        Command::Verify(args) => verify::verify(data_dir, args).await,
        Command::Reputation { agent, api, json } => {
            reputation(&agent, &api, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fetch {
            manifest,
            from,
            net,
        } => {
            let command = AdminCommand::Fetch { manifest, from };
            on_data_dir(data_dir, command, net.config()?).await
        }
        Command::Model(command) => models::run(&data_dir, command),
        Command::Receipts { agent, limit, json } => {
            let command = AdminCommand::Receipts { agent, limit, json };
            on_data_dir(data_dir, command, NetConfig::local()).await
        }
        Command::CompileWorker { .. } => bail!("compile-worker runs before the async runtime"),
        Command::Demo { keep } => {
            let temp;
            let dir = match keep {
                Some(dir) => {
                    if dir.join("keys").exists() {
                        bail!(
                            "{} already holds a data dir; pick an empty directory",
                            dir.display()
                        );
                    }
                    dir
                }
                None => {
                    temp = tempfile::tempdir().context("creating a temporary data dir")?;
                    temp.path().to_owned()
                }
            };
            let spinner = spinner("running the demo marketplace");
            let mut report = Vec::new();
            let result = agora_host::demo::run(&dir, &mut report).await;
            spinner.finish_and_clear();
            std::io::stdout().write_all(&report)?;
            result?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs a command on a data dir: in the host running on it if there is one (over the admin
/// channel), otherwise here, opening the data dir (and starting `net` if it needs the network).
async fn on_data_dir(
    data_dir: DataDir,
    command: AdminCommand,
    net: NetConfig,
) -> anyhow::Result<ExitCode> {
    match admin::connect(&data_dir).await {
        Some(host) => {
            tracing::info!("a host runs on this data dir; the command runs in it");
            let spinner = spinner(&command.doing());
            let printed = admin::send(host, &command).await;
            spinner.finish_and_clear();
            printed?.emit()
        }
        None => commands::run_locally(data_dir, command, net).await,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
