//! Measures the host's hot paths and prints the figures:
//! checking and compiling a component, a simple call, a negotiation that makes nested calls,
//! and how fast a runaway guest is stopped.
//!
//! `cargo bench -p agora-host --bench calls` (add `-- --iterations N` to change the sample size).

use std::time::{Duration, Instant};

use agora_host::{DataDir, Node, NodeConfig, PublishOptions, examples};
use serde_json::json;

fn main() -> anyhow::Result<()> {
    let iterations: usize = std::env::args()
        .skip_while(|a| a != "--iterations")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(bench(iterations))
}

async fn bench(iterations: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = DataDir::new(dir.path());
    data_dir.keygen()?;
    let node = Node::open(NodeConfig::new(data_dir)).await?;

    println!("agora host benchmark, {iterations} iterations per call figure");
    for (name, component) in examples::ALL {
        let started = Instant::now();
        node.sandbox().check(component)?;
        println!(
            "check + compile {name:<14} {:>8} bytes  {:>8.2} ms",
            component.len(),
            ms(started.elapsed())
        );
    }
    let driver = node
        .publish(examples::RIDE_DRIVER, PublishOptions::default())
        .await?
        .manifest;
    let rider = node
        .publish(examples::RIDE_RIDER, PublishOptions::default())
        .await?
        .manifest;
    let trip = json!({"distance_m": 12_500, "duration_s": 1_500, "demand_pct": 120});

    let quote = json!({"trip": trip}).to_string();
    let driver_ref = driver.hash().to_hex();
    let samples = sample(iterations, || {
        node.run(&driver_ref, "quote", quote.as_bytes(), None)
    })
    .await?;
    report(
        "ride-driver quote (fresh instance, signed receipt)",
        &samples,
    );

    let negotiate = json!({
        "trip": trip, "budget_cents": 2_600,
        "drivers": [driver.hash().to_hex(), driver.hash().to_hex()], "max_rounds": 4,
    })
    .to_string();
    let rider_ref = rider.hash().to_hex();
    let samples = sample(iterations / 4, || {
        node.run(&rider_ref, "negotiate", negotiate.as_bytes(), None)
    })
    .await?;
    report(
        "ride-rider negotiate (3 nested calls, 4 receipts)",
        &samples,
    );

    let starved = node
        .run(&driver_ref, "quote", quote.as_bytes(), Some(1))
        .await?;
    println!(
        "fuel budget of 1 on a real call: outcome {}",
        starved.outcome
    );
    node.shutdown().await?;
    Ok(())
}

async fn sample<F, Fut>(n: usize, mut call: F) -> anyhow::Result<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<agora_host::Execution, agora_host::RunError>>,
{
    // Warm up the compiled-component cache and the database.
    for _ in 0..10 {
        call().await?.into_output()?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        call().await?.into_output()?;
        samples.push(started.elapsed());
    }
    samples.sort();
    Ok(samples)
}

fn report(what: &str, samples: &[Duration]) {
    let total: Duration = samples.iter().sum();
    let mean = total / samples.len() as u32;
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "{what}: mean {:.3} ms, p50 {:.3} ms, p99 {:.3} ms, {:.0} calls/s",
        ms(mean),
        ms(at(0.5)),
        ms(at(0.99)),
        samples.len() as f64 / total.as_secs_f64()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
