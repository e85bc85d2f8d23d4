//! The quotas on keys a host does not trust: a stranger's records, each correctly signed and
//! consistent with everything it refers to, are stored up to a bound per key and in all, and
//! the host's own and trusted keys are never held to them.

use super::{Chain, feedback};
use crate::*;

/// A registry holding one agent, published by a key it trusts.
struct Host {
    _dir: tempfile::TempDir,
    registry: Registry,
    agent: SignedManifest,
}

impl Host {
    fn new(quotas: StrangerQuotas) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
        registry.set_stranger_quotas(quotas);
        let publisher = SecretKey::generate();
        registry.trust([publisher.public()]);
        let agent =
            Signed::sign(super::manifest(&publisher, "1.0.0", b"code"), &publisher).unwrap();
        registry.insert_manifest(&agent).unwrap();
        Host {
            _dir: dir,
            registry,
            agent,
        }
    }

    /// `calls` receipts signed by `chain` for fresh callers, offered in batches as gossip and
    /// catch-up deliver them: how many were stored and how many refused over a quota.
    fn offer_receipts(&self, chain: &mut Chain, calls: usize) -> (usize, usize) {
        let receipts: Vec<_> = (0..calls)
            .map(|_| {
                let (receipt, request) =
                    chain.call(&self.agent, &SecretKey::generate(), Outcome::Ok);
                (receipt, Some(request))
            })
            .collect();
        let mut tally = (0, 0);
        for batch in receipts.chunks(1024) {
            for answer in self.registry.insert_receipts(batch.to_vec()).unwrap() {
                match answer {
                    Ok(Inserted::New) => tally.0 += 1,
                    Err(Error::Quota { .. }) => tally.1 += 1,
                    other => panic!("unexpected answer {other:?}"),
                }
            }
        }
        tally
    }
}

#[test]
fn with_the_default_quotas_a_stranger_host_stores_at_most_10000_receipts() {
    let host = Host::new(StrangerQuotas::default());
    let mut stranger = Chain::new();
    let (stored, refused) = host.offer_receipts(&mut stranger, 10_050);
    assert_eq!((stored, refused), (10_000, 50));
    assert_eq!(MAX_RECEIPTS_PER_STRANGER, 10_000);
    assert_eq!(host.registry.refused_over_quota(), 50);
    assert_eq!(host.registry.stranger_usage().unwrap().receipts, 10_000);
}

#[test]
fn a_stranger_host_over_its_receipt_quota_is_refused_and_a_trusted_host_is_not() {
    let quotas = StrangerQuotas {
        receipts_per_key: 50,
        ..StrangerQuotas::default()
    };
    let host = Host::new(quotas);
    let (mut stranger, mut trusted) = (Chain::new(), Chain::new());
    host.registry.trust([trusted.key.public()]);

    assert_eq!(host.offer_receipts(&mut stranger, 60), (50, 10));
    assert_eq!(host.offer_receipts(&mut trusted, 60), (60, 0));
    assert_eq!(host.registry.refused_over_quota(), 10);
    assert_eq!(host.registry.stranger_usage().unwrap().receipts, 50);
    let (receipt, request) = stranger.call(&host.agent, &SecretKey::generate(), Outcome::Ok);
    let refused = host
        .registry
        .insert_receipt(&receipt, Some(&request))
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("50 receipts from a host this host does not trust"),
        "{refused}"
    );
    // Nothing of a refused receipt is kept: not it, not its request.
    assert!(host.registry.receipt(&receipt.hash()).unwrap().is_none());
    assert!(host.registry.request(&request.hash()).unwrap().is_none());

    // Once the stranger earns trust (its calls were rated by trusted keys), it is not bounded.
    host.registry.set_earned_trust([stranger.key.public()]);
    assert_eq!(host.offer_receipts(&mut stranger, 20), (20, 0));
    // And trust earned can be lost: the next score computation decides.
    host.registry.set_earned_trust([]);
    assert_eq!(host.offer_receipts(&mut stranger, 1), (0, 1));
}

#[test]
fn strangers_together_store_at_most_their_total_however_many_keys_they_use() {
    let quotas = StrangerQuotas {
        receipts_per_key: 10,
        receipts_total: 30,
        ..StrangerQuotas::default()
    };
    let host = Host::new(quotas);
    let tallies: Vec<_> = (0..5)
        .map(|_| host.offer_receipts(&mut Chain::new(), 10))
        .collect();
    assert_eq!(tallies, [(10, 0), (10, 0), (10, 0), (0, 10), (0, 10)]);
    assert_eq!(host.registry.stranger_usage().unwrap().receipts, 30);

    let mut fresh = Chain::new();
    let (receipt, request) = fresh.call(&host.agent, &SecretKey::generate(), Outcome::Ok);
    let refused = host
        .registry
        .insert_receipt(&receipt, Some(&request))
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("30 receipts from hosts it does not trust, in all"),
        "{refused}"
    );
    // A trusted host is not held to the strangers' total.
    let mut trusted = Chain::new();
    host.registry.trust([trusted.key.public()]);
    assert_eq!(host.offer_receipts(&mut trusted, 5), (5, 0));
}

