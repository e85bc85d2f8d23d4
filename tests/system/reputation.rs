//! Scores computed from signed evidence: what moves them and what cannot.

use agora_host::{PublishOptions, examples};
use agora_registry::reputation::{EvidenceSet, ScoreParams, Scores, compute};
use agora_registry::{Inserted, Outcome, SecretKey, SignedManifest};
use agora_tests::{HOSTILE, SigningHost, TestHost, now_ms, sign_feedback, sign_request};

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
    scores_anchored(host, &[], now)
}

/// Scores at `host` with its own key and `vouched` as anchors.
fn scores_anchored(host: &TestHost, vouched: &[SecretKey], now: u64) -> Scores {
    let evidence = host.node.registry().evidence_set().unwrap();
    let mut anchors = vec![host.node.public_key()];
    anchors.extend(vouched.iter().map(SecretKey::public));
    compute(&evidence, &ScoreParams::new(anchors, now))
}

#[tokio::test]
async fn paid_and_rated_calls_build_an_agents_reputation() {
    let (host, driver, callers) = market().await;
    let now = now_ms();
    // Callers the operator vouches for count.
    let scores = scores_anchored(&host, &callers, now);
    let reputation = scores.of(driver.body());
    assert_eq!(reputation.evidence, 3);
    assert!(reputation.quality() > 0.5, "{reputation:?}");
    assert!(reputation.lower_bound() < reputation.quality());
    let publisher = scores.publishers[&driver.body().publisher];
    assert_eq!(publisher.evidence, 3);
    // Callers nobody vouches for gain no trust by calling, however much they call.
    let unvouched = scores_at(&host, now);
    for caller in &callers {
        assert_eq!(unvouched.trust_in(&caller.public()), 0.0);
    }
    assert_eq!(unvouched.of(driver.body()).evidence, 0);
}

#[tokio::test]
async fn fifty_sybils_rating_through_self_dealing_or_without_receipts_move_nothing() {
    let (host, driver, callers) = market().await;
    // One clock for both computations, so that only the evidence differs.
    let now = now_ms() + 60_000;
    let before = scores_anchored(&host, &callers, now);
    let registry = host.node.registry();

    let sybils: Vec<SecretKey> = (0..50).map(|_| SecretKey::generate()).collect();
    for (i, sybil) in sybils.iter().enumerate() {
        let mut sybil_host = SigningHost {
            key: sybil.clone(),
            head: None,
        };
        // Without a receipt: kept waiting for a receipt that never comes, counting nothing.
        let (unstored, _) = SigningHost::new().call(&driver, sybil, Outcome::Ok, |_| {});
        assert_eq!(
            registry
                .insert_feedback(&sign_feedback(sybil, &unstored, 100))
                .unwrap(),
            Inserted::Pending
        );

        // Self-dealing: the sybil hosts the call, calls it and rates it.
        let (self_dealt, request) = sybil_host.call(&driver, sybil, Outcome::Ok, |_| {});
        registry
            .insert_receipt(&self_dealt, Some(&request))
            .unwrap();
        assert!(
            registry
                .insert_feedback(&sign_feedback(sybil, &self_dealt, 100))
                .is_err()
        );

        // A ring: one sybil hosts a paid call for the next, which rates it 100. The feedback
        // is well-formed, but nobody the anchor trusts trusts either of them.
        let next = &sybils[(i + 1) % sybils.len()];
        let (ring, request) = sybil_host.call(&driver, next, Outcome::Ok, |_| {});
        registry.insert_receipt(&ring, Some(&request)).unwrap();
        registry
            .insert_feedback(&sign_feedback(next, &ring, 100))
            .unwrap();
    }

    let after = scores_anchored(&host, &callers, now);
    assert_eq!(
        after.of(driver.body()),
        before.of(driver.body()),
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
    let reputation = scores(&host).of(hostile.body());
    assert_eq!(reputation.evidence, 3);
    assert!(reputation.quality() < 0.5, "{reputation:?}");
}

#[tokio::test]
async fn a_host_whose_receipt_chain_forks_loses_its_weight() {
    let (host, driver, callers) = market().await;
    // A second host that a trusted caller used and rated well.
    let mut other = SigningHost::new();
    let registry = host.node.registry();
    let (served, request) = other.call(&driver, &callers[0], Outcome::Ok, |_| {});
    registry.insert_receipt(&served, Some(&request)).unwrap();
    registry
        .insert_feedback(&sign_feedback(&callers[0], &served, 100))
        .unwrap();
    let now = now_ms() + 1;
    assert!(scores_anchored(&host, &callers, now).trust_in(&other.key.public()) > 0.0);

    let mut forked = SigningHost {
        key: other.key.clone(),
        head: None,
    };
    let (fork, request) = forked.call(&driver, &callers[1], Outcome::Ok, |_| {});
    registry.insert_receipt(&fork, Some(&request)).unwrap();
    assert_eq!(registry.forks(&other.key.public()).unwrap().len(), 1);
    let after = scores_anchored(&host, &callers, now);
    assert_eq!(after.trust_in(&other.key.public()), 0.0);
}

#[tokio::test]
async fn two_hosts_with_the_same_evidence_compute_the_same_scores() {
    let (first, driver, callers) = market().await;
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
    // The second host receives the same signed records (in another order: feedback first).
    for feedback in feedback.iter().rev() {
        second.node.registry().insert_feedback(feedback).unwrap();
    }
    for receipt in receipts.iter().rev() {
        let request = receipt
            .body()
            .request
            .map(|hash| registry.request(&hash).unwrap().unwrap());
        second
            .node
            .registry()
            .insert_receipt(receipt, request.as_ref())
            .unwrap();
    }
    second.node.registry().insert_manifest(&driver).unwrap();
    let mut anchors = vec![first.node.public_key()];
    anchors.extend(callers.iter().map(SecretKey::public));
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
    assert!(a.of(driver.body()).evidence > 0);
}
