//! Reputation computed from signed evidence, the same way on every host that holds it.
//!
//! [`compute`] is a pure function of an [`EvidenceSet`] and [`ScoreParams`]: every map is
//! ordered and every sum runs in a fixed order, so two hosts with the same evidence and the same
//! anchors get bit-identical scores.
//!
//! **What counts.** Only receipts that answered a caller's signed request (checked against it
//! when the receipt arrived) and that carry a charge, and of each host only the receipts up to
//! the first gap in its chain (a host that withholds or deletes a receipt loses all it signed
//! after it, until the gap is filled). Nothing signed by a key with evidence
//! against it (see [`EvidenceSet::dishonest`]): such a key gets no trust, its receipts, ratings
//! and agents no weight. Evidence dated after "now" has no weight; older evidence fades with a
//! half-life (`w = ½^(age/half-life)`).
//!
//! **Trust in keys** is personalised EigenTrust. Trust starts at this host's anchors (its own key
//! and any keys its operator configures) and flows along one kind of edge: a caller's ratings
//! of the hosts that served it, `Σ w·score/100`. No trust flows to a caller for calling, since
//! calls cost nothing until settlement exists: callers hold trust as anchors, or as hosts that
//! trusted keys rated. Each key's outgoing edges are normalised, `t = (1−α)·Cᵀt + α·p` is
//! iterated from the anchor distribution `p`, and no key but an anchor may hold more than `cap`
//! (the excess returns to the anchors). Keys no path from an anchor reaches get exactly zero,
//! however many of them there are.
//!
//! **Influence.** Trust sums to 1, so it is rescaled before it weighs evidence: a key's
//! influence is `min(1, t / (α/|anchors|))`, which is 1 for an anchor and for the keys anchors
//! trust directly, so one of their observations counts as one call.
//!
//! **Agent quality**, per agent — the publisher and the component hash together, so that a
//! manifest by another key naming the same component is a different agent — is a Beta
//! reputation: quality `(R+1)/(R+S+2)`, uncertainty `2/(R+S+2)`, ranked by the 5% quantile of
//! `Beta(R+1, S+1)`. Each key's reports about an agent are summed first:
//! - a rater's calls give a weight `m = Σ w` and a mean score `q`; `q` is pulled to within
//!   `clip` of the trust-weighted median of all raters' means (as Yuma consensus clips
//!   outliers); it adds `f·min(m, per_pair)·q` to R and `f·min(m, per_pair)·(1−q)` to S;
//! - a host's failures on the agent's own account — traps, and fuel or memory exhausted when
//!   the limit the receipt records was the publisher's whole `max_fuel` or `max_memory_bytes` —
//!   add `f·min(Σ w, per_pair)` to S; timeouts depend on the host and are never blamed;
//! - where `f` is the key's influence, and each key's reports over all agents are scaled down
//!   to at most `per_key` calls in all: no key's influence grows with its volume.
//!
//! **Publisher reputation** is the same formula over the sums of all the publisher's agents.

mod beta;
mod evidence;

use std::collections::{BTreeMap, BTreeSet};

use beta::beta_quantile;
pub use evidence::{AgentFacts, Call, CallOutcome, EvidenceSet, Rating};

use crate::Hash;
use crate::identity::PublicKey;

/// Parameters of the score computation.
#[derive(Clone, Debug)]
pub struct ScoreParams {
    /// Keys trusted a priori: this host's own key and any its operator configures.
    pub anchors: Vec<PublicKey>,
    /// Restart probability of the trust walk (EigenTrust's α).
    pub restart: f64,
    /// Largest share of all trust one key may hold.
    pub cap: f64,
    /// Most evidence one key's reports about one agent add up to, in calls: a rater (or a host
    /// reporting failures) that calls an agent a thousand times counts as this many calls.
    pub per_pair: f64,
    /// Most evidence one key's reports add up to over all agents, in calls.
    pub per_key: f64,
    /// How far (in quality, 0 to 1) a rater's mean score may sit from the trust-weighted median
    /// of everyone's before it is pulled in to that distance.
    pub clip: f64,
    /// Evidence loses half its weight over this many milliseconds.
    pub half_life_ms: u64,
    /// "Now", for ageing evidence, in milliseconds since the Unix epoch.
    pub now_ms: u64,
}

