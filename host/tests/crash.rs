//! `agora host --api`, killed with SIGKILL at varying moments while it runs invocations and
//! ingests receipts over HTTP, loses nothing it acknowledged: twenty runs of the real binary on one
//! data dir, then the database is intact, every receipt a caller was handed and every receipt a
//! peer was told was stored is there, and the host's chain never signs a sequence number twice.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_host::client::ApiClient;
use agora_host::invoke::InvokeMessage;
use agora_host::{DataDir, Node, NodeConfig, PublishOptions, examples};
use agora_registry::{
    Hash, PublicKey, ReceiptMessage, Registry, SecretKey, SignedReceipt, SignedRequest,
};
use common::{agora, start_host};

const RUNS: u64 = 20;
const QUOTE: &[u8] = br#"{"trip": {"distance_m": 4000, "duration_s": 660}}"#;

fn sign(caller: &SecretKey, host: PublicKey, agent: Hash) -> (SignedRequest, InvokeMessage) {
    let quote = std::str::from_utf8(QUOTE).unwrap();
    InvokeMessage::sign(caller, host, agent, "quote", quote, 50_000_000).unwrap()
}

/// Invokes the agent until the host stops answering; records every receipt handed back.
async fn invoke_until_killed(
    client: ApiClient,
    host: PublicKey,
    agent: Hash,
    handed_out: Arc<Mutex<Vec<SignedReceipt>>>,
) {
    let caller = SecretKey::generate();
    loop {
        let (request, message) = sign(&caller, host, agent);
        let Ok(answer) = agora_host::invoke::over_http(&client, &message).await else {
            return;
        };
        let called = agora_host::invoke::check(&request, answer).expect("a valid receipt");
        handed_out.lock().unwrap().push(called.receipt);
    }
}

/// Posts a peer's receipts in order until the host stops answering; returns how many it
/// acknowledged (each answer comes after the receipt was committed).
async fn ingest_until_killed(
    client: ApiClient,
    receipts: &[(SignedReceipt, SignedRequest)],
) -> usize {
    for (acked, (receipt, request)) in receipts.iter().enumerate() {
        let message = ReceiptMessage::encode(receipt, Some(request));
        if client.post_json("/v1/receipts", message).await.is_err() {
            return acked;
        }
    }
    receipts.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_traffic_loses_no_acknowledged_receipt_and_never_reuses_a_sequence_number()
 {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let host: PublicKey = agora(&data, &["keygen"]).trim().parse().unwrap();
    let component = dir.path().join("ride-driver.wasm");
    std::fs::write(&component, examples::RIDE_DRIVER).unwrap();
    let manifest: Hash = agora(&data, &["publish", component.to_str().unwrap()])
        .lines()
        .find_map(|line| line.strip_prefix("manifest  "))
        .expect("the manifest hash")
        .parse()
        .unwrap();

    // A peer's receipts to ingest: real executions on another host of an agent this host knows.
    let peer_dir = DataDir::new(dir.path().join("peer"));
    peer_dir.keygen().unwrap();
    let peer = Node::open(NodeConfig::new(peer_dir)).await.unwrap();
    let peer_agent = peer
        .publish(examples::RIDE_DRIVER, PublishOptions::default())
        .await
        .unwrap()
        .manifest;
    Registry::open(&data.join("registry.db"))
        .unwrap()
        .insert_manifest(&peer_agent)
        .unwrap();
    let caller = SecretKey::generate();
    let mut peer_receipts = Vec::new();
    for _ in 0..RUNS * 40 {
        let (request, _) = sign(&caller, peer.public_key(), peer_agent.hash());
        let execution = peer.run_request(&request, "quote", QUOTE).await.unwrap();
        peer_receipts.push((execution.receipt, request));
    }
    peer.shutdown().await.unwrap();

    let handed_out = Arc::new(Mutex::new(Vec::new()));
    let mut ingested = 0;
    for run in 0..RUNS {
        let mut host_process = start_host(&data, &[]);
        let client = ApiClient::new(&host_process.api).unwrap();
        let invokers: Vec<_> = (0..2)
            .map(|_| {
                tokio::spawn(invoke_until_killed(
                    client.clone(),
                    host,
                    manifest,
                    handed_out.clone(),
                ))
            })
            .collect();
        let rest = peer_receipts[ingested..].to_vec();
        let ingester = {
            let client = client.clone();
            tokio::spawn(async move { ingest_until_killed(client, &rest).await })
        };
        // Kill at a different moment of the traffic each run.
        tokio::time::sleep(Duration::from_millis(60 + (run * 53) % 400)).await;
        host_process.child.kill().unwrap();
        host_process.child.wait().unwrap();
        for invoker in invokers {
            invoker.await.unwrap();
        }
        ingested += ingester.await.unwrap();
    }
    let handed_out = handed_out.lock().unwrap().clone();
    assert!(
        handed_out.len() as u64 >= RUNS,
        "too little traffic to test: {} receipts handed out",
        handed_out.len()
    );

    let path = data.join("registry.db");
    let integrity: String = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let registry = Registry::open(&path).unwrap();
    for receipt in &handed_out {
        assert_eq!(
            registry
                .receipt(&receipt.hash())
                .unwrap()
                .map(|stored| stored.as_bytes().to_vec()),
            Some(receipt.as_bytes().to_vec()),
            "receipt {} was handed to a caller but is gone",
            receipt.body().seq
        );
    }
    for (receipt, _) in &peer_receipts[..ingested] {
        assert!(
            registry.receipt(&receipt.hash()).unwrap().is_some(),
            "receipt {} from a peer was acknowledged but is gone",
            receipt.body().seq
        );
    }
    let chain = registry.receipt_chain(&host).unwrap();
    let mut seqs: Vec<u64> = chain.iter().map(|r| r.body().seq).collect();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        chain.len(),
        "a sequence number was signed twice"
    );
    for pair in chain.windows(2) {
        assert_eq!(pair[1].body().prev, Some(pair[0].hash()), "the chain links");
    }
    println!(
        "{RUNS} kills: {} receipts handed to callers, {ingested} ingested, 0 lost; chain of {} \
         ends at seq {}",
        handed_out.len(),
        chain.len(),
        chain.last().map_or(0, |r| r.body().seq)
    );
}
