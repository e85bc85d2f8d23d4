//! The marketplace gossip: announcements, discovery through peers, and bounds on what strangers
//! can make a host store.

use agora_host::examples;
use agora_host::net::NoProgress;
use agora_registry::{Hash, Outcome};
use agora_tests::TestHost;
use std::time::Duration;

use super::*;

#[tokio::test]
async fn three_hosts_discover_fetch_and_negotiate_through_each_other() {
    // A publishes the drivers before it is online and the rider after; B joins through A, C
    // joins through B and never talks to A.
    let a = TestHost::new().await;
    let driver = a.publish(examples::RIDE_DRIVER).await;
    let a_net = online(&a).await;
    let b = TestHost::new().await;
    let b_net = online_with_peers(&b, &[&a_net]).await;
    let c = TestHost::new().await;
    let c_net = online_with_peers(&c, &[&b_net]).await;
    let rider = a.publish(examples::RIDE_RIDER).await;
    learns_of(&b, &driver).await;
    a_net.announce(&rider).await;

    // B fetches both by hash from A and runs a negotiation.
    for manifest in [&driver, &rider] {
        b_net
            .fetch_agent(manifest.hash(), &[a_net.addr()], &NoProgress)
            .await
            .unwrap();
    }
    let negotiation = serde_json::json!({
        "trip": {"distance_m": 8000, "duration_s": 900},
        "budget_cents": 2_000,
        "drivers": [driver.hash().to_hex()],
    })
    .to_string();
    let on_b = b
        .node
        .run(
            &rider.hash().to_hex(),
            "negotiate",
            negotiation.as_bytes(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(on_b.outcome, Outcome::Ok, "{:?}", on_b.error());
    assert_eq!(on_b.receipt.body().host, b.node.public_key());

    // C heard of both agents through B (by gossip, or by catching up on B's evidence), and
    // fetches them from B alone.
    learns_of(&c, &driver).await;
    learns_of(&c, &rider).await;
    assert_eq!(c_net.gossip_stats().dropped(), 0);
    let listing: Vec<String> = c
        .node
        .registry()
        .manifests()
        .unwrap()
        .iter()
        .map(|m| m.body().name.clone())
        .collect();
    assert!(
        listing.contains(&"ride-driver".to_string()) && listing.contains(&"ride-rider".to_string())
    );
    for manifest in [&driver, &rider] {
        c_net
            .fetch_agent(manifest.hash(), &[b_net.addr()], &NoProgress)
            .await
            .unwrap();
    }
    let on_c = c
        .node
        .run(
            &rider.hash().to_hex(),
            "negotiate",
            negotiation.as_bytes(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(on_c.outcome, Outcome::Ok);
    assert_eq!(on_c.receipt.body().host, c.node.public_key());
    assert_eq!(
        on_c.output, on_b.output,
        "the same agents give the same answer on any host"
    );
    for net in [a_net, b_net, c_net] {
        net.shutdown().await;
    }
}

#[tokio::test]
async fn invalid_announcements_are_dropped_and_counted() {
    use agora_registry::{AGENT_WORLD, ComponentRef, Manifest, ManifestLimits, SecretKey, Signed};

    let a = TestHost::new().await;
    let a_net = online(&a).await;
    // A hostile peer: a plain iroh endpoint speaking gossip on the marketplace topic.
    let (router, mut topic) = raw_gossip_peer(&a_net).await;

    let publisher = SecretKey::generate();
    let manifest = Signed::sign(
        Manifest {
            name: "solar-forecast".into(),
            version: "0.1.0".into(),
            publisher: publisher.public(),
            component: ComponentRef {
                hash: Hash::of(b"code"),
                size: 4,
            },
            world: AGENT_WORLD.into(),
            actions: vec!["forecast".into()],
            capabilities: vec![],
            limits: ManifestLimits {
                max_fuel: 1,
                max_memory_bytes: 1,
                max_wall_ms: 1,
                max_output_bytes: 1,
            },
            price_per_mfuel: 1,
            description: "valid, from a stranger".into(),
            created_at: 0,
            models: vec![],
            egress: vec![],
        },
        &publisher,
    )
    .unwrap();
    let forged = String::from_utf8(manifest.as_bytes().to_vec())
        .unwrap()
        .replace("stranger", "stranded");
    let with_kind = |kind: u8, body: &[u8]| {
        let mut message = vec![kind];
        message.extend_from_slice(body);
        bytes::Bytes::from(message)
    };
    for message in [
        with_kind(1, b"not a manifest"),
        with_kind(1, forged.as_bytes()),
        with_kind(9, manifest.as_bytes()),
        with_kind(1, manifest.as_bytes()),
    ] {
        topic.broadcast(message).await.unwrap();
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while a_net.gossip_stats().accepted() < 1 || a_net.gossip_stats().dropped() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "accepted {} dropped {}",
            a_net.gossip_stats().accepted(),
            a_net.gossip_stats().dropped()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a_net.gossip_stats().dropped(), 3);
    let known: Vec<Hash> = a
        .node
        .registry()
        .manifests()
        .unwrap()
        .iter()
        .map(|m| m.hash())
        .collect();
    assert_eq!(
        known,
        vec![manifest.hash()],
        "only the valid announcement was recorded"
    );
    router.shutdown().await.unwrap();
    a_net.shutdown().await;
}

#[tokio::test]
async fn a_release_published_while_online_is_announced() {
    let a = TestHost::new().await;
    let a_net = online(&a).await;
    let b = TestHost::new().await;
    let b_net = online_with_peers(&b, &[&a_net]).await;
    // Published through the node, as `agora publish` does from another process, not announced
    // by hand: the host notices the new release and announces it.
    let manifest = a.publish(examples::ENERGY_TRADER).await;
    learns_of(&b, &manifest).await;
    a_net.shutdown().await;
    b_net.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_manifests_from_fresh_keys_is_bounded_and_counted() {
    use agora_registry::{ComponentRef, Manifest, ManifestLimits, SecretKey, Signed};

    let b = TestHost::new().await;
    let b_net = online(&b).await;
    let (router, mut topic) = raw_gossip_peer(&b_net).await;
    let started = std::time::Instant::now();
    const FLOOD: usize = 5_000;
    for i in 0..FLOOD {
        let key = SecretKey::generate();
        let manifest = Manifest {
            name: format!("flood-{i}"),
            version: "1.0.0".into(),
            publisher: key.public(),
            component: ComponentRef {
                hash: Hash::of(&i.to_le_bytes()),
                size: 1,
            },
            world: agora_registry::AGENT_WORLD.into(),
            actions: vec!["x".into()],
            capabilities: vec![],
            limits: ManifestLimits {
                max_fuel: 1,
                max_memory_bytes: 1,
                max_wall_ms: 1,
                max_output_bytes: 1,
            },
            price_per_mfuel: 0,
            description: String::new(),
            created_at: 0,
            models: vec![],
            egress: vec![],
        };
        let signed = Signed::sign(manifest, &key).unwrap();
        let mut message = vec![1u8];
        message.extend_from_slice(signed.as_bytes());
        topic.broadcast(bytes::Bytes::from(message)).await.unwrap();
    }
    eventually("the flood being counted", || {
        b_net.gossip_stats().over_quota() > 0
    })
    .await;
    // Whatever arrives after the burst is refused at the neighbour's steady rate.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = b.node.registry().manifests().unwrap().len();
    let allowed = 256 + (2.0 * started.elapsed().as_secs_f64()).ceil() as usize;
    assert!(
        stored <= allowed,
        "{stored} manifests stored; at most {allowed} allowed"
    );
    assert!(stored > 0, "the burst is accepted");
    // The count is in the host's metrics.
    let api = agora_host::api::ApiServer::start(
        b.node.clone(),
        agora_host::api::ApiConfig {
            gossip: Some(b_net.gossip_stats_handle()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let metrics = {
        let request = agora_tests::raw_http::request("GET", "/metrics", "", b"");
        let answer = agora_tests::raw_http::exchange(api.addr(), &request).await;
        String::from_utf8(answer.body).unwrap()
    };
    let over: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("agora_gossip_over_quota_total "))
        .expect("the counter is reported")
        .trim()
        .parse()
        .unwrap();
    assert!(over > 0, "{metrics}");
    api.shutdown().await;
    // The host still works: it publishes and announces as ever.
    b.publish(examples::RIDE_DRIVER).await;
    router.shutdown().await.unwrap();
    b_net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_evidence_from_one_neighbour_is_held_to_its_budget_and_counted() {
    use agora_host::net::{EVIDENCE_PER_PEER_BURST, EVIDENCE_PER_PEER_PER_SECOND};

    let b = TestHost::new().await;
    let b_net = online(&b).await;
    let (router, mut topic) = raw_gossip_peer(&b_net).await;
    let started = std::time::Instant::now();
    const FLOOD: usize = 5_000;
    for i in 0..FLOOD {
        // Receipt messages that would fail verification: only the budget decides what is read.
        let mut message = vec![2u8];
        message.extend_from_slice(format!("not a receipt {i}").as_bytes());
        topic.broadcast(bytes::Bytes::from(message)).await.unwrap();
    }
    eventually("the flood being counted", || {
        b_net.gossip_stats().over_quota() > 0
    })
    .await;
    // Whatever arrives after the burst is held to the neighbour's steady rate.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let read = b_net.gossip_stats().dropped();
    let allowed = EVIDENCE_PER_PEER_BURST
        + (EVIDENCE_PER_PEER_PER_SECOND * started.elapsed().as_secs_f64()).ceil();
    assert!(
        (read as f64) <= allowed,
        "{read} evidence messages read from one neighbour; at most {allowed} allowed"
    );
    assert!(b_net.gossip_stats().over_quota() > 0);
    router.shutdown().await.unwrap();
    b_net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn evidence_an_honest_neighbour_relays_past_its_budget_still_arrives_by_catch_up() {
    use agora_host::net::EVIDENCE_PER_PEER_BURST;

    let (a, b) = (TestHost::new().await, TestHost::new().await);
    let driver = a.publish(examples::RIDE_DRIVER).await;
    let a_net = online(&a).await;
    // B checks none of A's receipts by running them again: that is not what this test is about,
    // and re-running a thousand of them competes with catching up on a loaded machine.
    let b_config = agora_host::net::NetConfig::local()
        .peers([a_net.addr()])
        .audit(agora_host::net::AuditConfig::off());
    let b_net = agora_host::net::Network::start(b.node.clone(), b_config)
        .await
        .expect("start network");
    learns_of(&b, &driver).await;
    // Twice one neighbour's burst of receipts, signed by A at once (copies of one real call's
    // receipt, each in A's chain), so that A's next announcements overrun B's budget for A.
    let quote = br#"{"trip": {"distance_m": 5000, "duration_s": 600}}"#;
    let first = a
        .node
        .run(&driver.hash().to_hex(), "quote", quote, None)
        .await
        .unwrap();
    let key = agora_registry::SecretKey::load(&a.node.data_dir().key_path()).unwrap();
    let calls = 2 * EVIDENCE_PER_PEER_BURST as usize;
    let mut appends = tokio::task::JoinSet::new();
    for _ in 1..calls {
        let body = first.receipt.body().clone();
        appends.spawn(a.node.registry().append_receipt_async(&key, body));
    }
    while let Some(append) = appends.join_next().await {
        append.unwrap().unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let held = b
            .node
            .registry()
            .receipt_chain(&a.node.public_key())
            .unwrap()
            .len();
        if held == calls {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B holds {held} of A's {calls} receipts (over quota: {})",
            b_net.gossip_stats().over_quota()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past the budget, or dropped by the gossip layer before the budget saw them when this
    // host read too slowly (a debug build under load): either way, some came by catch-up.
    let stats = b_net.gossip_stats();
    assert!(
        stats.over_quota() + stats.lagged() > 0,
        "the burst was exceeded, so some receipts came by catch-up"
    );
    a_net.shutdown().await;
    b_net.shutdown().await;
}
