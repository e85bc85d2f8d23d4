//! Tables of registry contents for people, shared by the CLI and the demo.

use std::io::Write;

use agora_registry::{Registry, SignedManifest, SignedReceipt};

/// Writes one line per receipt: sequence, agent, outcome, fuel, charge, receipt hash and the
/// previous receipt it chains to.
pub fn write_receipts(
    out: &mut impl Write,
    registry: &Registry,
    receipts: &[SignedReceipt],
) -> anyhow::Result<()> {
    writeln!(
        out,
        "  {:>4}  {:<22} {:<16} {:>12} {:>8}  {:<12}  {:<12}  host",
        "seq", "agent", "outcome", "fuel", "charge", "receipt", "prev"
    )?;
    for receipt in receipts.iter() {
        let body = receipt.body();
        let agent = registry
            .manifest(&body.agent.manifest)?
            .map(|m| format!("{}@{}", m.body().name, m.body().version))
            .unwrap_or_else(|| body.agent.manifest.short());
        let agent = if body.parent_call.is_some() {
            format!("└ {agent}")
        } else {
            agent
        };
        writeln!(
            out,
            "  {:>4}  {:<22} {:<16} {:>12} {:>8}  {:<12}  {:<12}  {}",
            body.seq,
            agent,
            body.outcome.name(),
            body.fuel_used,
            body.charge,
            receipt.hash().short(),
            body.prev.map(|p| p.short()).unwrap_or_else(|| "-".into()),
            body.host.short(),
        )?;
    }
    Ok(())
}

/// Writes one line per manifest.
pub fn write_agents(out: &mut impl Write, manifests: &[SignedManifest]) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:<20} {:<8} {:<12}  {:<12}  {:<12}  {:<26} capabilities",
        "name", "version", "publisher", "manifest", "component", "actions"
    )?;
    for manifest in manifests {
        let body = manifest.body();
        writeln!(
            out,
            "{:<20} {:<8} {:<12}  {:<12}  {:<12}  {:<26} {}",
            body.name,
            body.version,
            body.publisher.short(),
            manifest.hash().short(),
            body.component.hash.short(),
            body.actions.join(","),
            if body.capabilities.is_empty() {
                "-".to_string()
            } else {
                body.capabilities.join(",")
            }
        )?;
    }
    Ok(())
}
