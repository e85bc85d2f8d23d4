//! The attack suite: each attack from the evidence review, on a real registry (SQLite file)
//! with real signed records, against an honest market. Each test states what the attacker
//! may move and by how much.

use super::{Chain, feedback};
use crate::reputation::{ScoreParams, Scores, compute};
use crate::*;

/// A small deterministic random source, so every run builds the same market.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn agent_manifest(publisher: &SecretKey, name: &str, code: &[u8]) -> SignedManifest {
    let mut body = super::manifest(publisher, "1.0.0", code);
    body.name = name.into();
    body.price_per_mfuel = 100;
    Signed::sign(body, publisher).unwrap()
}

/// An honest market: hosts (the first is "this host"), anchored callers, agents with known
/// true qualities. Callers call agents at random hosts and rate them near their quality;
/// agents trap with probability (1 − q)/10.
struct Market {
    _dir: tempfile::TempDir,
    registry: Registry,
    hosts: Vec<Chain>,
    callers: Vec<SecretKey>,
    agents: Vec<(SignedManifest, f64)>,
    /// "Now" for every score computation of this market, so that scores differ only by
    /// evidence, not by ageing (ten minutes after the market was built, later than any
    /// receipt a test signs).
    now_ms: u64,
}

impl Market {
    fn new(agents: usize, calls: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
        let mut rng = Rng(7);
        let publishers: Vec<SecretKey> = (0..5).map(|_| SecretKey::generate()).collect();
        let agents: Vec<(SignedManifest, f64)> = (0..agents)
            .map(|i| {
                let manifest = agent_manifest(
                    &publishers[i % publishers.len()],
                    &format!("agent-{i}"),
                    format!("code {i}").as_bytes(),
                );
                registry.insert_manifest(&manifest).unwrap();
                (manifest, 0.2 + 0.75 * i as f64 / agents as f64)
            })
            .collect();
        let mut market = Market {
            _dir: dir,
            registry,
            hosts: (0..4).map(|_| Chain::new()).collect(),
            callers: (0..20).map(|_| SecretKey::generate()).collect(),
            agents,
            now_ms: rules::now_ms() + 600_000,
        };
        let mut batch = Vec::new();
        let mut ratings = Vec::new();
        for _ in 0..calls {
            let agent = rng.below(market.agents.len() as u64) as usize;
            let caller = rng.below(market.callers.len() as u64) as usize;
            let host = rng.below(market.hosts.len() as u64) as usize;
            let (manifest, quality) = &market.agents[agent];
            let trapped = rng.unit() < (1.0 - quality) / 10.0;
            let outcome = if trapped {
                Outcome::Trap {
                    message: "unreachable".into(),
                }
            } else {
                Outcome::Ok
            };
            let (receipt, request) =
                market.hosts[host].call(manifest, &market.callers[caller], outcome);
            if !trapped {
                let score = (quality * 100.0 + (rng.unit() - 0.5) * 20.0).clamp(0.0, 100.0);
                ratings.push(feedback(&market.callers[caller], &receipt, score as u8));
            }
            batch.push((receipt, Some(request)));
        }
        for answer in market.registry.insert_receipts(batch).unwrap() {
            assert_eq!(answer.unwrap(), Inserted::New);
        }
        for answer in market.registry.insert_feedback_batch(ratings).unwrap() {
            assert_eq!(answer.unwrap(), Inserted::New);
        }
        market
    }

    /// This host and the callers its operator vouches for.
    fn anchors(&self) -> Vec<PublicKey> {
        let mut anchors = vec![self.hosts[0].key.public()];
        anchors.extend(self.callers.iter().map(SecretKey::public));
        anchors
    }

    fn scores(&self) -> Scores {
        let evidence = self.registry.evidence_set().unwrap();
        compute(&evidence, &ScoreParams::new(self.anchors(), self.now_ms))
    }

    fn best(&self) -> &SignedManifest {
        &self.agents.last().unwrap().0
    }

    /// An agent's rank (1 = best lower bound) among the market's agents, and its lower bound.
    fn rank(&self, scores: &Scores, agent: &SignedManifest) -> (usize, f64) {
        let bound = scores.of(agent.body()).lower_bound();
        let better = self
            .agents
            .iter()
            .filter(|(m, _)| scores.of(m.body()).lower_bound() > bound)
            .count();
        (better + 1, bound)
    }

