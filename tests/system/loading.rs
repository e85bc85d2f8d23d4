//! How agents are loaded: compiled once per component, kept compiled on disk where only what
//! this host compiled is ever loaded, a bounded set kept in memory, instances from a pool.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agora_host::{
    Allocation, CheckError, DataDir, Limits, Node, NodeConfig, PublishError, PublishOptions,
    examples,
};
use agora_registry::Outcome;
use agora_tests::{HOSTILE, TestHost};

const QUOTE: &[u8] = br#"{"trip":{"distance_m":12500,"duration_s":1500,"demand_pct":120}}"#;

/// Opens the host in `dir` again, as a restarted process would.
async fn reopen(dir: &Path, limits: Limits) -> Node {
    Node::open(NodeConfig::new(DataDir::new(dir)).limits(limits))
        .await
        .expect("reopen")
}

/// Every file in the compiled-code cache.
fn cache_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries = Vec::new();
    for engine in std::fs::read_dir(DataDir::new(dir).compiled_path()).expect("cache dir") {
        for file in std::fs::read_dir(engine.unwrap().path()).unwrap() {
            entries.push(file.unwrap().path());
        }
    }
    entries.sort();
    entries
}

async fn quote(node: &Node, agent: &str) {
    let execution = node.run(agent, "quote", QUOTE, None).await.expect("runs");
    execution.into_output().expect("a quote");
}

#[tokio::test]
async fn a_restarted_host_runs_its_agents_without_compiling_them() {
    let host = TestHost::new().await;
    let agent = host.publish(examples::RIDE_DRIVER).await.hash().to_hex();
    assert_eq!(
        host.node.sandbox().stats().compiles,
        1,
        "compiled at publish"
    );
    quote(&host.node, &agent).await;
    assert_eq!(
        host.node.sandbox().stats().compiles,
        1,
        "the first call does not compile"
    );
    let TestHost { node, dir } = host;
    node.shutdown().await.unwrap();
    drop(node);

    let node = reopen(dir.path(), Limits::default()).await;
    assert_eq!(
        node.sandbox().stats().loaded,
        0,
        "nothing loads at start-up"
    );
    quote(&node, &agent).await;
    let stats = node.sandbox().stats();
    assert_eq!(stats.compiles, 0);
    assert_eq!(stats.disk.unwrap().hits, 1);
}

