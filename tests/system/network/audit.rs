//! Verification that happens by itself, across three hosts where one lies: a host checking
//! every receipt it receives finds the lie by running the call again, records it, and passes
//! its validation on; a third host that checks nothing itself hears of the fraud, fetches the
//! proof, runs the call too, and stops trusting the liar. Honest receipts get validations; a
//! receipt whose host cannot produce its transcript is unbacked. A host that joins later learns
//! of the fraud by catching up, and checks it the same way.

use std::time::Duration;

use agora_host::api::{ApiConfig, ApiServer};
use agora_host::client::ApiClient;
use agora_host::examples;
use agora_host::net::{AuditConfig, NetConfig, Network};
use agora_registry::{
    BlobRef, CallData, Finding, Hash, Outcome, Receipt, Registry, SecretKey, SignedReceipt,
    TrapCode,
};
use agora_tests::TestHost;

use super::*;

const QUOTE: &[u8] = br#"{"trip": {"distance_m": 4000, "duration_s": 660}}"#;

async fn online_auditing(host: &TestHost, peers: &[&Network], audit: AuditConfig) -> Network {
    let config = NetConfig::local()
        .peers(peers.iter().map(|p| p.addr()))
        .audit(audit.interval(Duration::from_millis(100)));
    Network::start(host.node.clone(), config)
        .await
        .expect("start network")
}

fn host_key(host: &TestHost) -> SecretKey {
    SecretKey::load(&host.node.data_dir().key_path()).unwrap()
}

/// Signs, as `host`'s next receipt, `honest` changed by `change`, keeping `data` with it as
/// the call's input and transcript (or none).
async fn sign_altered(
    host: &TestHost,
    honest: &SignedReceipt,
    change: impl FnOnce(&mut Receipt),
    data: Option<CallData>,
) -> SignedReceipt {
    let registry: &Registry = host.node.registry();
    let mut body = honest.body().clone();
    change(&mut body);
    let key = host_key(host);
    match data {
        Some(data) => registry
            .append_receipt_with(&key, body, data)
            .await
            .unwrap(),
        None => registry.append_receipt_async(&key, body).await.unwrap(),
    }
}

/// A host that published the ride driver and ran one honest quote, and that quote's receipt.
async fn driver_with_an_honest_quote() -> (TestHost, SignedReceipt) {
    let host = TestHost::new().await;
    host.publish(examples::RIDE_DRIVER).await;
    let honest = host
        .node
        .run("ride-driver", "quote", QUOTE, None)
        .await
        .unwrap()
        .receipt;
    (host, honest)
}

/// Signs, as `host`'s next receipt, `honest` changed by `change`, kept with the honest call's
/// input and transcript: a lie that running the call again exposes.
async fn sign_lie(
    host: &TestHost,
    honest: &SignedReceipt,
    change: impl FnOnce(&mut Receipt),
) -> SignedReceipt {
    let (input, transcript) = host.kept(honest);
    let data = CallData { input, transcript };
    sign_altered(host, honest, change, Some(data)).await
}

