//! Hosts fetching agents from each other by content hash over iroh, on loopback only.

use std::sync::Mutex;
use std::time::Duration;

use agora_host::net::{FetchError, FetchProgress, NetConfig, Network, NoProgress};
use agora_host::{Limits, examples};
use agora_registry::{Hash, Outcome, SignedManifest};
use agora_tests::TestHost;

async fn online(host: &TestHost) -> Network {
    Network::start(host.node.clone(), NetConfig::local())
        .await
        .expect("start network")
}

/// Records what was transferred.
#[derive(Default)]
struct Transfers(Mutex<Vec<String>>);

impl FetchProgress for Transfers {
    fn start(&self, what: &str, _size: u64) {
        self.0.lock().unwrap().push(what.to_owned());
    }
    fn progress(&self, _bytes: u64) {}
    fn finish(&self) {}
}

#[tokio::test]
async fn a_host_fetches_an_agent_by_hash_and_runs_it_under_its_own_key() {
    let a = TestHost::new().await;
    let manifest = a.publish(examples::RIDE_DRIVER).await;
    let a_net = online(&a).await;
    let b = TestHost::new().await;
    let b_net = online(&b).await;
    // Peers pass tickets around as text.
    let peer = Network::parse_ticket(&a_net.ticket()).unwrap();

    let transfers = Transfers::default();
    let fetched = b_net
        .fetch_agent(manifest.hash(), std::slice::from_ref(&peer), &transfers)
        .await
        .unwrap();
    assert_eq!(fetched.hash(), manifest.hash());
    assert_eq!(
        transfers.0.lock().unwrap().as_slice(),
        ["manifest", "ride-driver@1.0.0"]
    );
    let component = b
        .node
        .blobs()
        .get(&manifest.body().component.hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&component[..], examples::RIDE_DRIVER);

    let payload = br#"{"trip": {"distance_m": 5000, "duration_s": 600}}"#;
    let execution = b
        .node
        .run(&manifest.hash().to_hex(), "quote", payload, None)
        .await
        .unwrap();
    assert_eq!(execution.outcome, Outcome::Ok);
    assert_eq!(execution.receipt.body().host, b.node.public_key());
    assert_eq!(execution.receipt.body().agent.manifest, manifest.hash());

    // Already present: nothing is transferred again.
    let again = Transfers::default();
    b_net
        .fetch_agent(manifest.hash(), &[peer], &again)
        .await
        .unwrap();
    assert!(again.0.lock().unwrap().is_empty());
    b_net.shutdown().await;
    a_net.shutdown().await;
}

#[tokio::test]
async fn an_unknown_hash_is_not_found_on_any_peer() {
    let a = TestHost::new().await;
    let a_net = online(&a).await;
    let b = TestHost::new().await;
    let b_net = online(&b).await;
    let unknown = Hash::of(b"no such manifest");
    let err = b_net
        .fetch_agent(unknown, &[a_net.addr()], &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::NotFound { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("{unknown} not found on any of 1 peers")),
        "{err}"
    );
    b_net.shutdown().await;
    a_net.shutdown().await;
}

