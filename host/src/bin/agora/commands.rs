//! The bodies of the commands that work on a data dir: publish, run, fetch, and waiting for
//! the signal that stops `agora host`.

use std::io::Write;
use std::process::ExitCode;

use agora_host::net::Network;
use agora_host::{DataDir, Limits, Node, NodeConfig, PublishOptions};
use agora_registry::Hash;
use agora_registry::ManifestLimits;
use anyhow::{Context, bail};

use crate::ui::{TransferBar, spinner};
use crate::{PublishArgs, RunArgs};

pub(crate) async fn open(data_dir: DataDir) -> anyhow::Result<Node> {
    Ok(Node::open(NodeConfig::new(data_dir)).await?)
}

pub(crate) async fn publish(data_dir: DataDir, args: PublishArgs) -> anyhow::Result<ExitCode> {
    let node = open(data_dir).await?;
    let defaults = Limits::default().manifest_defaults();
    let limits = ManifestLimits {
        max_fuel: args.max_fuel.unwrap_or(defaults.max_fuel),
        max_memory_bytes: args.max_memory.unwrap_or(defaults.max_memory_bytes),
        max_wall_ms: args.max_wall_ms.unwrap_or(defaults.max_wall_ms),
        max_output_bytes: args.max_output.unwrap_or(defaults.max_output_bytes),
    };
    let options = PublishOptions {
        name: args.name,
        version: args.version,
        description: args.description,
        limits: Some(limits),
        price_per_mfuel: args.price,
    };
    let spinner = spinner(&format!(
        "checking and compiling {}",
        args.component.display()
    ));
    let published = node.publish_file(&args.component, options).await;
    spinner.finish_and_clear();
    let published = published?;
    let body = published.manifest.body();
    println!("published {}@{}", body.name, body.version);
    println!("manifest  {}", published.manifest.hash());
    println!(
        "component {} ({} bytes)",
        body.component.hash, body.component.size
    );
    println!("actions   {}", body.actions.join(", "));
    if !body.capabilities.is_empty() {
        println!(
            "imports   {} (denied unless granted)",
            body.capabilities.join(", ")
        );
    }
    if published.inserted == agora_registry::Inserted::AlreadyPresent {
        eprintln!("(this release was already published; nothing changed)");
    }
    node.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn run(data_dir: DataDir, args: RunArgs) -> anyhow::Result<ExitCode> {
    let payload = match args.payload.strip_prefix('@') {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("reading payload file {path}"))?
        }
        None => args.payload.into_bytes(),
    };
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&payload) {
        bail!("--payload is not JSON: {e}");
    }
    let node = open(data_dir).await?;
    // The network closes the blob store when it shuts down, so it stays up until the end.
    let network = if args.from.is_empty() {
        None
    } else {
        let manifest: Hash = args
            .agent
            .parse()
            .context("with --from, name the agent by its manifest hash")?;
        let network = Network::start(node.clone(), args.net.config()?).await?;
        if let Err(error) = fetch(&network, manifest, &args.from).await {
            network.shutdown().await;
            return Err(error);
        }
        Some(network)
    };
    let spinner = spinner(&format!("running {}", args.agent));
    let execution = node
        .run(&args.agent, &args.action, &payload, args.fuel)
        .await;
    spinner.finish_and_clear();
    let execution = execution?;
    let receipt = execution.receipt.hash();
    let fuel = format!("fuel {} of {}", execution.fuel_used, execution.fuel_limit);
    let code = match execution.error().cloned() {
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(execution.output.as_deref().unwrap_or_default())?;
            writeln!(out)?;
            eprintln!("{fuel}, charge {}, receipt {receipt}", execution.charge);
            ExitCode::SUCCESS
        }
        Some(error) => {
            eprintln!("error: {error}");
            eprintln!("{fuel}, receipt {receipt}");
            ExitCode::from(2)
        }
    };
    match network {
        Some(network) => network.shutdown().await,
        None => node.shutdown().await?,
    }
    Ok(code)
}

pub(crate) async fn fetch(
    network: &Network,
    manifest: Hash,
    peers: &[String],
) -> anyhow::Result<agora_registry::SignedManifest> {
    let peers = peers
        .iter()
        .map(|ticket| Network::parse_ticket(ticket))
        .collect::<Result<Vec<_>, _>>()?;
    let progress = TransferBar::new();
    Ok(network.fetch_agent(manifest, &peers, &progress).await?)
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