    /// Host `index` of the market, ready to sign its next receipt.
    fn resume(&self, index: usize) -> Chain {
        let key = self.hosts[index].key.clone();
        let head = self.registry.host_record(&key.public()).unwrap().head;
        Chain { key, head }
    }

    fn store(
        &self,
        receipts: Vec<(SignedReceipt, Option<SignedRequest>)>,
    ) -> Vec<Result<Inserted, Error>> {
        self.registry.insert_receipts(receipts).unwrap()
    }
}

fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|a, b| values[*a].total_cmp(&values[*b]));
    let mut ranks = vec![0.0; values.len()];
    for (rank, index) in order.into_iter().enumerate() {
        ranks[index] = rank as f64;
    }
    ranks
}

fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let d2: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - y).powi(2)).sum();
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}

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
fn fabricated_failures_without_a_callers_request_are_refused() {
    let market = Market::new(10, 600);
    let victim = market.best();
    let before = market.scores();
    let mut liar = Chain::new();
    let caller = SecretKey::generate();
    let mut fabricated = Vec::new();
    for seq in 0..3 {
        let (receipt, _request) = liar.sign(
            victim,
            &caller,
            Outcome::Trap {
                message: "unreachable".into(),
            },
            seq,
            liar.head.map(|(_, h)| h),
            |_| {},
        );
        liar.head = Some((seq, receipt.hash()));
        fabricated.push((receipt, None));
    }
    for answer in market.store(fabricated) {
        let refused = answer.unwrap_err().to_string();
        assert!(refused.contains("did not come with it"), "{refused}");
    }
    assert_eq!(market.scores().of(victim.body()), before.of(victim.body()));
}

#[test]
fn an_inflated_charge_is_refused_and_recorded_against_the_host() {
    let market = Market::new(5, 200);
    let host = &market.hosts[1];
    let head = market
        .registry
        .host_record(&host.key.public())
        .unwrap()
        .head;
    let (receipt, request) = host.sign(
        &market.agents[0].0,
        &market.callers[0],
        Outcome::Ok,
        head.map_or(0, |(s, _)| s + 1),
        head.map(|(_, h)| h),
        |r| r.charge *= 10,
    );
    let refused = market
        .registry
        .insert_receipt(&receipt, Some(&request))
        .unwrap_err()
        .to_string();
    assert!(refused.contains("charge"), "{refused}");
    let record = market.registry.host_record(&host.key.public()).unwrap();
    assert_eq!(record.misbehaviour.len(), 1, "{record:?}");
    assert_eq!(record.misbehaviour[0].kind, "charge");
    let scores = market.scores();
    assert_eq!(scores.trust_in(&host.key.public()), 0.0);
    // Nothing the host signed counts any more: every agent's evidence is what the other
    // hosts reported.
    let evidence = market.registry.evidence_set().unwrap();
    assert!(evidence.dishonest.contains(&host.key.public()));
}

#[test]
fn a_future_dated_receipt_is_refused() {
    let market = Market::new(3, 10);
    let host = &market.hosts[0];
    let head = market
        .registry
        .host_record(&host.key.public())
        .unwrap()
        .head;
    let (receipt, request) = host.sign(
        &market.agents[0].0,
        &market.callers[0],
        Outcome::Ok,
        head.map_or(0, |(s, _)| s + 1),
        head.map(|(_, h)| h),
        |r| r.timestamp_ms += 365 * 24 * 3_600_000,
    );
    let refused = market
        .registry
        .insert_receipt(&receipt, Some(&request))
        .unwrap_err()
        .to_string();
    assert!(refused.contains("in the future"), "{refused}");
}

#[test]
fn a_receipt_that_breaks_its_hosts_chain_is_recorded_against_the_host() {
    let market = Market::new(3, 30);
    let host = &market.hosts[2];
    let (seq, _) = market
        .registry
        .host_record(&host.key.public())
        .unwrap()
        .head
        .unwrap();
    // The next receipt names some other receipt as its predecessor.
    let (receipt, request) = host.sign(
        &market.agents[0].0,
        &market.callers[0],
        Outcome::Ok,
        seq + 1,
        Some(Hash::of(b"a history nobody else saw")),
        |_| {},
    );
    market
        .registry
        .insert_receipt(&receipt, Some(&request))
        .unwrap();
    let record = market.registry.host_record(&host.key.public()).unwrap();
    assert_eq!(record.misbehaviour.len(), 1);
    assert_eq!(record.misbehaviour[0].kind, "broken-link");
    assert_eq!(market.scores().trust_in(&host.key.public()), 0.0);
}

