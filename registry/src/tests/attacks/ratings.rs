//! Attacks on ratings and trust: bombing, whales, rings of colluding keys, copycats; and
//! the honest market they are measured against.

use super::*;

#[test]
fn in_an_honest_market_the_ranking_follows_true_quality() {
    let market = Market::new(20, 2_000);
    let scores = market.scores();
    let truth: Vec<f64> = market.agents.iter().map(|(_, q)| *q).collect();
    let bounds: Vec<f64> = market
        .agents
        .iter()
        .map(|(m, _)| scores.of(m.body()).lower_bound())
        .collect();
    let rho = spearman(&truth, &bounds);
    eprintln!("honest market: Spearman ρ(true quality, lower bound) = {rho:.3}");
    assert!(rho > 0.9, "ρ = {rho}");
    assert_eq!(market.rank(&scores, market.best()).0, 1);
}

#[test]
fn a_perfect_agent_with_200_good_ratings_shows_a_high_lower_bound() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
    let publisher = SecretKey::generate();
    let agent = agent_manifest(&publisher, "perfect", b"perfect");
    registry.insert_manifest(&agent).unwrap();
    let mut host = Chain::new();
    let raters: Vec<SecretKey> = (0..200).map(|_| SecretKey::generate()).collect();
    let mut receipts = Vec::new();
    let mut ratings = Vec::new();
    for rater in &raters {
        let (receipt, request) = host.call(&agent, rater, Outcome::Ok);
        ratings.push(feedback(rater, &receipt, 100));
        receipts.push((receipt, Some(request)));
    }
    registry.insert_receipts(receipts).unwrap();
    registry.insert_feedback_batch(ratings).unwrap();
    let mut anchors = vec![host.key.public()];
    anchors.extend(raters.iter().map(SecretKey::public));
    let scores = compute(
        &registry.evidence_set().unwrap(),
        &ScoreParams::new(anchors, rules::now_ms() + 1),
    );
    let bound = scores.of(agent.body()).lower_bound();
    eprintln!("200 five-star ratings: lower bound {bound:.3}");
    assert!(bound > 0.95, "lower bound {bound}");

    // One trap seen by this host (an anchor) weighs one call, not hundreds of ratings.
    let (trap, request) = host.call(
        &agent,
        &raters[0],
        Outcome::Trap {
            code: Some(TrapCode::Unreachable),
            message: "unreachable".into(),
        },
    );
    registry.insert_receipt(&trap, Some(&request)).unwrap();
    let mut anchors = vec![host.key.public()];
    anchors.extend(raters.iter().map(SecretKey::public));
    let after = compute(
        &registry.evidence_set().unwrap(),
        &ScoreParams::new(anchors, rules::now_ms() + 1),
    )
    .of(agent.body());
    eprintln!(
        "… and one trap at this host: lower bound {:.3}",
        after.lower_bound()
    );
    assert!((after.negative - 1.0).abs() < 1e-6, "{after:?}");
    assert!(after.lower_bound() > 0.95, "{after:?}");
}

#[test]
fn a_copycat_manifest_cannot_move_the_original_agent() {
    let market = Market::new(10, 600);
    let before = market.scores();
    let victim = market.best();
    // The attacker signs a manifest for the victim's component with max_fuel 1 and a huge
    // price, and calls it at this (honest) host: every call is a real fuel-exhausted receipt.
    let attacker = SecretKey::generate();
    let mut copy = victim.body().clone();
    copy.publisher = attacker.public();
    copy.limits.max_fuel = 1;
    copy.price_per_mfuel = rules::MAX_PRICE_PER_MFUEL;
    let copy = Signed::sign(copy, &attacker).unwrap();
    market.registry.insert_manifest(&copy).unwrap();
    let mut host = market.resume(0);
    let mut calls = Vec::new();
    for _ in 0..10 {
        let (receipt, request) = host.call(&copy, &attacker, Outcome::FuelExhausted);
        calls.push((receipt, Some(request)));
    }
    for answer in market.store(calls) {
        assert_eq!(answer.unwrap(), Inserted::New);
    }
    let after = market.scores();
    assert_eq!(after.of(victim.body()), before.of(victim.body()));
    assert_eq!(market.rank(&after, victim), market.rank(&before, victim));
    assert_eq!(after.trust_in(&attacker.public()), 0.0);
}