impl ScoreParams {
    /// Defaults: α = 0.15, cap 0.25, 10 calls per (key, agent), 100 per key, clip 0.25,
    /// half-life 30 days.
    pub fn new(anchors: Vec<PublicKey>, now_ms: u64) -> Self {
        ScoreParams {
            anchors,
            restart: 0.15,
            cap: 0.25,
            per_pair: 10.0,
            per_key: 100.0,
            clip: 0.25,
            half_life_ms: 30 * 24 * 3_600_000,
            now_ms,
        }
    }
}

/// A Beta reputation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reputation {
    /// Weighted positive evidence R.
    pub positive: f64,
    /// Weighted negative evidence S.
    pub negative: f64,
    /// Pieces of evidence that carried any weight.
    pub evidence: usize,
}

impl Reputation {
    const NONE: Reputation = Reputation {
        positive: 0.0,
        negative: 0.0,
        evidence: 0,
    };

    /// Expected quality, `(R+1)/(R+S+2)`.
    pub fn quality(&self) -> f64 {
        (self.positive + 1.0) / (self.positive + self.negative + 2.0)
    }

    /// Uncertainty, `2/(R+S+2)`: 1 with no evidence, falling towards 0.
    pub fn uncertainty(&self) -> f64 {
        2.0 / (self.positive + self.negative + 2.0)
    }

    /// The 5% quantile of `Beta(R+1, S+1)`: what agents are ranked by.
    pub fn lower_bound(&self) -> f64 {
        beta_quantile(0.05, self.positive + 1.0, self.negative + 1.0)
    }

    fn add(&mut self, other: &Reputation) {
        self.positive += other.positive;
        self.negative += other.negative;
        self.evidence += other.evidence;
    }
}

/// Scores computed from an evidence set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scores {
    /// Trust in each key that has any (they sum to 1).
    pub trust: BTreeMap<PublicKey, f64>,
    /// Reputation per agent: (publisher, component hash).
    pub agents: BTreeMap<(PublicKey, Hash), Reputation>,
    /// Reputation per publisher.
    pub publishers: BTreeMap<PublicKey, Reputation>,
    /// Each agent's lower bound ([`Reputation::lower_bound`]), computed once with the scores:
    /// it takes a few hundred evaluations of the incomplete beta function.
    pub bounds: BTreeMap<(PublicKey, Hash), f64>,
}

impl Scores {
    /// The lower bound of the agent `publisher` published as `component` (the prior's, 0.05,
    /// if there is no evidence).
    pub fn lower_bound(&self, publisher: &PublicKey, component: &Hash) -> f64 {
        static PRIOR: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
        self.bounds
            .get(&(*publisher, *component))
            .copied()
            .unwrap_or_else(|| *PRIOR.get_or_init(|| Reputation::NONE.lower_bound()))
    }

    /// Trust in `key` (0 if none).
    pub fn trust_in(&self, key: &PublicKey) -> f64 {
        self.trust.get(key).copied().unwrap_or(0.0)
    }

    /// The reputation of the agent `publisher` published as `component` (no evidence if
    /// unknown).
    pub fn agent(&self, publisher: &PublicKey, component: &Hash) -> Reputation {
        self.agents
            .get(&(*publisher, *component))
            .copied()
            .unwrap_or(Reputation::NONE)
    }

    /// The reputation of the agent a manifest releases.
    pub fn of(&self, manifest: &crate::Manifest) -> Reputation {
        self.agent(&manifest.publisher, &manifest.component.hash)
    }
}

/// One key's reports about one agent: its calls' weights, and the weighted sum of its scores.
#[derive(Clone, Copy, Debug, Default)]
struct Reports {
    rated: f64,
    score_sum: f64,
    ratings: usize,
    failed: f64,
    failures: usize,
}