#[test]
fn a_receipt_that_contradicts_its_callers_request_is_refused_and_recorded() {
    let market = Market::new(3, 10);
    let host = &market.hosts[0];
    let head = market
        .registry
        .host_record(&host.key.public())
        .unwrap()
        .head;
    let (receipt, request) = host.sign(
        &market.agents[0].0,
        &market.callers[0],
        Outcome::Ok,
        head.map_or(0, |(s, _)| s + 1),
        head.map(|(_, h)| h),
        |r| r.caller = Some(market.callers[1].public()),
    );
    assert!(
        market
            .registry
            .insert_receipt(&receipt, Some(&request))
            .is_err()
    );
    let record = market.registry.host_record(&host.key.public()).unwrap();
    assert_eq!(record.misbehaviour[0].kind, "request-mismatch");
}

#[test]
fn one_free_call_and_a_ring_of_20000_fabricated_receipts_gain_nothing() {
    let market = Market::new(10, 600);
    let before = market.scores();
    let victim = market.best();
    // The attacker's agent, one real call at this host by a Sybil caller...
    let attacker = SecretKey::generate();
    let agent = agent_manifest(&attacker, "attacker", b"attacker code");
    market.registry.insert_manifest(&agent).unwrap();
    let sybils: Vec<SecretKey> = (0..20).map(|_| SecretKey::generate()).collect();
    let mut anchor_host = market.resume(0);
    let (receipt, request) = anchor_host.call(&agent, &sybils[0], Outcome::Ok);
    market
        .registry
        .insert_receipt(&receipt, Some(&request))
        .unwrap();
    market
        .registry
        .insert_feedback(&feedback(&sybils[0], &receipt, 100))
        .unwrap();
    // ...then a ring of Sybil hosts signing 20,000 calls by Sybil callers, all rated 100.
    let mut ring: Vec<Chain> = (0..10).map(|_| Chain::new()).collect();
    let mut receipts = Vec::new();
    let mut ratings = Vec::new();
    for i in 0..20_000 {
        let caller = &sybils[i % sybils.len()];
        let (receipt, request) = ring[i % 10].call(&agent, caller, Outcome::Ok);
        ratings.push(feedback(caller, &receipt, 100));
        receipts.push((receipt, Some(request)));
    }
    market.store(receipts);
    market.registry.insert_feedback_batch(ratings).unwrap();
    let after = market.scores();
    let ring_trust: f64 = ring
        .iter()
        .map(|h| after.trust_in(&h.key.public()))
        .chain(sybils.iter().map(|s| after.trust_in(&s.public())))
        .sum();
    assert_eq!(ring_trust, 0.0);
    assert_eq!(after.of(agent.body()).evidence, 0);
    assert_eq!(market.rank(&after, victim), market.rank(&before, victim));
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

#[test]
fn a_manifest_with_every_field_at_its_limit_is_accepted_and_one_beyond_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
    let publisher = SecretKey::generate();
    let mut body = super::manifest(&publisher, "1.0.0", b"max");
    body.limits = ManifestLimits {
        max_fuel: rules::MAX_FUEL,
        max_memory_bytes: rules::MAX_MEMORY_BYTES,
        max_wall_ms: rules::MAX_WALL_MS,
        max_output_bytes: rules::MAX_OUTPUT_BYTES,
    };
    body.price_per_mfuel = rules::MAX_PRICE_PER_MFUEL;
    body.component.size = rules::MAX_COMPONENT_BYTES;
    body.name = "a".repeat(rules::MAX_NAME_BYTES);
    body.description = "d".repeat(rules::MAX_DESCRIPTION_BYTES);
    let at_limit = Signed::sign(body.clone(), &publisher).unwrap();
    assert_eq!(registry.insert_manifest(&at_limit).unwrap(), Inserted::New);

    // A receipt at the largest charge the limits allow is accepted, and scores compute.
    let mut host = Chain::new();
    let caller = SecretKey::generate();
    let (receipt, request) = host.call(&at_limit, &caller, Outcome::Ok);
    registry.insert_receipt(&receipt, Some(&request)).unwrap();
    let evidence = registry.evidence_set().unwrap();
    assert_eq!(evidence.calls().len(), 1);
    assert_eq!(evidence.skipped_rows, 0);

    let mut beyond = body;
    beyond.version = "1.0.1".into();
    beyond.limits.max_fuel = u64::MAX;
    let beyond = Signed::sign(beyond, &publisher).unwrap();
    let refused = registry.insert_manifest(&beyond).unwrap_err().to_string();
    assert!(refused.contains("max_fuel"), "{refused}");
}

