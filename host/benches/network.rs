//! Network figures, on loopback:
//! - fetch throughput of a 64 MiB blob from one host to another through agora
//!   (`Network::fetch_blob`: verified streaming into the host store, tagging), measured in the same run as
//!   a raw iroh-blobs fetch of the same blob from the same host with no agora code on the
//!   receiving side;
//! - time from asking for an agent not yet present (`run <hash> --from <peer>`: fetch manifest
//!   and component, check, compile, run) to its first output.
//!
//! `cargo bench -p agora-host --bench network`

use std::time::{Duration, Instant};

use agora_host::net::{NetConfig, Network, NoProgress};
use agora_host::{DataDir, Node, NodeConfig, PublishOptions, examples};
use iroh::endpoint::{PortmapperConfig, presets};

const BLOB_BYTES: usize = 64 << 20;
const ROUNDS: usize = 5;

fn main() -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(bench())
}

async fn host(dir: &tempfile::TempDir) -> anyhow::Result<(Node, Network)> {
    let data_dir = DataDir::new(dir.path());
    data_dir.keygen()?;
    let node = Node::open(NodeConfig::new(data_dir)).await?;
    let network = Network::start(node.clone(), NetConfig::local()).await?;
    Ok((node, network))
}

async fn bench() -> anyhow::Result<()> {
    let a_dir = tempfile::tempdir()?;
    let (a, a_net) = host(&a_dir).await?;
    let mut blob = vec![0u8; BLOB_BYTES];
    blake3::Hasher::new()
        .update(b"agora bench")
        .finalize_xof()
        .fill(&mut blob);
    let hash = a.blobs().put(blob).await?;
    let driver = a
        .publish(examples::RIDE_DRIVER, PublishOptions::default())
        .await?
        .manifest;
    let a_addr = a_net.addr();
    println!(
        "64 MiB blob {}, {ROUNDS} rounds, fresh receiver each round",
        hash.short()
    );

    let mut raw = Vec::new();
    let mut agora = Vec::new();
    for _ in 0..ROUNDS {
        // Raw iroh-blobs: a plain endpoint and a filesystem store, nothing of agora.
        let dir = tempfile::tempdir()?;
        let store = iroh_blobs::store::fs::FsStore::load(dir.path()).await?;
        let endpoint = iroh::Endpoint::builder(presets::Minimal)
            .relay_mode(iroh::RelayMode::Disabled)
            .portmapper_config(PortmapperConfig::Disabled)
            .clear_ip_transports()
            .bind_addr("127.0.0.1:0")?
            .bind()
            .await?;
        let started = Instant::now();
        let connection = endpoint.connect(a_addr.clone(), iroh_blobs::ALPN).await?;
        store
            .remote()
            .fetch(connection, iroh_blobs::Hash::from_bytes(*hash.as_bytes()))
            .await?;
        raw.push(started.elapsed());
        endpoint.close().await;
        store.shutdown().await?;

        // agora: the same blob from the same host, through Network::fetch_blob.
        let dir = tempfile::tempdir()?;
        let (b, b_net) = host(&dir).await?;
        let started = Instant::now();
        b_net
            .fetch_blob(
                hash,
                BLOB_BYTES as u64,
                std::slice::from_ref(&a_addr),
                &NoProgress,
            )
            .await?;
        agora.push(started.elapsed());
        assert_eq!(
            b.blobs().get(&hash).await?.map(|b| b.len()),
            Some(BLOB_BYTES)
        );
        b_net.shutdown().await;
    }
    let raw_rate = report("raw iroh-blobs fetch (fs store)", &mut raw);
    let agora_rate = report("agora Network::fetch_blob", &mut agora);
    println!(
        "agora / raw throughput (medians): {:.2}",
        agora_rate / raw_rate
    );

    let mut first_output = Vec::new();
    for _ in 0..ROUNDS {
        let dir = tempfile::tempdir()?;
        let (c, c_net) = host(&dir).await?;
        let started = Instant::now();
        c_net
            .fetch_agent(driver.hash(), std::slice::from_ref(&a_addr), &NoProgress)
            .await?;
        let execution = c
            .run(
                &driver.hash().to_hex(),
                "quote",
                br#"{"trip":{"distance_m":5000,"duration_s":600}}"#,
                None,
            )
            .await?;
        execution.into_output()?;
        first_output.push(started.elapsed());
        c_net.shutdown().await;
    }
    first_output.sort();
    println!(
        "run <hash> --from <peer>, agent not present ({} KiB component): median {:.1} ms, best {:.1} ms",
        examples::RIDE_DRIVER.len() / 1024,
        ms(first_output[ROUNDS / 2]),
        ms(first_output[0])
    );
    a_net.shutdown().await;
    Ok(())
}

/// Prints and returns the median throughput in MB/s.
fn report(what: &str, samples: &mut [Duration]) -> f64 {
    samples.sort();
    let rate = |d: Duration| BLOB_BYTES as f64 / 1e6 / d.as_secs_f64();
    let median = samples[samples.len() / 2];
    println!(
        "{what}: median {:.0} MB/s ({:.0} ms), best {:.0} MB/s",
        rate(median),
        ms(median),
        rate(samples[0])
    );
    rate(median)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
