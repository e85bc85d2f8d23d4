//! `agora verify` across three host processes: a receipt fetched from the host that signed it
//! verifies in another process; a receipt its host altered before signing becomes a fraud
//! proof, which a third host checks by running the call itself, records, and acts on by taking
//! away its trust in the liar; a proof that proves nothing is refused.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use agora_host::client::ApiClient;
use agora_host::examples;
use agora_registry::{
    CallData, Finding, FraudProof, Hash, PublicKey, Registry, SecretKey, Signed, SignedReceipt,
    Validation,
};
use common::{agora, agora_output, start_host};

const QUOTE: &str = r#"{"trip": {"distance_m": 4000, "duration_s": 660}}"#;

/// The receipt hash `agora run` reported.
fn receipt_of_run(data: &Path, manifest: &str) -> Hash {
    let out = agora_output(
        data,
        &["run", manifest, "--action", "quote", "--payload", QUOTE],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    stderr
        .split_whitespace()
        .skip_while(|word| *word != "receipt")
        .nth(1)
        .expect("agora run names the receipt")
        .parse()
        .unwrap()
}

/// What the liar does: signs, as its next receipt, the honest call with one unit less fuel,
/// keeping the call's real input and transcript with it, so that it serves them like any other.
async fn sign_a_lie(data: &Path, honest: &Hash) -> SignedReceipt {
    let registry = Registry::open(&data.join("registry.db")).unwrap();
    let key = SecretKey::load(&data.join("keys/host.key")).unwrap();
    let honest = registry.receipt(honest).unwrap().unwrap();
    let mut body = honest.body().clone();
    body.fuel_used -= 1;
    let kept = |hash| registry.call_data(hash).unwrap().unwrap();
    let data = CallData {
        input: kept(&body.input_hash),
        transcript: kept(&body.transcript.unwrap().hash),
    };
    registry
        .append_receipt_with(&key, body, data)
        .await
        .unwrap()
}

async fn trust(api: &ApiClient, host: &PublicKey) -> serde_json::Value {
    api.get_json(&format!("/v1/hosts/{host}")).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_verifies_in_another_process_and_a_lie_is_proven_to_a_third_host() {
    let dir = tempfile::tempdir().unwrap();
    let [liar, verifier, third] = ["liar", "verifier", "third"].map(|name| dir.path().join(name));
    let liar_key: PublicKey = agora(&liar, &["keygen"]).trim().parse().unwrap();
    agora(&verifier, &["keygen"]);
    agora(&third, &["keygen"]);
    let component = dir.path().join("ride-driver.wasm");
    std::fs::write(&component, examples::RIDE_DRIVER).unwrap();
    let publish = ["publish", component.to_str().unwrap()];
    let manifest = agora(&liar, &publish)
        .lines()
        .find_map(|line| line.strip_prefix("manifest  ").map(str::to_owned))
        .unwrap();
    // The third host runs the same component (what it needs to check a proof about it).
    agora(&third, &publish);

    let honest = receipt_of_run(&liar, &manifest);
    let lie = sign_a_lie(&liar, &honest).await;
    let liar_host = start_host(&liar, &[]);
    // The third host's operator vouches for the liar: it starts out trusted.
    let third_host = start_host(&third, &["--anchor", &liar_key.to_string()]);
    let third_api = ApiClient::new(&third_host.api).unwrap();
    assert!(
        trust(&third_api, &liar_key).await["trust"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    // The honest receipt verifies in another process, from what the liar's host serves.
    let out = agora_output(
        &verifier,
        &["verify", &honest.to_hex(), "--api", &liar_host.api],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verified"), "{stdout}");

    // A proof of nothing: the honest receipt, accused by someone who never ran it.
    let accuser = SecretKey::generate();
    let kept = |hash: &Hash| {
        let client = ApiClient::new(&liar_host.api).unwrap();
        let path = format!("/v1/call-data/{hash}");
        async move { client.get_bytes(&path, 1 << 20).await.unwrap().to_vec() }
    };
    let honest_receipt: SignedReceipt = Signed::from_bytes(
        &ApiClient::new(&liar_host.api)
            .unwrap()
            .get_bytes(&format!("/v1/receipts/{honest}"), 1 << 20)
            .await
            .unwrap(),
    )
    .unwrap();
    let body = honest_receipt.body();
    let false_accusation = FraudProof::new(
        honest_receipt.clone(),
        Signed::sign(
            Validation {
                receipt: honest,
                host: liar_key,
                validator: accuser.public(),
                profile: body.profile.unwrap(),
                outcome: body.outcome.clone(),
                output_hash: body.output_hash,
                fuel_used: body.fuel_used + 1,
                finding: Finding::Differs {
                    fields: vec!["fuel_used".into()],
                },
                timestamp_ms: body.timestamp_ms,
            },
            &accuser,
        )
        .unwrap(),
        kept(&body.input_hash).await,
        kept(&body.transcript.unwrap().hash).await,
    )
    .unwrap();
    let refused = third_api
        .post_json("/v1/fraud-proofs", false_accusation.to_bytes())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("422") && refused.contains("no fraud"),
        "{refused}"
    );
    assert!(
        trust(&third_api, &liar_key).await["misbehaviour"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // The lie: caught, written as a proof, reported to the third host, which checks it itself.
    let proof = dir.path().join("proof.json");
    let out = agora_output(
        &verifier,
        &[
            "verify",
            &lie.hash().to_hex(),
            "--api",
            &liar_host.api,
            "--proof",
            proof.to_str().unwrap(),
            "--report",
            &third_host.api,
        ],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(
        stdout.contains("FRAUD") && stdout.contains("fuel_used"),
        "{stdout}"
    );
    assert!(stderr.contains("recorded"), "{stderr}");
    let written = FraudProof::from_bytes(&std::fs::read(&proof).unwrap()).unwrap();
    assert_eq!(written.receipt.hash(), lie.hash());

    // The third host now holds the proof against the liar, and its trust is gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let record = trust(&third_api, &liar_key).await;
        let recorded = record["misbehaviour"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["kind"] == "fraud" && m["subject"] == lie.hash().to_hex());
        assert!(recorded, "{record}");
        if record["trust"].as_f64() == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "trust still {record}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
