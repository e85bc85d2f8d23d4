//! Start-up as a user sees it: whole-process times of `agora run` for the Rust, Python and
//! JavaScript example agents, with the compiled-code cache empty (the call compiles) and warm
//! (every later run, and the first call after a host restart), and what a host holding many
//! loaded agents costs in resident memory.
//!
//! `cargo bench -p agora-host --bench start` (`-- --quick` for fewer runs). The Python and
//! JavaScript agents come from `guest-examples/build-interpreted.sh`; without them those rows say
//! how to build them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agora_host::{DataDir, Limits, Node, NodeConfig, PublishOptions, examples};

const AGORA: &str = env!("CARGO_BIN_EXE_agora");

struct Agent {
    label: &'static str,
    name: &'static str,
    action: &'static str,
    payload: &'static str,
    component: Result<Vec<u8>, String>,
    /// The target the issue sets for a warm start, as a whole-process time.
    target: Option<Duration>,
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let warm_runs = if quick { 5 } else { 20 };
    let cold_runs = if quick { 1 } else { 3 };
    let trip = r#"{"trip":{"distance_m":12500,"duration_s":1500,"demand_pct":120}}"#;
    let offer = r#"{"household":"h1","net_wh":1200,"reserve_cents_per_kwh":12,"slot":"s"}"#;
    let agents = [
        Agent {
            label: "Rust",
            name: "ride-driver",
            action: "quote",
            payload: trip,
            component: Ok(examples::RIDE_DRIVER.to_vec()),
            target: Some(Duration::from_millis(20)),
        },
        Agent {
            label: "Python",
            name: "energy-trader-py",
            action: "offer",
            payload: offer,
            component: interpreted("py", "energy-trader-py"),
            target: None,
        },
        Agent {
            label: "JavaScript",
            name: "ride-driver-js",
            action: "quote",
            payload: trip,
            component: interpreted("js", "ride-driver-js"),
            target: Some(Duration::from_millis(100)),
        },
    ];

    let dir = tempfile::tempdir()?;
    let data = dir.path();
    agora(data, &["keygen"])?;
    println!("## 3. start-up: whole-process `agora run`, release build");
    println!(
        "| agent | component | publish (compiles) | run, cache empty (p50 of {cold_runs}) | run, cache warm (p50 of {warm_runs}) | min | target |"
    );
    println!("|---|---|---|---|---|---|---|");
    for agent in &agents {
        let component = match &agent.component {
            Ok(component) => component,
            Err(why) => {
                println!(
                    "| {} {} | not built: {why} | | | | | |",
                    agent.label, agent.name
                );
                continue;
            }
        };
        let file = data.join(format!("{}.wasm", agent.name));
        std::fs::write(&file, component)?;
        let started = Instant::now();
        agora(data, &["publish", file.to_str().unwrap_or_default()])?;
        let publish = started.elapsed();
        let run = || {
            agora(
                data,
                &["run", agent.name, "-a", agent.action, "-p", agent.payload],
            )
        };
        let mut cold = Vec::new();
        for _ in 0..cold_runs {
            std::fs::remove_dir_all(DataDir::new(data).compiled_path())?;
            cold.push(run()?);
        }
        let mut warm = Vec::new();
        run()?;
        for _ in 0..warm_runs {
            warm.push(run()?);
        }
        cold.sort();
        warm.sort();
        println!(
            "| {} {} | {:.1} MB | {} | {} | {} | {} | {} |",
            agent.label,
            agent.name,
            component.len() as f64 / 1e6,
            ms(publish),
            ms(cold[cold.len() / 2]),
            ms(warm[warm.len() / 2]),
            ms(warm[0]),
            agent.target.map_or("—".into(), |t| format!("< {}", ms(t))),
        );
    }