#[tokio::test]
async fn a_damaged_or_foreign_cache_entry_is_never_loaded_and_the_agent_is_compiled_again() {
    // The same component published by another host: a well-formed entry with another host's tag.
    let other = TestHost::new().await;
    other.publish(examples::RIDE_DRIVER).await;
    let foreign = std::fs::read(&cache_entries(other.dir.path())[0]).unwrap();

    let host = TestHost::new().await;
    let agent = host.publish(examples::RIDE_DRIVER).await.hash().to_hex();
    let TestHost { node, dir } = host;
    node.shutdown().await.unwrap();
    drop(node);
    let entry = cache_entries(dir.path()).remove(0);
    let good = std::fs::read(&entry).unwrap();

    let flipped = {
        let mut bytes = good.clone();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        bytes
    };
    let damages: [(&str, Vec<u8>); 5] = [
        ("one byte flipped in the compiled code", flipped),
        ("truncated", good[..good.len() / 3].to_vec()),
        ("empty", Vec::new()),
        ("compiled by another host", foreign),
        ("a header and nothing else", good[..40].to_vec()),
    ];
    for (damage, bytes) in damages {
        std::fs::write(&entry, &bytes).unwrap();
        let node = reopen(dir.path(), Limits::default()).await;
        quote(&node, &agent).await;
        let stats = node.sandbox().stats();
        assert_eq!(stats.disk.unwrap().rejected, 1, "{damage}: refused");
        assert_eq!(stats.disk.unwrap().hits, 0, "{damage}: never loaded");
        assert_eq!(stats.compiles, 1, "{damage}: compiled again");
        node.shutdown().await.unwrap();
        drop(node);
        assert_eq!(
            std::fs::read(&entry).unwrap(),
            good,
            "{damage}: the entry is rewritten"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_compiles_once_however_many_callers_ask_at_once() {
    let host = TestHost::new().await;
    let mut checks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let node = host.node.clone();
        checks.spawn(async move { node.check_component(examples::ENERGY_TRADER.to_vec()).await });
    }
    for checked in checks.join_all().await {
        checked.expect("checks");
    }
    assert_eq!(host.node.sandbox().stats().compiles, 1);
}

#[tokio::test]
async fn a_component_past_the_compile_deadline_is_refused_and_not_compiled_again() {
    let host = TestHost::with_limits(Limits {
        max_compile_time: Duration::from_micros(1),
        ..Limits::default()
    })
    .await;
    for attempt in ["first", "second"] {
        let error = host
            .node
            .publish(HOSTILE, PublishOptions::default())
            .await
            .expect_err("refused");
        assert!(
            matches!(
                error,
                PublishError::Check(CheckError::CompileTimeout { .. })
            ),
            "{attempt}: {error}"
        );
        assert!(error.to_string().contains("to compile"), "{error}");
    }
    assert_eq!(host.node.sandbox().stats().compiles, 1);
    assert!(cache_entries(host.dir.path()).is_empty(), "nothing cached");
}

#[tokio::test]
async fn loaded_agents_are_bounded_and_an_evicted_one_loads_from_disk() {
    let host = TestHost::with_limits(Limits {
        max_loaded_agents: 2,
        ..Limits::default()
    })
    .await;
    let driver = host.publish(examples::RIDE_DRIVER).await.hash().to_hex();
    host.publish(examples::RIDE_RIDER).await;
    host.publish(examples::ENERGY_TRADER).await;
    assert_eq!(host.node.sandbox().stats().loaded, 2);
    quote(&host.node, &driver).await;
    let stats = host.node.sandbox().stats();
    assert_eq!(stats.loaded, 2);
    assert_eq!(stats.compiles, 3, "loaded again without compiling");
    assert_eq!(stats.disk.unwrap().hits, 1);
}

#[tokio::test]
async fn the_disk_cache_stays_under_its_cap() {
    let probe = TestHost::new().await;
    probe.publish(examples::RIDE_DRIVER).await;
    let one_entry = std::fs::metadata(&cache_entries(probe.dir.path())[0])
        .unwrap()
        .len();

    let cap = one_entry * 3 / 2;
    let host = TestHost::with_limits(Limits {
        max_compiled_cache_bytes: cap,
        ..Limits::default()
    })
    .await;
    for component in [
        examples::RIDE_DRIVER,
        examples::RIDE_RIDER,
        examples::ENERGY_TRADER,
    ] {
        host.publish(component).await;
    }
    let total: u64 = cache_entries(host.dir.path())
        .iter()
        .map(|e| std::fs::metadata(e).unwrap().len())
        .sum();
    assert!(total <= cap, "{total} bytes cached past a cap of {cap}");
    assert!(host.node.sandbox().stats().disk.unwrap().evicted >= 2);
}

#[tokio::test]
async fn instances_come_from_a_pool_unless_the_address_space_is_too_small() {
    let host = TestHost::new().await;
    assert_eq!(
        host.node.sandbox().stats().allocation,
        Some(Allocation::Pooling { instances: 1_000 })
    );
    let agent = host.publish(examples::RIDE_DRIVER).await.hash().to_hex();
    quote(&host.node, &agent).await;

    // Millions of slots of 4 GiB each cannot be reserved on any 64-bit machine.
    let host = TestHost::with_limits(Limits {
        pooled_instances: 4_000_000,
        ..Limits::default()
    })
    .await;
    assert_eq!(
        host.node.sandbox().stats().allocation,
        Some(Allocation::OnDemand)
    );
    let agent = host.publish(examples::RIDE_DRIVER).await.hash().to_hex();
    quote(&host.node, &agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_concurrent_calls_than_pool_slots_wait_for_a_slot() {
    // Ten slots with call depth 4: two top-level calls at a time.
    let host = TestHost::with_limits(Limits {
        pooled_instances: 10,
        ..Limits::default()
    })
    .await;
    assert_eq!(
        host.node.sandbox().stats().allocation,
        Some(Allocation::Pooling { instances: 10 })
    );
    // Loops yield to the executor as they burn fuel, so all sixteen are in flight at once.
    let agent = host.publish(HOSTILE).await.hash().to_hex();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (node, agent) = (host.node.clone(), agent.clone());
        calls.spawn(async move { node.run(&agent, "loop", b"", Some(30_000_000)).await });
    }
    for execution in calls.join_all().await {
        assert_eq!(execution.expect("runs").outcome, Outcome::FuelExhausted);
    }
}
