//! The bodies of the commands that work on a data dir — publish, agents, run, receipts, fetch —
//! run by [`Work::execute`] on a node and, when one is up, its network: the CLI's own, or the
//! running host's when the command arrives over the admin channel ([`crate::admin`]). Each
//! returns what it prints, so both ways print the same.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use agora_host::egress::EgressConfig;
use agora_host::model::ModelConfig;
use agora_host::net::{NetConfig, Network};
use agora_host::{Compiler, DataDir, Limits, Node, NodeConfig, PublishOptions, report};
use agora_registry::ReceiptDurability;
use agora_registry::{Hash, ManifestLimits};
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::admin::AdminCommand;
use crate::ui::{TransferBar, spinner};

/// Opens the data dir's node for a host that serves, offering `models` to its agents and
/// letting their outbound HTTP go where `egress` says. Components are compiled in a child
/// process of this binary, so a component that needs too much memory to compile is refused
/// without touching the host.
pub(crate) async fn open(
    data_dir: DataDir,
    models: ModelConfig,
    egress: EgressConfig,
    receipts: ReceiptDurability,
) -> anyhow::Result<Node> {
    open_with(data_dir, Limits::default(), models, egress, receipts).await
}

/// Instance slots a command that runs a few calls and exits keeps: a call and its nested calls
/// at the deepest, with room to spare. Reserving the serving host's thousand slots costs a
/// short-lived process more time than it runs its call in.
const ONE_COMMAND_POOL: u32 = 16;

/// Opens the data dir's node for one command (`agora run`, `agora verify`, …) that exits when
/// done: like [`open`], with a pool sized for a few calls.
pub(crate) async fn open_for_one_command(data_dir: DataDir) -> anyhow::Result<Node> {
    let limits = Limits {
        pooled_instances: ONE_COMMAND_POOL,
        ..Limits::default()
    };
    open_with(
        data_dir,
        limits,
        ModelConfig::default(),
        EgressConfig::default(),
        ReceiptDurability::default(),
    )
    .await
}

async fn open_with(
    data_dir: DataDir,
    limits: Limits,
    models: ModelConfig,
    egress: EgressConfig,
    receipts: ReceiptDurability,
) -> anyhow::Result<Node> {
    let compiler = Compiler::this_executable().context("finding the agora executable")?;
    let config = NodeConfig::new(data_dir)
        .limits(limits)
        .compiler(compiler)
        .models(models)
        .egress(egress)
        .receipts(receipts);
    Ok(Node::open(config).await?)
}

/// What a command printed: its standard output and error, and its exit code.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Printed {
    pub stdout: String,
    pub stderr: String,
    pub code: u8,
}

impl Printed {
    /// Prints it, and gives its exit code.
    pub(crate) fn emit(self) -> anyhow::Result<ExitCode> {
        std::io::stdout().lock().write_all(self.stdout.as_bytes())?;
        std::io::stderr().lock().write_all(self.stderr.as_bytes())?;
        Ok(ExitCode::from(self.code))
    }
}

/// `agora publish`, as it travels.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PublishSpec {
    /// An absolute path: the running host's working directory is not the CLI's.
    pub component: PathBuf,
    pub name: Option<String>,
    pub version: Option<String>,
    pub description: Option<String>,
    pub limits: ManifestLimits,
    pub price: u64,
    #[serde(default)]
    pub models: Vec<agora_registry::ModelDeclaration>,
    #[serde(default)]
    pub egress: Vec<String>,
}

/// `agora run`, as it travels: the payload already read.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RunSpec {
    pub agent: String,
    pub action: String,
    pub payload: String,
    pub fuel: Option<u64>,
    pub from: Vec<String>,
}

impl PublishSpec {
    pub(crate) fn from_args(args: crate::PublishArgs) -> anyhow::Result<PublishSpec> {
        let defaults = Limits::default().manifest_defaults();
        let component = std::path::absolute(&args.component)
            .with_context(|| format!("locating {}", args.component.display()))?;
        Ok(PublishSpec {
            component,
            name: args.name,
            version: args.version,
            description: args.description,
            limits: ManifestLimits {
                max_fuel: args.max_fuel.unwrap_or(defaults.max_fuel),
                max_memory_bytes: args.max_memory.unwrap_or(defaults.max_memory_bytes),
                max_wall_ms: args.max_wall_ms.unwrap_or(defaults.max_wall_ms),
                max_output_bytes: args.max_output.unwrap_or(defaults.max_output_bytes),
            },
            price: args.price,
            models: args.models,
            egress: args.egress,
        })
    }
}