fn proven_fraud(host: &TestHost, receipt: &SignedReceipt) -> bool {
    host.node
        .registry()
        .misbehaviour(&receipt.body().host)
        .unwrap()
        .iter()
        .any(|m| m.kind == "fraud" && m.subject == receipt.hash())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lie_is_found_by_sampling_and_every_host_stops_trusting_the_liar() {
    let (liar, honest) = driver_with_an_honest_quote().await;
    // Three lies: less fuel than the call burnt, another output, another outcome.
    let alterations: [fn(&mut Receipt); 3] = [
        |body| body.fuel_used -= 1,
        |body| body.output_hash = Some(Hash::of(b"a higher fare")),
        |body| {
            body.outcome = Outcome::Trap {
                code: Some(TrapCode::Unreachable),
                message: "the agent crashed".into(),
            };
            body.output_hash = None;
        },
    ];
    let mut lies = Vec::new();
    for alteration in alterations {
        lies.push(sign_lie(&liar, &honest, alteration).await);
    }
    let unbacked = sign_altered(
        &liar,
        &honest,
        |body| {
            body.transcript = Some(BlobRef {
                hash: Hash::of(b"a transcript never kept"),
                size: 23,
            })
        },
        None,
    )
    .await;

    let liar_net = online(&liar).await;
    // The third host checks nothing itself: what it learns of the lie, it learns from others.
    let third = TestHost::new().await;
    let third_net = online_auditing(&third, &[&liar_net], AuditConfig::off()).await;
    let checker = TestHost::new().await;
    let checker_net = online_auditing(
        &checker,
        &[&liar_net, &third_net],
        AuditConfig::every_receipt(),
    )
    .await;

    eventually("the checker proves every lie", || {
        lies.iter().all(|lie| proven_fraud(&checker, lie))
    })
    .await;
    eventually("the checker validates the honest receipt", || {
        checker
            .node
            .registry()
            .validations_of(&honest.hash())
            .unwrap()
            .iter()
            .any(|v| {
                v.body().validator == checker.node.public_key()
                    && v.body().finding == Finding::Matches
            })
    })
    .await;
    eventually("the receipt without a transcript is unbacked", || {
        checker
            .node
            .registry()
            .unbacked_receipts(&liar.node.public_key())
            .unwrap()
            .iter()
            .any(|(receipt, _)| *receipt == unbacked.hash())
    })
    .await;
    assert_eq!(checker_net.audit_stats().fraud(), 3);
    // An operator sees it in the metrics.
    let api = ApiServer::start(
        checker.node.clone(),
        ApiConfig {
            audit: Some(checker_net.audit_stats_handle()),
            ..ApiConfig::default()
        },
    )
    .await
    .unwrap();
    let metrics = ApiClient::new(&format!("http://{}", api.addr()))
        .unwrap()
        .get_text("/metrics")
        .await
        .unwrap();
    assert!(metrics.contains("agora_audit_fraud_total 3"), "{metrics}");
    assert!(
        metrics.contains("agora_audit_unbacked_total 1"),
        "{metrics}"
    );

    // The third host ran the call itself before it believed the report.
    eventually("the third host proves every lie too", || {
        lies.iter().all(|lie| proven_fraud(&third, lie))
    })
    .await;
    assert!(third_net.audit_stats().reports_checked() >= 3);
    assert_eq!(third_net.audit_stats().sampled(), 0);
    let evidence = third.node.registry().evidence_set().unwrap();
    assert!(evidence.dishonest.contains(&liar.node.public_key()));
    // The proofs it holds are whole: anyone can check them again.
    for lie in &lies {
        let proof = third.node.registry().fraud_proof(&lie.hash()).unwrap();
        assert_eq!(proof.unwrap().receipt.hash(), lie.hash());
    }

    // The honest receipt's validation was passed on as well.
    eventually(
        "the third host holds the honest receipt's validation",
        || {
            !third
                .node
                .registry()
                .validations_of(&honest.hash())
                .unwrap()
                .is_empty()
        },
    )
    .await;

    for net in [checker_net, third_net, liar_net] {
        net.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_joins_after_a_lie_was_proven_learns_of_it_by_catching_up() {
    let (liar, honest) = driver_with_an_honest_quote().await;
    let lie = sign_lie(&liar, &honest, |body| body.fuel_used -= 1).await;
    let liar_net = online(&liar).await;
    let checker = TestHost::new().await;
    let checker_net = online_auditing(&checker, &[&liar_net], AuditConfig::every_receipt()).await;
    eventually("the checker proves the lie", || {
        proven_fraud(&checker, &lie)
    })
    .await;
    let validated_honest = |host: &TestHost| {
        !host
            .node
            .registry()
            .validations_of(&honest.hash())
            .unwrap()
            .is_empty()
    };
    eventually("the checker validates the honest receipt", || {
        validated_honest(&checker)
    })
    .await;

    // The checker announced both validations before this host existed: only catching up on
    // the checker's evidence can bring them.
    let late = TestHost::new().await;
    let late_net = online_auditing(&late, &[&checker_net], AuditConfig::off()).await;
    eventually("the late host proves the lie too", || {
        proven_fraud(&late, &lie)
    })
    .await;
    let evidence = late.node.registry().evidence_set().unwrap();
    assert!(evidence.dishonest.contains(&liar.node.public_key()));
    assert_eq!(
        late_net.audit_stats().sampled(),
        0,
        "it checked nothing itself"
    );
    eventually(
        "the late host holds the honest receipt's validation",
        || validated_honest(&late),
    )
    .await;

    for net in [late_net, checker_net, liar_net] {
        net.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_proven_lies_than_the_checker_holds_at_once_all_arrive_by_catching_up() {
    let (liar, honest) = driver_with_an_honest_quote().await;
    // More than the 64 reported frauds a host queues for checking at once.
    let mut lies = Vec::new();
    for n in 1..=80 {
        lies.push(sign_lie(&liar, &honest, |body| body.fuel_used -= n).await);
    }
    let liar_net = online(&liar).await;
    let checker = TestHost::new().await;
    let checker_net = online_auditing(&checker, &[&liar_net], AuditConfig::every_receipt()).await;
    eventually("the checker proves every lie", || {
        lies.iter().all(|lie| proven_fraud(&checker, lie))
    })
    .await;

    let late = TestHost::new().await;
    let late_net = online_auditing(&late, &[&checker_net], AuditConfig::off()).await;
    eventually("the late host proves every lie too", || {
        lies.iter().all(|lie| proven_fraud(&late, lie))
    })
    .await;
    assert_eq!(
        late_net.audit_stats().reports_dropped(),
        0,
        "none was given up on"
    );

    for net in [late_net, checker_net, liar_net] {
        net.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_cannot_be_reached_for_its_call_data_has_its_receipts_unbacked() {
    let (signer, receipt) = driver_with_an_honest_quote().await;
    let signer_net = online(&signer).await;
    let relay = TestHost::new().await;
    let relay_net = online_auditing(&relay, &[&signer_net], AuditConfig::off()).await;
    eventually("the relay holds the receipt", || {
        relay
            .node
            .registry()
            .receipt(&receipt.hash())
            .unwrap()
            .is_some()
    })
    .await;
    // The signer goes away; a checker that hears of its receipt only from the relay cannot
    // get the call data by the deadline.
    signer_net.shutdown().await;
    let checker = TestHost::new().await;
    let checker_net = online_auditing(
        &checker,
        &[&relay_net],
        AuditConfig::every_receipt().call_data_deadline(Duration::from_secs(1)),
    )
    .await;
    eventually("the checker unbacks the receipt", || {
        checker
            .node
            .registry()
            .unbacked_receipts(&signer.node.public_key())
            .unwrap()
            .iter()
            .any(|(unbacked, _)| *unbacked == receipt.hash())
    })
    .await;
    for net in [checker_net, relay_net] {
        net.shutdown().await;
    }
}