#[tokio::test]
async fn a_peer_serving_corrupted_data_is_named_and_the_next_peer_is_tried() {
    let a = TestHost::new().await;
    let manifest = a.publish(examples::ENERGY_TRADER).await;
    let a_net = online(&a).await;
    // C gets a good copy from A before A's disk goes bad.
    let c = TestHost::new().await;
    let c_net = online(&c).await;
    c_net
        .fetch_agent(manifest.hash(), &[a_net.addr()], &NoProgress)
        .await
        .unwrap();
    corrupt_blob_files(&a, &manifest.body().component.hash);

    let b = TestHost::new().await;
    let b_net = online(&b).await;
    let transfers = Transfers::default();
    let fetched = b_net
        .fetch_agent(manifest.hash(), &[a_net.addr(), c_net.addr()], &transfers)
        .await
        .unwrap();
    assert_eq!(fetched.hash(), manifest.hash());
    // The component was requested twice: from A (failed verification), then from C.
    let transfers = transfers.0.lock().unwrap().clone();
    assert_eq!(
        transfers
            .iter()
            .filter(|t| t.starts_with("energy-trader"))
            .count(),
        2,
        "{transfers:?}"
    );
    let stored = b
        .node
        .blobs()
        .get(&manifest.body().component.hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Hash::of(&stored), manifest.body().component.hash);

    // With only the corrupt peer, the error names the peer and the hash.
    let d = TestHost::new().await;
    let d_net = online(&d).await;
    let err = d_net
        .fetch_agent(manifest.hash(), &[a_net.addr()], &NoProgress)
        .await
        .unwrap_err();
    let FetchError::NotFound { attempts, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(attempts[0].peer, a_net.addr().id);
    assert_eq!(attempts[0].hash, manifest.body().component.hash);
    // A's own store notices its data no longer matches the hash and refuses to serve it; a
    // peer that sends bad bytes anyway fails BLAKE3 verification on our side.
    assert!(!attempts[0].reason.is_empty());
    assert!(
        !d.node
            .blobs()
            .has(&manifest.body().component.hash)
            .await
            .unwrap(),
        "nothing corrupt stored"
    );
    assert!(d.node.registry().manifests().unwrap().is_empty());
    for net in [a_net, b_net, c_net, d_net] {
        net.shutdown().await;
    }
}

/// Flips bytes in the middle of every file the blob store keeps for `hash`, as a failing disk
/// or a malicious operator would.
fn corrupt_blob_files(host: &TestHost, hash: &Hash) {
    let mut corrupted = 0;
    let mut dirs = vec![host.node.data_dir().blobs_path()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().unwrap().to_string_lossy()
                == format!("{}.data", hash.to_hex())
            {
                let mut bytes = std::fs::read(&path).unwrap();
                let middle = bytes.len() / 2;
                for byte in &mut bytes[middle..middle + 64] {
                    *byte ^= 0xff;
                }
                std::fs::write(&path, bytes).unwrap();
                corrupted += 1;
            }
        }
    }
    assert_eq!(corrupted, 1, "the component's data file");
}

#[tokio::test]
async fn a_manifest_that_does_not_verify_is_rejected_and_not_stored() {
    let a = TestHost::new().await;
    let manifest = a.publish(examples::RIDE_DRIVER).await;
    // A forged manifest: valid bytes for its own hash, but the body no longer matches the signature.
    let forged = String::from_utf8(manifest.as_bytes().to_vec())
        .unwrap()
        .replace("\"price_per_mfuel\":0", "\"price_per_mfuel\":9");
    assert!(SignedManifest::from_bytes(forged.as_bytes()).is_err());
    let forged_hash = a.node.blobs().put(forged.into_bytes()).await.unwrap();
    let a_net = online(&a).await;

    let b = TestHost::new().await;
    let b_net = online(&b).await;
    let err = b_net
        .fetch_agent(forged_hash, &[a_net.addr()], &NoProgress)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("rejected manifest: manifest signature does not verify"),
        "{err}"
    );
    assert!(!b.node.blobs().has(&forged_hash).await.unwrap());
    assert!(
        !b.node
            .blobs()
            .has(&manifest.body().component.hash)
            .await
            .unwrap()
    );
    assert!(b.node.registry().manifests().unwrap().is_empty());
    b_net.shutdown().await;
    a_net.shutdown().await;
}

#[tokio::test]
async fn a_component_above_the_hosts_limit_is_refused_before_download() {
    let a = TestHost::new().await;
    let manifest = a.publish(examples::RIDE_RIDER).await;
    let a_net = online(&a).await;
    let b = TestHost::with_limits(Limits {
        max_component_bytes: 50_000,
        ..Limits::default()
    })
    .await;
    let b_net = online(&b).await;
    let transfers = Transfers::default();
    let err = b_net
        .fetch_agent(manifest.hash(), &[a_net.addr()], &transfers)
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::TooLarge { limit: 50_000, .. }),
        "{err}"
    );
    assert_eq!(
        transfers.0.lock().unwrap().as_slice(),
        ["manifest"],
        "the component was never requested"
    );
    b_net.shutdown().await;
    a_net.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_is_gone_fails_in_bounded_time_and_the_next_is_tried() {
    let a = TestHost::new().await;
    let manifest = a.publish(examples::RIDE_DRIVER).await;
    let a_net = online(&a).await;
    let a_addr = a_net.addr();
    // C has a copy; then A goes away.
    let c = TestHost::new().await;
    let c_net = online(&c).await;
    c_net
        .fetch_agent(manifest.hash(), std::slice::from_ref(&a_addr), &NoProgress)
        .await
        .unwrap();
    a_net.shutdown().await;

    let b = TestHost::new().await;
    let b_net = online(&b).await;
    let fetched = tokio::time::timeout(
        Duration::from_secs(20),
        b_net.fetch_agent(manifest.hash(), &[a_addr, c_net.addr()], &NoProgress),
    )
    .await
    .expect("bounded")
    .unwrap();
    assert_eq!(fetched.hash(), manifest.hash());
    b_net.shutdown().await;
    c_net.shutdown().await;
}