impl RunSpec {
    pub(crate) fn from_args(args: &crate::RunArgs) -> anyhow::Result<RunSpec> {
        let payload = match args.payload.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading payload file {path}"))?,
            None => args.payload.clone(),
        };
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&payload) {
            bail!("--payload is not JSON: {e}");
        }
        Ok(RunSpec {
            agent: args.agent.clone(),
            action: args.action.clone(),
            payload,
            fuel: args.fuel,
            from: args.from.clone(),
        })
    }
}

impl AdminCommand {
    /// What a terminal shows while it runs.
    pub(crate) fn doing(&self) -> String {
        match self {
            AdminCommand::Publish(spec) => {
                format!("checking and compiling {}", spec.component.display())
            }
            AdminCommand::Run(spec) => format!("running {}", spec.agent),
            AdminCommand::Fetch { manifest, .. } => format!("fetching {manifest}"),
            AdminCommand::Agents { .. } | AdminCommand::Receipts { .. } => "reading".into(),
        }
    }

    /// Whether it needs the network (to fetch from peers).
    pub(crate) fn needs_network(&self) -> bool {
        match self {
            AdminCommand::Run(spec) => !spec.from.is_empty(),
            AdminCommand::Fetch { .. } => true,
            _ => false,
        }
    }
}

/// Runs a command in this process, on the data dir opened here: for when no host runs on it.
pub(crate) async fn run_locally(
    data_dir: DataDir,
    command: AdminCommand,
    net: NetConfig,
) -> anyhow::Result<ExitCode> {
    let node = open_for_one_command(data_dir).await?;
    let network = if command.needs_network() {
        Some(Arc::new(Network::start(node.clone(), net).await?))
    } else {
        None
    };
    let work = Work {
        node: node.clone(),
        network: network.clone(),
    };
    let spinner = spinner(&command.doing());
    let printed = work.execute(command).await;
    spinner.finish_and_clear();
    // The network closes the blob store when it shuts down, so it goes last.
    match network {
        Some(network) => network.shutdown().await,
        None => node.shutdown().await?,
    }
    printed?.emit()
}

/// The node and network the commands run on.
pub(crate) struct Work {
    pub node: Node,
    pub network: Option<Arc<Network>>,
}

impl Work {
    /// Runs one command; returns what it printed. An error is the command's failure, printed
    /// by the caller as `error: …`.
    pub(crate) async fn execute(&self, command: AdminCommand) -> anyhow::Result<Printed> {
        let mut printed = Printed::default();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        match command {
            AdminCommand::Publish(spec) => self.publish(spec, &mut out, &mut err).await?,
            AdminCommand::Agents { json } => {
                let node = self.node.clone();
                let manifests =
                    tokio::task::spawn_blocking(move || node.registry().manifests()).await??;
                if json {
                    for manifest in &manifests {
                        out.write_all(manifest.as_bytes())?;
                        writeln!(out)?;
                    }
                } else if manifests.is_empty() {
                    writeln!(
                        err,
                        "no agents yet; publish one with `agora publish <component.wasm>`"
                    )?;
                } else {
                    report::write_agents(&mut out, &manifests)?;
                }
            }
            AdminCommand::Run(spec) => {
                printed.code = self.run(spec, &mut out, &mut err).await?;
            }
            AdminCommand::Receipts { agent, limit, json } => {
                let node = self.node.clone();
                out = tokio::task::spawn_blocking(move || {
                    let mut out = Vec::new();
                    receipts(&node, agent.as_deref(), limit, json, &mut out)?;
                    Ok::<_, anyhow::Error>(out)
                })
                .await??;
            }
            AdminCommand::Fetch { manifest, from } => {
                let fetched = self.fetch(manifest, &from).await?;
                let body = fetched.body();
                writeln!(out, "fetched {}@{}", body.name, body.version)?;
                writeln!(out, "manifest  {}", fetched.hash())?;
                writeln!(out, "publisher {}", body.publisher)?;
                writeln!(
                    out,
                    "component {} ({} bytes)",
                    body.component.hash, body.component.size
                )?;
            }
        }
        printed.stdout = String::from_utf8_lossy(&out).into_owned();
        printed.stderr = String::from_utf8_lossy(&err).into_owned();
        Ok(printed)
    }

