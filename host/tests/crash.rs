//! `agora host --api`, killed with SIGKILL at varying moments while it runs invocations and
//! ingests receipts over HTTP, loses nothing it acknowledged: twenty runs of the real binary on one
//! data dir, then the database is intact, every receipt a caller was handed and every receipt a
//! peer was told was stored is there, and the host's chain never signs a sequence number twice.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_host::client::ApiClient;
use agora_host::{DataDir, Node, NodeConfig, PublishOptions, examples};
use agora_registry::{
    CallRequest, Hash, PublicKey, ReceiptMessage, Registry, SecretKey, Signed, SignedReceipt,
    SignedRequest, request_hash,
};

const RUNS: u64 = 20;
const QUOTE: &[u8] = br#"{"trip": {"distance_m": 4000, "duration_s": 660}}"#;

fn agora(data: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_agora"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run agora");
    assert!(
        out.status.success(),
        "agora {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts `agora host --api` on `data`; returns the process and its API address once it serves.
fn start_host(data: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agora"))
        .arg("--data-dir")
        .arg(data)
        .args(["host", "--api", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start agora host");
    let stdout = child.stdout.take().expect("stdout");
    let api = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("api ").map(str::to_owned))
        .expect("the host printed its API address");
    (child, api)
}

fn sign(caller: &SecretKey, host: PublicKey, agent: Hash) -> SignedRequest {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    Signed::sign(
        CallRequest {
            caller: caller.public(),
            host,
            agent,
            input_hash: request_hash("quote", QUOTE),
            fuel_limit: 50_000_000,
            nonce: CallRequest::new_nonce(),
            expires_at_ms: now + 60_000,
        },
        caller,
    )
    .unwrap()
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
        let request = sign(&caller, host, agent);
        let body = serde_json::json!({
            "request": String::from_utf8_lossy(request.as_bytes()),
            "action": "quote",
            "payload": String::from_utf8_lossy(QUOTE),
        });
        let Ok(answer) = client
            .post_json("/v1/invoke", serde_json::to_vec(&body).unwrap())
            .await
        else {
            return;
        };
        let receipt = answer["receipt"].as_str().expect("a receipt");
        let receipt = SignedReceipt::from_bytes(receipt.as_bytes()).expect("a valid receipt");
        handed_out.lock().unwrap().push(receipt);
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
        let request = sign(&caller, peer.public_key(), peer_agent.hash());
        let execution = peer.run_request(&request, "quote", QUOTE).await.unwrap();
        peer_receipts.push((execution.receipt, request));
    }
    peer.shutdown().await.unwrap();

    let handed_out = Arc::new(Mutex::new(Vec::new()));
    let mut ingested = 0;
    for run in 0..RUNS {
        let (mut child, api) = start_host(&data);
        let client = ApiClient::new(&api).unwrap();
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
        child.kill().unwrap();
        child.wait().unwrap();
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