async fn online_with_peers(host: &TestHost, peers: &[&Network]) -> Network {
    let config = NetConfig::local().peers(peers.iter().map(|p| p.addr()));
    Network::start(host.node.clone(), config)
        .await
        .expect("start network")
}

/// Waits (bounded) until `host` knows the manifest.
async fn learns_of(host: &TestHost, manifest: &SignedManifest) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while host
        .node
        .registry()
        .manifest(&manifest.hash())
        .unwrap()
        .is_none()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never arrived",
            manifest.body().name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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

/// A peer that answers every blob request with a well-formed stream of the wrong data: the size
/// header and a valid BLAKE3 tree, but for other content than the hash asked for.
#[derive(Debug, Clone)]
struct LyingBlobServer;

impl iroh::protocol::ProtocolHandler for LyingBlobServer {
    async fn accept(
        &self,
        connection: iroh::endpoint::Connection,
    ) -> Result<(), iroh::protocol::AcceptError> {
        use bao_tree::io::outboard::PreOrderMemOutboard;
        let bogus = vec![0x5a_u8; 100_000];
        let outboard = PreOrderMemOutboard::create(&bogus, bao_tree::BlockSize::from_chunk_log(4));
        let mut encoded = (bogus.len() as u64).to_le_bytes().to_vec();
        bao_tree::io::sync::encode_ranges_validated(
            &bogus[..],
            &outboard,
            &bao_tree::ChunkRanges::all(),
            &mut encoded,
        )
        .expect("encoding bogus data");
        while let Ok((mut send, mut recv)) = connection.accept_bi().await {
            let _request = recv.read_to_end(64 * 1024).await;
            if send.write_all(&encoded).await.is_err() {
                break;
            }
            let _ = send.finish();
        }
        connection.closed().await;
        Ok(())
    }
}