    println!();
    let loaded = if quick { 100 } else { 1_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(memory(loaded))?;
    Ok(())
}

/// Resident memory of a host with `count` agents loaded, then with 500 calls in flight.
async fn memory(count: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = DataDir::new(dir.path());
    data_dir.keygen()?;
    // 500 top-level calls at call depth 4 take 2,500 pool slots.
    let limits = Limits {
        pooled_instances: 2_500,
        max_loaded_agents: count,
        ..Limits::default()
    };
    let node = Node::open(NodeConfig::new(data_dir).limits(limits)).await?;
    let before = rss_mb();
    let started = Instant::now();
    let mut agents = Vec::new();
    for i in 0..count {
        // Distinct components: the ride driver with a custom section naming its copy.
        let component = with_custom_section(examples::RIDE_DRIVER, &format!("copy-{i}"));
        let options = PublishOptions {
            name: Some(format!("driver-{i}")),
            ..PublishOptions::default()
        };
        agents.push(
            node.publish(&component, options)
                .await?
                .manifest
                .hash()
                .to_hex(),
        );
    }
    let published = started.elapsed();
    for agent in &agents {
        node.run(
            agent,
            "quote",
            br#"{"trip":{"distance_m":1000,"duration_s":60}}"#,
            None,
        )
        .await?
        .into_output()?;
    }
    let loaded = rss_mb();
    let stats = node.sandbox().stats();

    let rider = node
        .publish(examples::RIDE_RIDER, PublishOptions::default())
        .await?
        .manifest
        .hash()
        .to_hex();
    // 500 calls in flight at once: each negotiates with a driver, so each holds instances
    // while it waits for its nested calls.
    let mut calls = tokio::task::JoinSet::new();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    for i in 0..500 {
        let node = node.clone();
        let rider = rider.clone();
        let driver = agents[i % agents.len()].clone();
        calls.spawn(async move {
            let negotiate = format!(
                r#"{{"trip":{{"distance_m":12500,"duration_s":1500}},"budget_cents":2600,"drivers":["{driver}","{driver}"],"max_rounds":4}}"#
            );
            node.run(&rider, "negotiate", negotiate.as_bytes(), None).await
        });
    }
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_mb() as u64, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut ok = 0;
    while let Some(call) = calls.join_next().await {
        if call?.map(|e| e.into_output().is_ok()).unwrap_or(false) {
            ok += 1;
        }
    }
    sampler.abort();
    println!("## 5. resident memory of one host process");
    println!("| state | RSS |");
    println!("|---|---|");
    println!("| opened, nothing loaded | {before:.0} MB |");
    println!(
        "| {} agents published ({:.1} s) and each called once, {} loaded | {loaded:.0} MB ({:.2} MB per agent) |",
        count,
        published.as_secs_f64(),
        stats.loaded,
        (loaded - before) / count as f64
    );
    println!(
        "| 500 concurrent negotiations in flight (each with nested calls; {ok} answered) | peak {} MB |",
        peak.load(std::sync::atomic::Ordering::Relaxed)
    );
    node.shutdown().await?;
    Ok(())
}

/// Runs `agora --data-dir data args…` and returns how long the whole process took.
fn agora(data: &Path, args: &[&str]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let output = Command::new(AGORA)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()?;
    let took = started.elapsed();
    if !output.status.success() {
        anyhow::bail!(
            "agora {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(took)
}

fn interpreted(language: &str, name: &str) -> Result<Vec<u8>, String> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target
        .join("guests")
        .join(language)
        .join(format!("{name}.wasm"));
    std::fs::read(&path).map_err(|e| {
        format!(
            "{}: {e}; run ./guest-examples/build-interpreted.sh",
            path.display()
        )
    })
}

/// `component` with a custom section appended: a different hash, the same code.
fn with_custom_section(component: &[u8], name: &str) -> Vec<u8> {
    let mut section = Vec::new();
    leb128(&mut section, name.len() as u64);
    section.extend_from_slice(name.as_bytes());
    let mut bytes = component.to_vec();
    bytes.push(0);
    leb128(&mut bytes, section.len() as u64);
    bytes.extend_from_slice(&section);
    bytes
}

fn leb128(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}
