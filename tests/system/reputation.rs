//! Scores computed from signed evidence: what moves them and what cannot.

use agora_host::{PublishOptions, examples};
use agora_registry::reputation::{EvidenceSet, ScoreParams, Scores, compute};
use agora_registry::{
    AgentRef, Hash, Outcome, Receipt, SecretKey, Signed, SignedManifest, request_hash,
};
use agora_tests::{HOSTILE, TestHost, now_ms, sign_feedback, sign_request};

const PAYLOAD: &[u8] = br#"{"trip": {"distance_m": 5000, "duration_s": 600}}"#;

/// A host that published a priced driver, and three callers who used it and rated it.
async fn market() -> (TestHost, SignedManifest, Vec<SecretKey>) {
    let host = TestHost::new().await;
    let options = PublishOptions {
        price_per_mfuel: 1_000,
        ..PublishOptions::default()
    };
    let driver = host
        .node
        .publish(examples::RIDE_DRIVER, options)
        .await
        .unwrap()
        .manifest;
    let callers: Vec<SecretKey> = (0..3).map(|_| SecretKey::generate()).collect();
    for (caller, score) in callers.iter().zip([90, 80, 100]) {
        let request = sign_request(
            caller,
            host.node.public_key(),
            driver.hash(),
            "quote",
            PAYLOAD,
        );
        let receipt = host
            .node
            .run_request(&request, "quote", PAYLOAD)
            .await
            .unwrap()
            .receipt;
        assert!(receipt.body().charge > 0);
        host.node
            .registry()
            .insert_feedback(&sign_feedback(caller, &receipt, score))
            .unwrap();
    }
    (host, driver, callers)
}

fn scores(host: &TestHost) -> Scores {
    scores_at(host, now_ms())
}

fn scores_at(host: &TestHost, now: u64) -> Scores {
    let evidence = host.node.registry().evidence_set().unwrap();
    compute(
        &evidence,
        &ScoreParams::new(vec![host.node.public_key()], now),
    )
}

#[tokio::test]
async fn paid_and_rated_calls_build_an_agents_reputation() {
    let (host, driver, callers) = market().await;
    let scores = scores(&host);
    let reputation = scores.agent(&driver.body().component.hash);
    assert_eq!(reputation.evidence, 3);
    assert!(reputation.quality() > 0.5, "{reputation:?}");
    assert!(reputation.lower_bound() < reputation.quality());
    for caller in &callers {
        assert!(
            scores.trust_in(&caller.public()) > 0.0,
            "paying callers are reachable from the anchor"
        );
    }
    let publisher = scores.publishers[&driver.body().publisher];
    assert_eq!(publisher.evidence, 3);
}

#[tokio::test]
async fn fifty_sybils_rating_through_self_dealing_or_without_receipts_move_nothing() {
    let (host, driver, _) = market().await;
    // One clock for both computations, so that only the evidence differs.
    let now = now_ms();
    let before = scores_at(&host, now);
    let registry = host.node.registry();
    let component = driver.body().component.hash;

    let sybils: Vec<SecretKey> = (0..50).map(|_| SecretKey::generate()).collect();
    for (i, sybil) in sybils.iter().enumerate() {
        // Without a receipt: refused outright.
        let mut fake = Receipt {
            agent: AgentRef {
                manifest: driver.hash(),
                component,
            },
            request: Some(Hash::of(&[i as u8])),
            caller: Some(sybil.public()),
            input_hash: request_hash("quote", PAYLOAD),
            output_hash: None,
            outcome: Outcome::Ok,
            fuel_limit: 1_000_000,
            fuel_used: 900_000,
            charge: 1_000_000,
            wall_time_us: 1,
            nested: vec![],
            parent_call: None,
            host: sybil.public(),
            runtime: agora_host::RUNTIME_VERSION.into(),
            seq: 0,
            prev: None,
            timestamp_ms: now_ms(),
        };
        let unstored = Signed::sign(fake.clone(), sybil).unwrap();
        assert!(
            registry
                .insert_feedback(&sign_feedback(sybil, &unstored, 100))
                .is_err()
        );

        // Self-dealing: the sybil hosts the call, calls it and rates it.
        let self_dealt = Signed::sign(fake.clone(), sybil).unwrap();
        registry.insert_receipt(&self_dealt).unwrap();
        assert!(
            registry
                .insert_feedback(&sign_feedback(sybil, &self_dealt, 100))
                .is_err()
        );

        // A ring: one sybil hosts a paid call for the next, which rates it 100. The feedback
        // is well-formed, but nobody the anchor trusts trusts either of them.
        let next = &sybils[(i + 1) % sybils.len()];
        fake.caller = Some(next.public());
        fake.seq = 1;
        let ring = Signed::sign(fake, sybil).unwrap();
        registry.insert_receipt(&ring).unwrap();
        registry
            .insert_feedback(&sign_feedback(next, &ring, 100))
            .unwrap();
    }

    let after = scores_at(&host, now);
    assert_eq!(
        after.agent(&component),
        before.agent(&component),
        "the agent's score did not move"
    );
    for sybil in &sybils {
        assert_eq!(after.trust_in(&sybil.public()), 0.0);
    }
}