/// How far each host's chain is held without a gap: every receipt the host signed below `n` is
/// here, or was declared lost by a skip (see [`RECEIPT_SEQ_BLOCK`](crate::RECEIPT_SEQ_BLOCK)).
/// A host's receipts beyond its first gap do not count until the gap is filled, so a host that
/// deletes a receipt (a failure, say) loses every receipt it signed after it.
pub(crate) fn contiguous(evidence: &EvidenceSet) -> BTreeMap<PublicKey, u64> {
    let mut chains: BTreeMap<PublicKey, Vec<(u64, Hash, Option<Hash>)>> = BTreeMap::new();
    for call in evidence.calls() {
        chains
            .entry(call.host)
            .or_default()
            .push((call.seq, call.receipt, call.prev));
    }
    chains
        .into_iter()
        .map(|(host, mut chain)| {
            chain.sort_unstable();
            let mut held = std::collections::HashSet::new();
            let mut next = 0;
            for (seq, receipt, prev) in chain {
                let follows = seq <= next;
                // A skip: onto a block boundary, from a receipt already held.
                let skips = seq > next
                    && seq % crate::RECEIPT_SEQ_BLOCK == 0
                    && prev.is_some_and(|prev| held.contains(&prev));
                if !(follows || skips) {
                    break;
                }
                held.insert(receipt);
                next = next.max(seq + 1);
            }
            (host, next)
        })
        .collect()
}

/// Computes trust and reputation from `evidence`.
pub fn compute(evidence: &EvidenceSet, params: &ScoreParams) -> Scores {
    let held = contiguous(evidence);
    // A receipt its host could not back keeps its place in the chain (the receipts after it
    // still follow on) but counts for nothing.
    let counts = |call: &Call| {
        held.get(&call.host).is_some_and(|n| call.seq < *n)
            && !evidence.unbacked.contains(&call.receipt)
    };
    let trust = trust(evidence, params, &counts);
    let influence = influence(&trust, params);
    let influence_of = |key: &PublicKey| influence.get(key).copied().unwrap_or(0.0);
    let dishonest = &evidence.dishonest;

    // Gather each key's reports per agent. Only calls that answered a caller's signed request
    // count (the request travels with the receipt and was checked against it), and nothing
    // signed by a key with evidence against it.
    let mut reports: BTreeMap<(PublicKey, Hash), BTreeMap<PublicKey, Reports>> = BTreeMap::new();
    for call in evidence.calls() {
        let Some(agent) = evidence.agents.get(&call.manifest) else {
            continue;
        };
        let Some(caller) = call.caller else { continue };
        if agent.component != call.component
            || !counts(call)
            || dishonest.contains(&call.host)
            || dishonest.contains(&agent.publisher)
        {
            continue;
        }
        let weight = cost_weight(call.charge) * decay(call.timestamp_ms, params);
        if weight == 0.0 {
            continue;
        }
        let key = (agent.publisher, agent.component);
        // A host's own reports of failure: only what is the agent's own doing, judged
        // against the publisher's own limits as recorded in the receipt. A timeout depends on
        // the host's load, so it is never blamed; nor is a limit tighter than the manifest's.
        let failed = match call.outcome {
            CallOutcome::Trap => true,
            CallOutcome::OutOfFuel => call.fuel_limit >= agent.max_fuel,
            CallOutcome::Memory => call
                .memory_limit
                .zip(agent.max_memory_bytes)
                .is_some_and(|(ran_under, manifest)| ran_under >= manifest),
            CallOutcome::Returned | CallOutcome::HostBound => false,
        };
        if failed && caller != call.host {
            let entry = reports
                .entry(key)
                .or_default()
                .entry(call.host)
                .or_default();
            entry.failed += weight;
            entry.failures += 1;
        }
        if let Some(rating) = call.rating
            && !dishonest.contains(&rating.rater)
        {
            let entry = reports
                .entry(key)
                .or_default()
                .entry(rating.rater)
                .or_default();
            entry.rated += weight;
            entry.score_sum += weight * f64::from(rating.score.min(100)) / 100.0;
            entry.ratings += 1;
        }
    }

    // Each key's reports are capped per agent and, over all agents, per key: volume cannot
    // multiply a key's influence.
    let mut volume: BTreeMap<PublicKey, f64> = BTreeMap::new();
    for by_key in reports.values() {
        for (key, r) in by_key {
            *volume.entry(*key).or_insert(0.0) +=
                r.rated.min(params.per_pair) + r.failed.min(params.per_pair);
        }
    }
    let scale = |key: &PublicKey| {
        let total = volume.get(key).copied().unwrap_or(0.0);
        if total > params.per_key {
            params.per_key / total
        } else {
            1.0
        }
    };

    let mut agents: BTreeMap<(PublicKey, Hash), Reputation> = BTreeMap::new();
    for (agent, by_key) in &reports {
        // The trust-weighted median of the raters' mean scores, and each mean pulled to
        // within `clip` of it: a minority cannot drag an agent far from what the rest see.
        let mut means: Vec<(f64, f64)> = by_key
            .iter()
            .filter(|(_, r)| r.rated > 0.0)
            .map(|(key, r)| {
                let mass = influence_of(key) * r.rated.min(params.per_pair) * scale(key);
                (r.score_sum / r.rated, mass)
            })
            .filter(|(_, mass)| *mass > 0.0)
            .collect();
        let median = weighted_median(&mut means);
        let mut reputation = Reputation::NONE;
        for (key, r) in by_key {
            let weight = influence_of(key) * scale(key);
            if weight == 0.0 {
                continue;
            }
            if r.rated > 0.0 {
                let mass = weight * r.rated.min(params.per_pair);
                let mut q = r.score_sum / r.rated;
                if let Some(median) = median {
                    q = q
                        .clamp(median - params.clip, median + params.clip)
                        .clamp(0.0, 1.0);
                }
                reputation.positive += mass * q;
                reputation.negative += mass * (1.0 - q);
                reputation.evidence += r.ratings;
            }
            if r.failed > 0.0 {
                reputation.negative += weight * r.failed.min(params.per_pair);
                reputation.evidence += r.failures;
            }
        }
        if reputation.evidence > 0 {
            agents.insert(*agent, reputation);
        }
    }
    let mut publishers: BTreeMap<PublicKey, Reputation> = BTreeMap::new();
    for ((publisher, _), reputation) in &agents {
        publishers
            .entry(*publisher)
            .or_insert(Reputation::NONE)
            .add(reputation);
    }
    let bounds = agents
        .iter()
        .map(|(agent, reputation)| (*agent, reputation.lower_bound()))
        .collect();
    Scores {
        trust,
        agents,
        publishers,
        bounds,
    }
}