#[test]
fn a_stored_manifest_scores_cannot_read_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let registry = Registry::open(&path).unwrap();
    let publisher = SecretKey::generate();
    let good = Signed::sign(super::manifest(&publisher, "1.0.0", b"good"), &publisher).unwrap();
    registry.insert_manifest(&good).unwrap();
    // A row as an older agora stored it, before fields were bounded: max_fuel ≥ 2^63 reads
    // back from JSON as a REAL, and migration 6 leaves the column NULL.
    let mut legacy = super::manifest(&publisher, "2.0.0", b"legacy");
    legacy.limits.max_fuel = u64::MAX;
    let legacy = Signed::sign(legacy, &publisher).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO manifests (hash, name, version, publisher, component_hash, component_size,
                               created_at, signed, max_fuel, price_per_mfuel)
         VALUES (?1, 'energy-trader', '2.0.0', ?2, ?3, 6, 0, ?4, NULL, 7)",
        rusqlite::params![
            legacy.hash().to_hex(),
            publisher.public().to_hex(),
            legacy.body().component.hash.to_hex(),
            legacy.as_bytes()
        ],
    )
    .unwrap();
    let evidence = registry.evidence_set().unwrap();
    assert_eq!(evidence.skipped_rows, 1);
    assert!(evidence.agents.contains_key(&good.hash()));
}

#[test]
fn feedback_before_its_receipt_and_a_receipt_before_its_manifest_are_kept_and_applied() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
    let publisher = SecretKey::generate();
    let agent = agent_manifest(&publisher, "late", b"late");
    let mut host = Chain::new();
    let caller = SecretKey::generate();
    let (receipt, request) = host.call(&agent, &caller, Outcome::Ok);
    let rating = feedback(&caller, &receipt, 90);
    assert_eq!(
        registry.insert_feedback(&rating).unwrap(),
        Inserted::Pending
    );
    assert_eq!(
        registry.insert_receipt(&receipt, Some(&request)).unwrap(),
        Inserted::Pending
    );
    assert!(registry.receipt(&receipt.hash()).unwrap().is_none());
    registry.insert_manifest(&agent).unwrap();
    assert!(registry.receipt(&receipt.hash()).unwrap().is_some());
    assert_eq!(
        registry.feedback(&receipt.hash()).unwrap().unwrap().hash(),
        rating.hash()
    );
}

#[test]
fn double_signed_feedback_is_recorded_the_same_way_whatever_order_it_arrives_in() {
    let publisher = SecretKey::generate();
    let agent = agent_manifest(&publisher, "rated", b"rated");
    let mut host = Chain::new();
    let caller = SecretKey::generate();
    let (receipt, request) = host.call(&agent, &caller, Outcome::Ok);
    let (good, bad) = (
        feedback(&caller, &receipt, 100),
        feedback(&caller, &receipt, 0),
    );
    let mut scores = Vec::new();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    for (dir, order) in dirs.iter().zip([[&good, &bad], [&bad, &good]]) {
        let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
        registry.insert_manifest(&agent).unwrap();
        registry.insert_receipt(&receipt, Some(&request)).unwrap();
        registry.insert_feedback(order[0]).unwrap();
        assert!(matches!(
            registry.insert_feedback(order[1]),
            Err(Error::DuplicateFeedback(_))
        ));
        let against = registry.misbehaviour(&caller.public()).unwrap();
        assert_eq!(against.len(), 1);
        assert_eq!(against[0].kind, "double-feedback");
        let anchors = vec![host.key.public(), caller.public()];
        scores.push(compute(
            &registry.evidence_set().unwrap(),
            &ScoreParams::new(anchors, 1_900_000_000_000),
        ));
    }
    assert_eq!(scores[0], scores[1]);
    assert_eq!(scores[0].of(agent.body()).evidence, 0);
}