#[tokio::test]
async fn failures_count_against_an_agent_without_any_feedback() {
    let host = TestHost::new().await;
    let options = PublishOptions {
        price_per_mfuel: 1_000,
        ..PublishOptions::default()
    };
    let hostile = host.node.publish(HOSTILE, options).await.unwrap().manifest;
    let caller = SecretKey::generate();
    for _ in 0..3 {
        let request = sign_request(
            &caller,
            host.node.public_key(),
            hostile.hash(),
            "panic",
            b"",
        );
        let execution = host.node.run_request(&request, "panic", b"").await.unwrap();
        assert!(matches!(execution.outcome, Outcome::Trap { .. }));
    }
    let reputation = scores(&host).agent(&hostile.body().component.hash);
    assert_eq!(reputation.evidence, 3);
    assert!(reputation.quality() < 0.5, "{reputation:?}");
}

#[tokio::test]
async fn a_host_whose_receipt_chain_forks_loses_its_weight() {
    let (host, _driver, callers) = market().await;
    // A second host that a trusted caller used and rated well.
    let other = SecretKey::generate();
    let receipt = |seq: u64, output: &[u8]| {
        Signed::sign(
            Receipt {
                agent: AgentRef {
                    manifest: Hash::of(b"elsewhere"),
                    component: Hash::of(b"code"),
                },
                request: Some(Hash::of(output)),
                caller: Some(callers[0].public()),
                input_hash: request_hash("quote", PAYLOAD),
                output_hash: Some(Hash::of(output)),
                outcome: Outcome::Ok,
                fuel_limit: 1_000_000,
                fuel_used: 900_000,
                charge: 500,
                wall_time_us: 1,
                nested: vec![],
                parent_call: None,
                host: other.public(),
                runtime: agora_host::RUNTIME_VERSION.into(),
                seq,
                prev: None,
                timestamp_ms: now_ms(),
            },
            &other,
        )
        .unwrap()
    };
    let registry = host.node.registry();
    let served = receipt(0, b"one history");
    registry.insert_receipt(&served).unwrap();
    let mut evidence = registry.evidence_set().unwrap();
    assert!(evidence.rate(&sign_feedback(&callers[0], &served, 100)));
    let params = ScoreParams::new(vec![host.node.public_key()], now_ms());
    assert!(compute(&evidence, &params).trust_in(&other.public()) > 0.0);

    registry
        .insert_receipt(&receipt(0, b"another history"))
        .unwrap();
    assert_eq!(registry.forks(&other.public()).unwrap().len(), 1);
    let mut evidence = registry.evidence_set().unwrap();
    assert!(evidence.rate(&sign_feedback(&callers[0], &served, 100)));
    assert_eq!(compute(&evidence, &params).trust_in(&other.public()), 0.0);
}

#[tokio::test]
async fn two_hosts_with_the_same_evidence_compute_the_same_scores() {
    let (first, driver, _) = market().await;
    let second = TestHost::new().await;
    let registry = first.node.registry();
    let receipts = registry.receipts(usize::MAX).unwrap();
    let feedback: Vec<_> = receipts
        .iter()
        .filter_map(|r| registry.feedback(&r.hash()).unwrap())
        .collect();
    assert!(!feedback.is_empty());
    // Scores read from the registry's columns see exactly what the records say.
    assert_eq!(
        registry.evidence_set().unwrap(),
        EvidenceSet::from_records(
            &registry.manifests().unwrap(),
            &receipts,
            &feedback,
            Default::default()
        )
    );
    // The second host receives the same signed records (in another order).
    second.node.registry().insert_manifest(&driver).unwrap();
    for receipt in receipts.iter().rev() {
        second.node.registry().insert_receipt(receipt).unwrap();
    }
    for feedback in feedback.iter().rev() {
        second.node.registry().insert_feedback(feedback).unwrap();
    }
    let anchors = vec![first.node.public_key()];
    let now = now_ms();
    let a = compute(
        &first.node.registry().evidence_set().unwrap(),
        &ScoreParams::new(anchors.clone(), now),
    );
    let b = compute(
        &second.node.registry().evidence_set().unwrap(),
        &ScoreParams::new(anchors, now),
    );
    assert_eq!(a, b);
    assert!(a.agent(&driver.body().component.hash).evidence > 0);
}