/// How much a key's reports count, 0 to 1: its trust relative to the least an anchor holds
/// (its restart share), capped at 1. Trust sums to 1 over every key, so used raw it would
/// shrink as the market grows; relative to an anchor, a key the anchors trust directly counts
/// about as much as an anchor's own observation, and one observation is one call's worth.
fn influence(trust: &BTreeMap<PublicKey, f64>, params: &ScoreParams) -> BTreeMap<PublicKey, f64> {
    let anchors = params
        .anchors
        .iter()
        .filter(|a| trust.contains_key(a))
        .count();
    if anchors == 0 {
        return BTreeMap::new();
    }
    let reference = params.restart / anchors as f64;
    trust
        .iter()
        .map(|(key, t)| (*key, (t / reference).min(1.0)))
        .collect()
}

/// The weighted median of `(value, weight)` pairs, or `None` if there are none.
fn weighted_median(values: &mut [(f64, f64)]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = values.iter().map(|(_, w)| w).sum();
    let mut seen = 0.0;
    for (value, weight) in values.iter() {
        seen += weight;
        if seen >= total / 2.0 {
            return Some(*value);
        }
    }
    values.last().map(|(v, _)| *v)
}

/// A call's weight for its cost: evidence needs a charge (which ingest checked against the
/// fuel and the manifest's price), and any charge counts as one call.
fn cost_weight(charge: u64) -> f64 {
    if charge > 0 { 1.0 } else { 0.0 }
}

/// Ages evidence by its half-life; evidence dated in the future (beyond nothing: ingest
/// already refused what is beyond the clock skew) carries no weight until its time comes.
fn decay(timestamp_ms: u64, params: &ScoreParams) -> f64 {
    if timestamp_ms > params.now_ms {
        return 0.0;
    }
    let age = (params.now_ms - timestamp_ms) as f64;
    // The platform's `powf` differs in its last bits between C libraries; see `beta`.
    libm::pow(0.5, age / params.half_life_ms.max(1) as f64)
}