#[test]
fn a_second_manifest_for_one_release_is_recorded_against_its_publisher() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
    let publisher = SecretKey::generate();
    let first = Signed::sign(super::manifest(&publisher, "1.0.0", b"a"), &publisher).unwrap();
    let mut other = super::manifest(&publisher, "1.0.0", b"a");
    other.limits.max_fuel = 1;
    let other = Signed::sign(other, &publisher).unwrap();
    registry.insert_manifest(&first).unwrap();
    assert!(matches!(
        registry.insert_manifest(&other),
        Err(Error::ReleaseConflict { .. })
    ));
    let against = registry.misbehaviour(&publisher.public()).unwrap();
    assert_eq!(against[0].kind, "double-release");
}

#[test]
fn a_host_that_withholds_a_receipt_loses_every_receipt_after_it() {
    let market = Market::new(5, 200);
    let victim = &market.agents[0].0;
    let mut host = market.resume(1);
    // The host signs a trap, then ten rated calls, and withholds the trap.
    let (trap, trap_request) = host.call(
        victim,
        &market.callers[0],
        Outcome::Trap {
            message: "unreachable".into(),
        },
    );
    let mut later = Vec::new();
    let mut ratings = Vec::new();
    for caller in &market.callers[1..11] {
        let (receipt, request) = host.call(victim, caller, Outcome::Ok);
        ratings.push(feedback(caller, &receipt, 100));
        later.push((receipt, Some(request)));
    }
    let before = market.scores();
    market.store(later);
    market.registry.insert_feedback_batch(ratings).unwrap();
    let record = market.registry.host_record(&host.key.public()).unwrap();
    assert_eq!(record.missing, 1);
    assert_eq!(
        market.scores().of(victim.body()),
        before.of(victim.body()),
        "nothing after the gap counts"
    );
    // Once the withheld receipt arrives, all of it counts, the trap too.
    market
        .registry
        .insert_receipt(&trap, Some(&trap_request))
        .unwrap();
    assert_eq!(
        market
            .registry
            .host_record(&host.key.public())
            .unwrap()
            .missing,
        0
    );
    let after = market.scores().of(victim.body());
    assert_eq!(after.evidence, before.of(victim.body()).evidence + 11);
}

#[test]
fn a_strangers_same_named_manifest_can_neither_break_nor_hijack_a_name() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
    let own = SecretKey::generate();
    let mine = agent_manifest(&own, "ride-driver", b"mine");
    registry.insert_manifest(&mine).unwrap();
    // A stranger gossips the same name, a newer version, and a manifest for our component.
    let stranger = SecretKey::generate();
    let mut theirs = super::manifest(&stranger, "9.9.9", b"theirs");
    theirs.name = "ride-driver".into();
    theirs.created_at = rules::now_ms() / 1000;
    let theirs = Signed::sign(theirs, &stranger).unwrap();
    registry.insert_manifest(&theirs).unwrap();
    let mut copy = mine.body().clone();
    copy.publisher = stranger.public();
    let copy = Signed::sign(copy, &stranger).unwrap();
    registry.insert_manifest(&copy).unwrap();

    let trusted = [own.public()];
    for reference in [
        "ride-driver".to_owned(),
        "ride-driver@1.0.0".to_owned(),
        mine.body().component.hash.to_hex(),
    ] {
        assert_eq!(
            registry.resolve(&reference, &trusted).unwrap().hash(),
            mine.hash(),
            "{reference}"
        );
    }
    assert!(registry.resolve("ride-driver@9.9.9", &trusted).is_err());
    // The stranger's release is still reachable when asked for by name and publisher, or hash.
    let scoped = format!("{}/ride-driver@9.9.9", stranger.public());
    assert_eq!(
        registry.resolve(&scoped, &trusted).unwrap().hash(),
        theirs.hash()
    );
    assert_eq!(
        registry
            .resolve(&theirs.hash().to_hex(), &trusted)
            .unwrap()
            .hash(),
        theirs.hash()
    );
}