    async fn publish(
        &self,
        spec: PublishSpec,
        out: &mut Vec<u8>,
        err: &mut Vec<u8>,
    ) -> anyhow::Result<()> {
        let options = PublishOptions {
            name: spec.name,
            version: spec.version,
            description: spec.description,
            limits: Some(spec.limits),
            price_per_mfuel: spec.price,
            models: spec.models,
            egress: spec.egress,
        };
        let published = self.node.publish_file(&spec.component, options).await?;
        let manifest = &published.manifest;
        let body = manifest.body();
        writeln!(out, "published {}@{}", body.name, body.version)?;
        writeln!(out, "manifest  {}", manifest.hash())?;
        writeln!(
            out,
            "component {} ({} bytes)",
            body.component.hash, body.component.size
        )?;
        writeln!(out, "actions   {}", body.actions.join(", "))?;
        if !body.capabilities.is_empty() {
            writeln!(
                out,
                "imports   {} (denied unless granted)",
                body.capabilities.join(", ")
            )?;
        }
        if !body.egress.is_empty() {
            writeln!(
                out,
                "egress    {} (sent only where a host grants)",
                body.egress.join(", ")
            )?;
        }
        if published.inserted == agora_registry::Inserted::AlreadyPresent {
            writeln!(err, "(this release was already published; nothing changed)")?;
        } else if let Some(network) = &self.network {
            network.announce(manifest).await;
            writeln!(err, "announced to this host's peers")?;
        }
        Ok(())
    }

    async fn run(&self, spec: RunSpec, out: &mut Vec<u8>, err: &mut Vec<u8>) -> anyhow::Result<u8> {
        if !spec.from.is_empty() {
            let manifest: Hash = spec
                .agent
                .parse()
                .context("with --from, name the agent by its manifest hash")?;
            self.fetch(manifest, &spec.from).await?;
        }
        let execution = self
            .node
            .run(
                &spec.agent,
                &spec.action,
                spec.payload.as_bytes(),
                spec.fuel,
            )
            .await?;
        let receipt = execution.receipt.hash();
        let fuel = format!("fuel {} of {}", execution.fuel_used, execution.fuel_limit);
        Ok(match execution.error().cloned() {
            None => {
                out.write_all(execution.output.as_deref().unwrap_or_default())?;
                writeln!(out)?;
                writeln!(
                    err,
                    "{fuel}, charge {}, receipt {receipt}",
                    execution.charge
                )?;
                0
            }
            Some(error) => {
                writeln!(err, "error: {error}")?;
                writeln!(err, "{fuel}, receipt {receipt}")?;
                2
            }
        })
    }

    async fn fetch(
        &self,
        manifest: Hash,
        peers: &[String],
    ) -> anyhow::Result<agora_registry::SignedManifest> {
        let Some(network) = &self.network else {
            bail!("fetching needs the network, which this command did not start");
        };
        let peers = peers
            .iter()
            .map(|ticket| Network::parse_ticket(ticket))
            .collect::<Result<Vec<_>, _>>()?;
        let progress = TransferBar::new();
        Ok(network.fetch_agent(manifest, &peers, &progress).await?)
    }
}

fn receipts(
    node: &Node,
    agent: Option<&str>,
    limit: usize,
    json: bool,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let receipts = match agent {
        Some(agent) => {
            let manifest = node.resolve(agent)?;
            node.registry()
                .receipts_page(&manifest.hash(), None, limit)?
                .parse()?
        }
        None => node.registry().receipts(limit)?,
    };
    if json {
        for receipt in &receipts {
            out.write_all(receipt.as_bytes())?;
            writeln!(out)?;
        }
    } else {
        report::write_receipts(out, node.registry(), &receipts)?;
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}