/// Personalised EigenTrust over the local-trust graph. Its only edges are callers' ratings of
/// hosts: a caller trusts a host it rated well, in proportion to its scores. No trust flows to
/// a caller for calling (calls cost nothing until settlement exists), so callers hold trust
/// only as anchors or when some trusted key rates them as a host.
fn trust(
    evidence: &EvidenceSet,
    params: &ScoreParams,
    counts: &impl Fn(&Call) -> bool,
) -> BTreeMap<PublicKey, f64> {
    let dishonest = &evidence.dishonest;
    let mut edges: BTreeMap<PublicKey, BTreeMap<PublicKey, f64>> = BTreeMap::new();
    let mut add = |from: PublicKey, to: PublicKey, weight: f64| {
        if from != to && weight > 0.0 && !dishonest.contains(&from) && !dishonest.contains(&to) {
            *edges.entry(from).or_default().entry(to).or_insert(0.0) += weight;
        }
    };
    for call in evidence.calls().iter().filter(|call| counts(call)) {
        let (Some(caller), Some(rating)) = (call.caller, call.rating) else {
            continue;
        };
        let weight = cost_weight(call.charge) * decay(call.timestamp_ms, params);
        let q = f64::from(rating.score.min(100)) / 100.0;
        add(caller, call.host, weight * q);
    }
    let anchors: BTreeSet<PublicKey> = params
        .anchors
        .iter()
        .filter(|a| !dishonest.contains(a))
        .copied()
        .collect();
    if anchors.is_empty() {
        return BTreeMap::new();
    }
    // The walk runs over dense arrays: keys in sorted order (so that every host sums in the
    // same order) and each key's outgoing edges normalised once.
    let mut keys: BTreeSet<PublicKey> = anchors.clone();
    for (from, out) in &edges {
        keys.insert(*from);
        keys.extend(out.keys());
    }
    let keys: Vec<PublicKey> = keys.into_iter().collect();
    let index: std::collections::HashMap<PublicKey, usize> =
        keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let rows: Vec<Option<Vec<(usize, f64)>>> = keys
        .iter()
        .map(|key| {
            edges.get(key).map(|out| {
                let total: f64 = out.values().sum();
                out.iter()
                    .filter_map(|(to, w)| index.get(to).map(|&j| (j, w / total)))
                    .collect()
            })
        })
        .collect();
    let anchor_rows: Vec<usize> = anchors
        .iter()
        .filter_map(|a| index.get(a).copied())
        .collect();
    let start = 1.0 / anchor_rows.len() as f64;
    let is_anchor: Vec<bool> = (0..keys.len()).map(|i| anchor_rows.contains(&i)).collect();

    let mut trust = vec![0.0; keys.len()];
    for &a in &anchor_rows {
        trust[a] = start;
    }
    for _ in 0..100 {
        let mut next = vec![0.0; keys.len()];
        for &a in &anchor_rows {
            next[a] = params.restart * start;
        }
        for (i, &t) in trust.iter().enumerate() {
            if t == 0.0 {
                continue;
            }
            let share = (1.0 - params.restart) * t;
            match &rows[i] {
                Some(out) => {
                    for &(j, w) in out {
                        next[j] += share * w;
                    }
                }
                // A key that trusts nobody hands its share back to the anchors.
                None => {
                    for &a in &anchor_rows {
                        next[a] += share * start;
                    }
                }
            }
        }
        // No key but an anchor may hold more than `cap`; the excess returns to the anchors,
        // which are the host's own judgement and are not capped.
        let mut excess = 0.0;
        for (value, anchor) in next.iter_mut().zip(&is_anchor) {
            if !anchor && *value > params.cap {
                excess += *value - params.cap;
                *value = params.cap;
            }
        }
        for &a in &anchor_rows {
            next[a] += excess * start;
        }
        let change: f64 = next.iter().zip(&trust).map(|(n, t)| (n - t).abs()).sum();
        trust = next;
        if change < 1e-12 {
            break;
        }
    }
    keys.into_iter()
        .zip(trust)
        .filter(|(_, t)| *t > 0.0)
        .collect()
}
