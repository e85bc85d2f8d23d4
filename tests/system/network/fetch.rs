//! Fetching by content hash: verification, size gates, peers that lie, vanish or are gone, and
//! the errors that name them.

use agora_host::net::{FetchError, Network, NoProgress};
use agora_host::{Limits, examples};
use agora_registry::{Hash, Outcome, SignedManifest};
use agora_tests::TestHost;
use std::time::Duration;

use super::*;

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
            models: vec![],
            egress: vec![],
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