#[test]
fn a_refused_receipt_leaves_no_request_behind() {
    let market = Market::new(3, 10);
    let host = &market.hosts[0];
    let head = market
        .registry
        .host_record(&host.key.public())
        .unwrap()
        .head;
    let (receipt, request) = host.sign(
        &market.agents[0].0,
        &market.callers[0],
        Outcome::Ok,
        head.map_or(0, |(s, _)| s + 1),
        head.map(|(_, h)| h),
        |r| r.timestamp_ms += 365 * 24 * 3_600_000,
    );
    assert!(
        market
            .registry
            .insert_receipt(&receipt, Some(&request))
            .is_err()
    );
    assert!(market.registry.request(&request.hash()).unwrap().is_none());
}

#[test]
fn expired_requests_that_no_receipt_answers_are_pruned_and_answered_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
    let host = SecretKey::generate();
    let publisher = SecretKey::generate();
    let agent = agent_manifest(&publisher, "pruned", b"pruned");
    registry.insert_manifest(&agent).unwrap();
    let now = rules::now_ms();
    let request = |caller: &SecretKey| {
        Signed::sign(
            CallRequest {
                caller: caller.public(),
                host: host.public(),
                agent: agent.hash(),
                input_hash: request_hash("offer", b"{}"),
                fuel_limit: 1_000,
                nonce: CallRequest::new_nonce(),
                expires_at_ms: now + 60_000,
            },
            caller,
        )
        .unwrap()
    };
    let (unanswered, answered) = (
        request(&SecretKey::generate()),
        request(&SecretKey::generate()),
    );
    registry
        .admit_request(&unanswered, &host.public(), now)
        .unwrap();
    registry
        .admit_request(&answered, &host.public(), now)
        .unwrap();
    let mut body = super::receipt(&host, 0, None);
    body.agent = AgentRef {
        manifest: agent.hash(),
        component: agent.body().component.hash,
    };
    body.request = Some(answered.hash());
    body.caller = Some(answered.body().caller);
    registry.append_receipt(&host, body).unwrap();
    // Nothing goes before expiry.
    assert_eq!(registry.prune_requests(now).unwrap(), 0);
    let later = now + 60_000 + rules::MAX_CLOCK_SKEW_MS + 1;
    assert_eq!(registry.prune_requests(later).unwrap(), 1);
    assert!(registry.request(&unanswered.hash()).unwrap().is_none());
    assert!(registry.request(&answered.hash()).unwrap().is_some());
}

#[test]
fn a_memory_limit_counts_against_an_agent_only_when_it_was_the_publishers_own() {
    let market = Market::new(3, 10);
    let agent = &market.agents[0].0;
    let manifest_memory = agent.body().limits.max_memory_bytes;
    let mut host = market.resume(0);
    let mut hit = |memory_bytes: u64, outcome: Outcome| {
        let seq = host.head.map_or(0, |(s, _)| s + 1);
        let (receipt, request) = host.sign(
            agent,
            &market.callers[0],
            outcome,
            seq,
            host.head.map(|(_, h)| h),
            |r| {
                r.limits = Some(CallLimits {
                    memory_bytes,
                    wall_ms: 1_000,
                    output_bytes: 1 << 16,
                })
            },
        );
        let answer = market.registry.insert_receipt(&receipt, Some(&request));
        if answer.is_ok() {
            host.head = Some((seq, receipt.hash()));
        }
        answer
    };
    let before = market.scores().of(agent.body());
    // A host whose own cap is below the manifest's: not the agent's fault.
    hit(manifest_memory / 2, Outcome::MemoryLimit).unwrap();
    // A timeout: the host's load, never the agent's fault.
    hit(manifest_memory, Outcome::Timeout).unwrap();
    assert_eq!(market.scores().of(agent.body()).negative, before.negative);
    // The publisher's own limit: the agent's fault.
    hit(manifest_memory, Outcome::MemoryLimit).unwrap();
    assert!(market.scores().of(agent.body()).negative > before.negative);
    // Claiming a limit above the manifest's is refused and held against the host.
    let refused = hit(manifest_memory * 2, Outcome::MemoryLimit).unwrap_err();
    assert!(
        refused.to_string().contains("max_memory_bytes"),
        "{refused}"
    );
    let record = market.registry.host_record(&host.key.public()).unwrap();
    assert_eq!(record.misbehaviour[0].kind, "over-limit");
}
