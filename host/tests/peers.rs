//! A restarted host rejoins its network: hosts joined through a bootstrap host's ticket, the
//! bootstrap restarted on a new port with no ticket given, and what it publishes next reaches
//! every other host. Real processes on loopback.

mod common;

use std::time::{Duration, Instant};

use agora_host::client::ApiClient;
use agora_host::examples;
use agora_registry::Hash;
use common::{agora, start_host};

/// Hosts besides the bootstrap.
const OTHERS: usize = 4;

/// Waits until every API in `apis` reports a gossip neighbour.
async fn joined(apis: &[String]) {
    let started = Instant::now();
    for api in apis {
        let client = ApiClient::new(api).unwrap();
        loop {
            let metrics = client.get_text("/metrics").await.unwrap();
            if !metrics.contains("agora_gossip_neighbours 0\n") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{api} never joined"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits until every API in `apis` lists `manifest`, for at most `limit`; how long it took.
async fn reached(apis: &[String], manifest: Hash, stage: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    let path = format!("/v1/agents/{manifest}");
    for api in apis {
        let client = ApiClient::new(api).unwrap();
        while client.get_json(&path).await.is_err() {
            assert!(
                started.elapsed() < limit,
                "{stage}: {api} never learned of {manifest} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_bootstrap_host_rejoins_its_remembered_peers_at_its_new_address() {
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = dir.path().join("bootstrap");
    agora(&bootstrap, &["keygen"]);
    let first = start_host(&bootstrap, &[]);
    let mut others = Vec::new();
    for i in 0..OTHERS {
        let data = dir.path().join(format!("host{i}"));
        agora(&data, &["keygen"]);
        others.push(start_host(&data, &["--peer", &first.ticket]));
    }
    let apis: Vec<String> = others.iter().map(|h| h.api.clone()).collect();

    joined(&apis).await;

    // Before the restart, a release reaches everyone through the bootstrap.
    let driver = dir.path().join("ride-driver.wasm");
    std::fs::write(&driver, examples::RIDE_DRIVER).unwrap();
    let publish = |name: &str| -> Hash {
        agora(
            &bootstrap,
            &["publish", driver.to_str().unwrap(), "--name", name],
        )
        .lines()
        .find_map(|line| line.strip_prefix("manifest  "))
        .unwrap()
        .parse()
        .unwrap()
    };
    let before = publish("before-restart");
    let spread = reached(&apis, before, "before the restart", Duration::from_secs(30)).await;

    // The bootstrap restarts on a new port, given no peer: it rejoins those it remembers.
    let old_ticket = first.ticket.clone();
    first.stop();
    let restarted_at = Instant::now();
    let second = start_host(&bootstrap, &[]);
    assert_ne!(second.ticket, old_ticket, "the bootstrap's address changed");
    let after = publish("after-restart");
    let healed = reached(&apis, after, "after the restart", Duration::from_secs(30)).await;
    println!(
        "a release through the bootstrap reached {OTHERS} hosts in {spread:?}; after its restart \
         on a new port, in {:?} from the restart ({healed:?} from the publish)",
        restarted_at.elapsed()
    );
    drop(second);
}