#[test]
fn four_bombing_keys_with_100_calls_each_do_not_move_the_best_agent() {
    let market = Market::new(10, 600);
    let victim = market.best();
    let before = market.scores();
    let bombers: Vec<SecretKey> = (0..4).map(|_| SecretKey::generate()).collect();
    let mut host = market.resume(0);
    let mut receipts = Vec::new();
    let mut ratings = Vec::new();
    for bomber in &bombers {
        for _ in 0..100 {
            let (receipt, request) = host.call(victim, bomber, Outcome::Ok);
            ratings.push(feedback(bomber, &receipt, 0));
            receipts.push((receipt, Some(request)));
        }
    }
    market.store(receipts);
    market.registry.insert_feedback_batch(ratings).unwrap();
    let after = market.scores();
    assert_eq!(market.rank(&after, victim), market.rank(&before, victim));
    for bomber in &bombers {
        assert_eq!(after.trust_in(&bomber.public()), 0.0);
    }
}

#[test]
fn a_whale_rater_counts_as_a_bounded_number_of_calls() {
    let market = Market::new(10, 1_000);
    let victim = market.best();
    let before = market.scores();
    // One of the operator's own trusted callers calls the best agent 1,000 times and rates
    // every call 0.
    let whale = &market.callers[0];
    let mut host = market.resume(0);
    let mut receipts = Vec::new();
    let mut ratings = Vec::new();
    for _ in 0..1_000 {
        let (receipt, request) = host.call(victim, whale, Outcome::Ok);
        ratings.push(feedback(whale, &receipt, 0));
        receipts.push((receipt, Some(request)));
    }
    market.store(receipts);
    market.registry.insert_feedback_batch(ratings).unwrap();
    let after = market.scores();
    let (rank_before, bound_before) = market.rank(&before, victim);
    let (rank_after, bound_after) = market.rank(&after, victim);
    eprintln!(
        "whale: rank {rank_before} → {rank_after}, lower bound {bound_before:.3} → {bound_after:.3}"
    );
    // A thousand ratings weigh as `per_pair` (10) calls, clipped toward the consensus.
    let (r0, r1) = (before.of(victim.body()), after.of(victim.body()));
    let added = (r1.positive + r1.negative) - (r0.positive + r0.negative);
    assert!(added <= 10.0 + 1e-9, "the whale added {added} calls' worth");
    assert!(
        rank_after <= rank_before + 2,
        "rank {rank_before} → {rank_after}"
    );
}

#[test]
fn ten_colluding_keys_rating_each_other_gain_no_trust() {
    let market = Market::new(5, 300);
    let colluders: Vec<Chain> = (0..10).map(|_| Chain::new()).collect();
    let agent = &market.agents[0].0;
    let mut receipts = Vec::new();
    let mut ratings = Vec::new();
    for (i, caller) in colluders.iter().enumerate() {
        for (j, host) in colluders.iter().enumerate() {
            if i == j {
                continue;
            }
            // Each colluder serves every other colluder; a host's chain is its own.
            let mut host = Chain {
                key: host.key.clone(),
                head: None,
            };
            let _ = &mut host;
            let (receipt, request) = host.sign(agent, &caller.key, Outcome::Ok, 0, None, |_| {});
            ratings.push(feedback(&caller.key, &receipt, 100));
            receipts.push((receipt, Some(request)));
            break;
        }
    }
    market.store(receipts);
    market.registry.insert_feedback_batch(ratings).unwrap();
    let scores = market.scores();
    let total: f64 = colluders
        .iter()
        .map(|c| scores.trust_in(&c.key.public()))
        .sum();
    assert_eq!(total, 0.0);
}