#[tokio::test]
async fn a_peer_sending_data_that_does_not_match_the_hash_fails_verification() {
    let endpoint = bare_endpoint(&[]).await;
    let liar = iroh::protocol::Router::builder(endpoint.clone())
        .accept(iroh_blobs::ALPN, LyingBlobServer)
        .spawn();
    let liar_addr =
        iroh::EndpointAddr::new(endpoint.id()).with_ip_addr(endpoint.bound_sockets()[0]);

    let a = TestHost::new().await;
    let manifest = a.publish(examples::RIDE_DRIVER).await;
    let a_net = online(&a).await;
    let b = TestHost::new().await;
    let b_net = online(&b).await;

    let err = b_net
        .fetch_agent(
            manifest.hash(),
            std::slice::from_ref(&liar_addr),
            &NoProgress,
        )
        .await
        .unwrap_err();
    let FetchError::NotFound { attempts, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(attempts[0].peer, endpoint.id());
    assert_eq!(attempts[0].hash, manifest.hash());
    assert!(
        attempts[0].reason.starts_with("verification failed"),
        "{}",
        attempts[0].reason
    );
    assert!(
        err.to_string()
            .contains(&endpoint.id().fmt_short().to_string()),
        "{err}"
    );
    assert!(
        !b.node.blobs().has(&manifest.hash()).await.unwrap(),
        "nothing unverified stored"
    );

    // The next peer in the list is tried.
    let fetched = b_net
        .fetch_agent(manifest.hash(), &[liar_addr, a_net.addr()], &NoProgress)
        .await
        .unwrap();
    assert_eq!(fetched.hash(), manifest.hash());
    liar.shutdown().await.unwrap();
    a_net.shutdown().await;
    b_net.shutdown().await;
}

/// A peer that serves the manifest it is first asked for in full, then sends half of the next
/// blob and vanishes.
#[derive(Debug, Clone)]
struct VanishingServer {
    manifest: Vec<u8>,
    component: Vec<u8>,
}

fn bao_encoding(data: &[u8]) -> Vec<u8> {
    use bao_tree::io::outboard::PreOrderMemOutboard;
    let outboard = PreOrderMemOutboard::create(data, bao_tree::BlockSize::from_chunk_log(4));
    let mut encoded = (data.len() as u64).to_le_bytes().to_vec();
    bao_tree::io::sync::encode_ranges_validated(
        data,
        &outboard,
        &bao_tree::ChunkRanges::all(),
        &mut encoded,
    )
    .expect("encoding");
    encoded
}

impl iroh::protocol::ProtocolHandler for VanishingServer {
    async fn accept(
        &self,
        connection: iroh::endpoint::Connection,
    ) -> Result<(), iroh::protocol::AcceptError> {
        if let Ok((mut send, mut recv)) = connection.accept_bi().await {
            let _request = recv.read_to_end(64 * 1024).await;
            let _ = send.write_all(&bao_encoding(&self.manifest)).await;
            let _ = send.finish();
        }
        if let Ok((mut send, mut recv)) = connection.accept_bi().await {
            let _request = recv.read_to_end(64 * 1024).await;
            let encoded = bao_encoding(&self.component);
            let _ = send.write_all(&encoded[..encoded.len() / 2]).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            connection.close(1u32.into(), b"gone");
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_peer_that_vanishes_mid_transfer_leaves_nothing_partial_and_the_next_is_tried() {
    let a = TestHost::new().await;
    let manifest = a.publish(examples::ENERGY_TRADER).await;
    let a_net = online(&a).await;
    let endpoint = bare_endpoint(&[]).await;
    let vanishing = iroh::protocol::Router::builder(endpoint.clone())
        .accept(
            iroh_blobs::ALPN,
            VanishingServer {
                manifest: manifest.as_bytes().to_vec(),
                component: examples::ENERGY_TRADER.to_vec(),
            },
        )
        .spawn();
    let vanishing_addr =
        iroh::EndpointAddr::new(endpoint.id()).with_ip_addr(endpoint.bound_sockets()[0]);

    let b = TestHost::new().await;
    let b_net = online(&b).await;
    let started = std::time::Instant::now();
    let err = b_net
        .fetch_agent(
            manifest.hash(),
            std::slice::from_ref(&vanishing_addr),
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "bounded: {:?}",
        started.elapsed()
    );
    let FetchError::NotFound { attempts, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(attempts[0].hash, manifest.body().component.hash, "{err}");
    assert!(
        !b.node
            .blobs()
            .has(&manifest.body().component.hash)
            .await
            .unwrap(),
        "no partial blob"
    );
    assert!(
        b.node.registry().manifests().unwrap().is_empty(),
        "no manifest without its component"
    );

    let fetched = b_net
        .fetch_agent(
            manifest.hash(),
            &[vanishing_addr, a_net.addr()],
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(fetched.hash(), manifest.hash());
    vanishing.shutdown().await.unwrap();
    a_net.shutdown().await;
    b_net.shutdown().await;
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
async fn any_blob_can_be_fetched_by_hash_and_stays_stored() {
    let a = TestHost::new().await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let hash = a.node.blobs().put(data.clone()).await.unwrap();
    let a_net = online(&a).await;
    let b = TestHost::new().await;
    let b_net = online(&b).await;
    b_net
        .fetch_blob(hash, 1 << 20, &[a_net.addr()], &NoProgress)
        .await
        .unwrap();
    b_net.shutdown().await;
    // Still there after the network (and with it the store) has shut down and reopened.
    let reopened = agora_host::BlobStore::open(&b.node.data_dir().blobs_path())
        .await
        .unwrap();
    assert_eq!(
        reopened.get(&hash).await.unwrap().as_deref(),
        Some(&data[..])
    );
    a_net.shutdown().await;
}

#[tokio::test]
async fn a_signed_manifest_for_something_that_is_not_a_component_is_rejected() {
    use agora_registry::{AGENT_WORLD, ComponentRef, Manifest, SecretKey, Signed};

    let a = TestHost::new().await;
    let junk = vec![0u8; 40_000];
    let junk_hash = a.node.blobs().put(junk.clone()).await.unwrap();
    let key = SecretKey::load(&a.node.data_dir().key_path()).unwrap();
    let manifest = Signed::sign(
        Manifest {
            name: "not-an-agent".into(),
            version: "1.0.0".into(),
            publisher: key.public(),
            component: ComponentRef {
                hash: junk_hash,
                size: junk.len() as u64,
            },
            world: AGENT_WORLD.into(),
            actions: vec![],
            capabilities: vec![],
            limits: Limits::default().manifest_defaults(),
            price_per_mfuel: 0,
            description: "signed, but not a component".into(),
            created_at: 0,
        },
        &key,
    )
    .unwrap();
    let manifest_hash = a
        .node
        .blobs()
        .put(manifest.as_bytes().to_vec())
        .await
        .unwrap();
    let a_net = online(&a).await;
    let b = TestHost::new().await;
    let b_net = online(&b).await;
    let err = b_net
        .fetch_agent(manifest_hash, &[a_net.addr()], &NoProgress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("rejected component"), "{err}");
    b_net.shutdown().await;
    let reopened = agora_host::BlobStore::open(&b.node.data_dir().blobs_path())
        .await
        .unwrap();
    assert!(
        !reopened.has(&junk_hash).await.unwrap(),
        "the rejected bytes are not kept"
    );
    assert!(b.node.registry().manifests().unwrap().is_empty());
    a_net.shutdown().await;
}

/// A plain iroh endpoint on loopback, outside agora: the base of the hostile peers below.
async fn bare_endpoint(known: &[iroh::EndpointAddr]) -> iroh::Endpoint {
    use iroh::endpoint::{PortmapperConfig, presets};
    let lookup = iroh::address_lookup::memory::MemoryLookup::new();
    for peer in known {
        lookup.add_endpoint_info(peer.clone());
    }
    iroh::Endpoint::builder(presets::Minimal)
        .relay_mode(iroh::RelayMode::Disabled)
        .portmapper_config(PortmapperConfig::Disabled)
        .address_lookup(lookup)
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0")
        .unwrap()
        .bind()
        .await
        .unwrap()
}

/// A bare gossip peer on the marketplace topic, joined through `target`.
async fn raw_gossip_peer(
    target: &Network,
) -> (iroh::protocol::Router, iroh_gossip::api::GossipTopic) {
    let endpoint = bare_endpoint(&[target.addr()]).await;
    let gossip = iroh_gossip::Gossip::builder().spawn(endpoint.clone());
    let router = iroh::protocol::Router::builder(endpoint.clone())
        .accept(iroh_gossip::ALPN, gossip.clone())
        .spawn();
    let topic = gossip
        .subscribe_and_join(agora_host::net::marketplace_topic(), vec![target.addr().id])
        .await
        .unwrap();
    (router, topic)
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn hosts_exchange_receipts_and_feedback() {
    use agora_registry::{CallRequest, Feedback, SecretKey, Signed, request_hash};

    let a = TestHost::new().await;
    let driver = a.publish(examples::RIDE_DRIVER).await;
    let a_net = online(&a).await;
    let b = TestHost::new().await;
    let b_net = online_with_peers(&b, &[&a_net]).await;
    learns_of(&b, &driver).await;

    let caller = SecretKey::generate();
    let payload = br#"{"trip": {"distance_m": 5000, "duration_s": 600}}"#;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut receipts = Vec::new();
    for _ in 0..2 {
        let request = Signed::sign(
            CallRequest {
                caller: caller.public(),
                host: a.node.public_key(),
                agent: driver.hash(),
                input_hash: request_hash("quote", payload),
                fuel_limit: 10_000_000,
                nonce: CallRequest::new_nonce(),
                expires_at_ms: now + 60_000,
            },
            &caller,
        )
        .unwrap();
        receipts.push(
            a.node
                .run_request(&request, "quote", payload)
                .await
                .unwrap()
                .receipt,
        );
    }
    let rating = Signed::sign(
        Feedback {
            receipt: receipts[1].hash(),
            rater: caller.public(),
            score: 95,
            tags: vec![],
            created_at_ms: now,
        },
        &caller,
    )
    .unwrap();
    a.node.registry().insert_feedback(&rating).unwrap();

    let a_key = a.node.public_key();
    eventually("B receiving A's receipts", || {
        b.node.registry().receipt_chain(&a_key).unwrap().len() == 2
    })
    .await;
    eventually("B receiving the feedback", || {
        b.node
            .registry()
            .feedback(&receipts[1].hash())
            .unwrap()
            .is_some()
    })
    .await;
    let chain = b.node.registry().receipt_chain(&a_key).unwrap();
    assert_eq!(
        chain[1].body().prev,
        Some(chain[0].hash()),
        "B holds A's chain intact"
    );
    assert!(b.node.registry().forks(&a_key).unwrap().is_empty());
    a_net.shutdown().await;
    b_net.shutdown().await;
}

#[tokio::test]
async fn a_forked_receipt_chain_is_recorded_as_evidence_and_forgeries_are_dropped() {
    use agora_registry::{AgentRef, Outcome, Receipt, SecretKey, Signed, request_hash};

    let b = TestHost::new().await;
    let driver = b.publish(examples::RIDE_DRIVER).await;
    let b_net = online(&b).await;
    let (router, mut topic) = raw_gossip_peer(&b_net).await;

    // A cheating host signs two different receipts with sequence number 0.
    let cheat = SecretKey::generate();
    let receipt = |output: &[u8]| {
        Signed::sign(
            Receipt {
                agent: AgentRef {
                    manifest: driver.hash(),
                    component: driver.body().component.hash,
                },
                request: None,
                caller: None,
                input_hash: request_hash("quote", b"{}"),
                output_hash: Some(Hash::of(output)),
                outcome: Outcome::Ok,
                fuel_limit: 10,
                fuel_used: 5,
                charge: 0,
                wall_time_us: 1,
                nested: vec![],
                parent_call: None,
                host: cheat.public(),
                runtime: agora_host::RUNTIME_VERSION.into(),
                seq: 0,
                prev: None,
                timestamp_ms: 1,
                limits: None,
            },
            &cheat,
        )
        .unwrap()
    };
    let (honest, forked) = (receipt(b"to peer one"), receipt(b"to peer two"));
    let forged = String::from_utf8(honest.as_bytes().to_vec())
        .unwrap()
        .replace("\"fuel_used\":5", "\"fuel_used\":1");
    for (kind, body) in [
        (2u8, honest.as_bytes()),
        (2, forged.as_bytes()),
        (2, forked.as_bytes()),
    ] {
        let mut message = vec![kind];
        message.extend_from_slice(body);
        topic.broadcast(bytes::Bytes::from(message)).await.unwrap();
    }

    let cheat_key = cheat.public();
    eventually("the fork being recorded", || {
        !b.node.registry().forks(&cheat_key).unwrap().is_empty()
    })
    .await;
    let forks = b.node.registry().forks(&cheat_key).unwrap();
    assert_eq!(forks.len(), 1);
    assert_eq!(
        (forks[0].seq, forks[0].first, forks[0].second),
        (0, honest.hash(), forked.hash())
    );
    eventually("the forgery being dropped", || {
        b_net.gossip_stats().dropped() >= 1
    })
    .await;
    assert_eq!(
        b.node.registry().receipt_chain(&cheat_key).unwrap().len(),
        2,
        "both kept as evidence"
    );
    router.shutdown().await.unwrap();
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
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(api.addr()).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
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

#[tokio::test]
async fn a_host_that_joins_late_catches_up_on_existing_evidence_and_scores_the_same() {
    use agora_host::PublishOptions;
    use agora_registry::SecretKey;
    use agora_registry::reputation::{ScoreParams, compute};
    use agora_tests::{SigningHost, now_ms, sign_feedback, sign_request};

    // A has served and been rated, and holds a third host's receipts too — all before B exists.
    let a = TestHost::new().await;
    let options = PublishOptions {
        price_per_mfuel: 1_000,
        ..PublishOptions::default()
    };
    let driver = a
        .node
        .publish(examples::RIDE_DRIVER, options)
        .await
        .unwrap()
        .manifest;
    let payload = br#"{"trip": {"distance_m": 5000, "duration_s": 600}}"#;
    let callers: Vec<SecretKey> = (0..3).map(|_| SecretKey::generate()).collect();
    for caller in &callers {
        let request = sign_request(caller, a.node.public_key(), driver.hash(), "quote", payload);
        let receipt = a
            .node
            .run_request(&request, "quote", payload)
            .await
            .unwrap()
            .receipt;
        a.node
            .registry()
            .insert_feedback(&sign_feedback(caller, &receipt, 90))
            .unwrap();
    }
    let mut third = SigningHost::new();
    for caller in &callers {
        let (receipt, request) = third.call(&driver, caller, Outcome::Ok, |_| {});
        a.node
            .registry()
            .insert_receipt(&receipt, Some(&request))
            .unwrap();
        a.node
            .registry()
            .insert_feedback(&sign_feedback(caller, &receipt, 70))
            .unwrap();
    }
    let a_net = online(&a).await;

    let b = TestHost::new().await;
    let b_net = online_with_peers(&b, &[&a_net]).await;
    let held = |host: &TestHost| host.node.registry().receipts(usize::MAX).unwrap().len();
    eventually("B catching up on A's and the third host's receipts", || {
        held(&b) == held(&a)
    })
    .await;
    eventually("B catching up on the feedback", || {
        b.node
            .registry()
            .evidence_set()
            .unwrap()
            .calls()
            .iter()
            .filter(|c| c.rating.is_some())
            .count()
            == 6
    })
    .await;
    // Asking again brings nothing new.
    let again = b_net.catch_up(&a_net.addr()).await.unwrap();
    assert_eq!(again.stored, 0, "{again:?}");

    let mut anchors = vec![a.node.public_key()];
    anchors.extend(callers.iter().map(SecretKey::public));
    let now = now_ms();
    let score = |host: &TestHost| {
        compute(
            &host.node.registry().evidence_set().unwrap(),
            &ScoreParams::new(anchors.clone(), now),
        )
    };
    let (at_a, at_b) = (score(&a), score(&b));
    assert_eq!(at_a, at_b);
    assert_eq!(at_b.of(driver.body()).evidence, 6);
    a_net.shutdown().await;
    b_net.shutdown().await;
}

#[tokio::test]
async fn a_peer_asking_for_a_negative_number_of_records_gets_one_round_not_everything() {
    let host = TestHost::new().await;
    let agent = host.publish(examples::RIDE_DRIVER).await;
    let mut signer = agora_tests::SigningHost::new();
    let caller = agora_registry::SecretKey::generate();
    for _ in 0..300 {
        let (receipt, request) = signer.call(&agent, &caller, Outcome::Ok, |_| {});
        host.node
            .registry()
            .insert_receipt(&receipt, Some(&request))
            .unwrap();
    }
    let net = online(&host).await;
    let endpoint = bare_endpoint(&[net.addr()]).await;
    let connection = endpoint
        .connect(net.addr(), agora_host::sync::ALPN)
        .await
        .unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    // Cursor zero for every kind, and a limit of -1: to SQLite, no limit at all.
    let mut ask = [0u8; 32];
    ask[24..].copy_from_slice(&(-1i64).to_be_bytes());
    send.write_all(&ask).await.unwrap();
    send.finish().unwrap();
    let answer = recv.read_to_end(64 << 20).await.unwrap();
    let (_, frames) = agora_host::sync::parse_answer(&answer).unwrap();
    let receipts = frames.iter().filter(|(kind, _)| *kind == 2).count();
    assert!(
        (1..=256).contains(&receipts),
        "one round holds at most 256 receipts, got {receipts}"
    );
    endpoint.close().await;
    net.shutdown().await;
}

#[tokio::test]
async fn a_failed_fetch_names_the_peer_and_the_hash_and_says_what_happened() {
    let a = TestHost::new().await;
    let a_net = online(&a).await;
    let b = TestHost::new().await;
    let b_net = online(&b).await;
    let unknown = Hash::of(b"an agent nobody published");

    let err = b_net
        .fetch_agent(unknown, &[a_net.addr()], &NoProgress)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("the peer does not have it"), "{text}");
    assert!(text.contains(&unknown.to_string()), "{text}");
    assert!(
        text.contains(&a_net.addr().id.fmt_short().to_string()),
        "{text}"
    );

    // A peer that is gone: the address tried is named.
    let gone = a_net.addr();
    let port = gone.ip_addrs().next().expect("a direct address").port();
    a_net.shutdown().await;
    let err = b_net
        .fetch_agent(unknown, &[gone], &NoProgress)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("could not be reached at") && text.contains(&format!(":{port}")),
        "{text}"
    );
    b_net.shutdown().await;
}