#[test]
fn a_stranger_rater_stores_at_most_its_feedback_quota_and_strangers_their_total() {
    let quotas = StrangerQuotas {
        feedback_per_key: 5,
        feedback_total: 8,
        ..StrangerQuotas::default()
    };
    let host = Host::new(quotas);
    let mut chain = Chain::new();
    host.registry.trust([chain.key.public()]);
    let (rater, other, anchor) = (
        SecretKey::generate(),
        SecretKey::generate(),
        SecretKey::generate(),
    );
    host.registry.trust([anchor.public()]);
    let mut rate = |caller: &SecretKey| {
        let (receipt, request) = chain.call(&host.agent, caller, Outcome::Ok);
        host.registry
            .insert_receipt(&receipt, Some(&request))
            .unwrap();
        host.registry
            .insert_feedback(&feedback(caller, &receipt, 90))
    };
    let answers: Vec<_> = (0..7).map(|_| rate(&rater).is_ok()).collect();
    assert_eq!(answers, [true, true, true, true, true, false, false]);
    // The second stranger meets the total of 8: three more, then no more.
    let answers: Vec<_> = (0..5).map(|_| rate(&other).is_ok()).collect();
    assert_eq!(answers, [true, true, true, false, false]);
    let refused = rate(&other).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("8 feedback records from raters"),
        "{refused}"
    );
    assert_eq!(host.registry.stranger_usage().unwrap().feedback, 8);
    assert_eq!(host.registry.refused_over_quota(), 5);
    // An anchor rates without bound.
    assert!((0..10).all(|_| rate(&anchor).is_ok()));
}

#[test]
fn a_receipt_that_waited_for_its_manifest_is_held_to_the_quota_when_it_is_stored() {
    let quotas = StrangerQuotas {
        receipts_per_key: 3,
        ..StrangerQuotas::default()
    };
    let host = Host::new(quotas);
    let publisher = SecretKey::generate();
    host.registry.trust([publisher.public()]);
    let late = Signed::sign(
        super::manifest(&publisher, "2.0.0", b"late code"),
        &publisher,
    )
    .unwrap();
    let mut stranger = Chain::new();
    for _ in 0..5 {
        let (receipt, request) = stranger.call(&late, &SecretKey::generate(), Outcome::Ok);
        assert_eq!(
            host.registry
                .insert_receipt(&receipt, Some(&request))
                .unwrap(),
            Inserted::Pending
        );
    }
    host.registry.insert_manifest(&late).unwrap();
    assert_eq!(host.registry.stranger_usage().unwrap().receipts, 3);
    assert_eq!(
        host.registry
            .receipt_chain(&stranger.key.public())
            .unwrap()
            .len(),
        3
    );
    assert_eq!(host.registry.refused_over_quota(), 2);
}

#[test]
fn a_stranger_stores_a_bounded_number_of_manifests_and_trusted_keys_are_not_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
    let (stranger, own) = (SecretKey::generate(), SecretKey::generate());
    registry.trust([own.public()]);
    let release = |key: &SecretKey, i: i64| {
        let mut body = super::manifest(key, &format!("1.0.{i}"), format!("code {i}").as_bytes());
        body.name = "flood".into();
        Signed::sign(body, key).unwrap()
    };
    for i in 0..MAX_MANIFESTS_PER_STRANGER {
        registry.insert_manifest(&release(&stranger, i)).unwrap();
        registry.insert_manifest(&release(&own, i)).unwrap();
    }
    let refused = registry
        .insert_manifest(&release(&stranger, MAX_MANIFESTS_PER_STRANGER))
        .unwrap_err();
    assert!(matches!(refused, Error::Quota { .. }), "{refused}");
    assert_eq!(registry.refused_over_quota(), 1);
    registry
        .insert_manifest(&release(&own, MAX_MANIFESTS_PER_STRANGER))
        .unwrap();
    assert_eq!(
        registry.manifests_by(&stranger.public()).unwrap().len() as i64,
        MAX_MANIFESTS_PER_STRANGER
    );
}
