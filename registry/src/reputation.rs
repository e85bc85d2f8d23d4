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

use std::collections::{BTreeMap, BTreeSet};

use crate::identity::PublicKey;
use crate::receipt::Outcome;
use crate::{Hash, SignedFeedback, SignedManifest, SignedReceipt};

/// Everything scores are computed from: the facts of signed, verified records.
///
/// [`crate::Registry::evidence_set`] reads it from the registry's columns; [`EvidenceSet::from_records`]
/// builds it from records in memory. Both give the same set for the same records.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EvidenceSet {
    /// Released agents, by manifest hash.
    pub agents: BTreeMap<Hash, AgentFacts>,
    /// Calls, one per receipt, in receipt-hash order (so sums run in the same order everywhere).
    calls: Vec<Call>,
    /// Keys with recorded evidence against them: a forked or broken receipt chain, a receipt
    /// that contradicts its request or manifest, double-signed feedback or releases.
    pub dishonest: BTreeSet<PublicKey>,
    /// Stored rows that could not be read as evidence and were left out (see
    /// [`crate::Registry::update_evidence`]).
    pub skipped_rows: u64,
}

/// What scoring needs from a manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentFacts {
    /// Who published it.
    pub publisher: PublicKey,
    /// The component the manifest names.
    pub component: Hash,
    /// The fuel the publisher said a call may need.
    pub max_fuel: u64,
    /// The price per million fuel.
    pub price_per_mfuel: u64,
    /// The memory the publisher said a call may need, in bytes (`None` for a manifest stored
    /// before it was a column).
    pub max_memory_bytes: Option<u64>,
}

/// What scoring needs from a receipt and the feedback on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    /// The receipt's hash.
    pub receipt: Hash,
    /// The host that signed it.
    pub host: PublicKey,
    /// The caller whose signed request it served, if any.
    pub caller: Option<PublicKey>,
    /// The agent's manifest.
    pub manifest: Hash,
    /// The agent's component.
    pub component: Hash,
    /// How the call ended, as far as reputation cares.
    pub outcome: CallOutcome,
    /// The fuel the caller allowed.
    pub fuel_limit: u64,
    /// What the call cost.
    pub charge: u64,
    /// When it ran, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Its place in the host's receipt chain.
    pub seq: u64,
    /// The memory limit it ran under, if the receipt records it.
    pub memory_limit: Option<u64>,
    /// The caller's feedback, if any counted.
    pub rating: Option<Rating>,
}

/// A caller's score of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rating {
    /// The caller.
    pub rater: PublicKey,
    /// 0 to 100.
    pub score: u8,
}

/// How a call ended, as far as reputation cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// It returned (an answer, an agent-level error, or too much output or logging: the
    /// caller's feedback judges those).
    Returned,
    /// It trapped: a failure on the agent's own account.
    Trap,
    /// It ran out of fuel: a failure only if the caller allowed the manifest's whole budget.
    OutOfFuel,
    /// It hit its memory limit: a failure only if that limit was the manifest's own.
    Memory,
    /// It hit a bound that depends on the host running it (a wall-clock timeout): never blamed
    /// on the agent.
    HostBound,
}

impl CallOutcome {
    /// Classifies a receipt's outcome.
    pub fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Trap { .. } => CallOutcome::Trap,
            Outcome::MemoryLimit => CallOutcome::Memory,
            Outcome::Timeout => CallOutcome::HostBound,
            Outcome::FuelExhausted => CallOutcome::OutOfFuel,
            Outcome::Ok | Outcome::AgentError { .. } | Outcome::OutputLimit | Outcome::LogLimit => {
                CallOutcome::Returned
            }
        }
    }

    /// Classifies an outcome by its name ([`Outcome::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "trap" => CallOutcome::Trap,
            "memory-limit" => CallOutcome::Memory,
            "timeout" => CallOutcome::HostBound,
            "fuel-exhausted" => CallOutcome::OutOfFuel,
            "ok" | "agent-error" | "output-limit" | "log-limit" => CallOutcome::Returned,
            _ => return None,
        })
    }
}

impl EvidenceSet {
    /// An evidence set from its parts; `calls` may come in any order.
    pub fn new(
        agents: BTreeMap<Hash, AgentFacts>,
        mut calls: Vec<Call>,
        dishonest: BTreeSet<PublicKey>,
    ) -> Self {
        calls.sort_unstable_by_key(|call| call.receipt);
        calls.dedup_by_key(|call| call.receipt);
        EvidenceSet {
            agents,
            calls,
            dishonest,
            skipped_rows: 0,
        }
    }

    /// An evidence set from verified records. Feedback is taken as given: check it against its
    /// receipt first ([`crate::Registry::insert_feedback`] does).
    pub fn from_records(
        manifests: &[SignedManifest],
        receipts: &[SignedReceipt],
        feedback: &[SignedFeedback],
        dishonest: BTreeSet<PublicKey>,
    ) -> Self {
        let agents = manifests
            .iter()
            .map(|m| {
                let body = m.body();
                let facts = AgentFacts {
                    publisher: body.publisher,
                    component: body.component.hash,
                    max_fuel: body.limits.max_fuel,
                    price_per_mfuel: body.price_per_mfuel,
                    max_memory_bytes: Some(body.limits.max_memory_bytes),
                };
                (m.hash(), facts)
            })
            .collect();
        let calls = receipts
            .iter()
            .map(|r| {
                let body = r.body();
                Call {
                    receipt: r.hash(),
                    host: body.host,
                    caller: body.caller,
                    manifest: body.agent.manifest,
                    component: body.agent.component,
                    outcome: CallOutcome::of(&body.outcome),
                    fuel_limit: body.fuel_limit,
                    charge: body.charge,
                    timestamp_ms: body.timestamp_ms,
                    seq: body.seq,
                    memory_limit: body.limits.map(|l| l.memory_bytes),
                    rating: None,
                }
            })
            .collect();
        let mut set = EvidenceSet::new(agents, calls, dishonest);
        for rating in feedback {
            set.rate(rating);
        }
        set
    }

    /// Attaches `feedback` to the call it rates, replacing any earlier rating; returns whether
    /// that call is in the set.
    pub fn rate(&mut self, feedback: &SignedFeedback) -> bool {
        let body = feedback.body();
        self.set_rating(
            body.receipt,
            Rating {
                rater: body.rater,
                score: body.score.min(100),
            },
        )
    }

    fn set_rating(&mut self, receipt: Hash, rating: Rating) -> bool {
        match self
            .calls
            .binary_search_by_key(&receipt, |call| call.receipt)
        {
            Ok(index) => {
                self.calls[index].rating = Some(rating);
                true
            }
            Err(_) => false,
        }
    }

    /// Adds evidence that arrived later: `calls` (in any order; ones already present are kept
    /// as they are) and `ratings` of calls by receipt hash. `agents` and `dishonest` are a
    /// complete, newer view and replace the old one.
    pub fn update(
        &mut self,
        agents: BTreeMap<Hash, AgentFacts>,
        mut calls: Vec<Call>,
        ratings: Vec<(Hash, Rating)>,
        dishonest: BTreeSet<PublicKey>,
    ) {
        self.agents = agents;
        self.dishonest = dishonest;
        if !calls.is_empty() {
            calls.sort_unstable_by_key(|call| call.receipt);
            // Merge two sorted runs rather than re-sorting the lot.
            let old = std::mem::take(&mut self.calls);
            let mut merged = Vec::with_capacity(old.len() + calls.len());
            let (mut old, mut new) = (old.into_iter().peekable(), calls.into_iter().peekable());
            loop {
                let take_old = match (old.peek(), new.peek()) {
                    (Some(a), Some(b)) => a.receipt <= b.receipt,
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (None, None) => break,
                };
                let next = if take_old { old.next() } else { new.next() };
                if let Some(call) = next
                    && merged
                        .last()
                        .is_none_or(|last: &Call| last.receipt != call.receipt)
                {
                    merged.push(call);
                }
            }
            self.calls = merged;
        }
        for (receipt, rating) in ratings {
            self.set_rating(receipt, rating);
        }
    }

    /// The calls, in receipt-hash order.
    pub fn calls(&self) -> &[Call] {
        &self.calls
    }
}

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

/// How far each host's chain is held without a gap: receipts `0..n` are all here. A host's
/// receipts beyond its first gap do not count until the gap is filled, so a host that deletes a
/// receipt (a failure, say) loses every receipt it signed after it.
fn contiguous(evidence: &EvidenceSet) -> BTreeMap<PublicKey, u64> {
    let mut seqs: BTreeMap<PublicKey, Vec<u64>> = BTreeMap::new();
    for call in evidence.calls() {
        seqs.entry(call.host).or_default().push(call.seq);
    }
    seqs.into_iter()
        .map(|(host, mut seqs)| {
            seqs.sort_unstable();
            seqs.dedup();
            let held = seqs
                .iter()
                .enumerate()
                .take_while(|(i, seq)| *i as u64 == **seq)
                .count();
            (host, held as u64)
        })
        .collect()
}

/// Computes trust and reputation from `evidence`.
pub fn compute(evidence: &EvidenceSet, params: &ScoreParams) -> Scores {
    let held = contiguous(evidence);
    let counts = |call: &Call| held.get(&call.host).is_some_and(|n| call.seq < *n);
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
    0.5_f64.powf(age / params.half_life_ms.max(1) as f64)
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

/// The `p` quantile of `Beta(a, b)`, by bisection on the regularised incomplete beta function.
fn beta_quantile(p: f64, a: f64, b: f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 1.0);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if incomplete_beta(mid, a, b) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

/// The regularised incomplete beta function `I_x(a, b)` (continued fraction, Lentz's method).
fn incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(x, a, b) / a
    } else {
        1.0 - front * beta_fraction(1.0 - x, b, a) / b
    }
}

fn beta_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut c = 1.0;
    let mut d = 1.0 - (a + b) * x / (a + 1.0);
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..300 {
        let m = f64::from(m);
        let even = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        for numerator in [
            even,
            -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0)),
        ] {
            d = 1.0 + numerator * d;
            if d.abs() < TINY {
                d = TINY;
            }
            c = 1.0 + numerator / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            h *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-14 {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0 (Lanczos approximation, g = 7).
fn ln_gamma(x: f64) -> f64 {
    const COEFFICIENTS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return std::f64::consts::PI.ln()
            - (std::f64::consts::PI * x).sin().ln()
            - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let series = COEFFICIENTS[1..]
        .iter()
        .enumerate()
        .fold(COEFFICIENTS[0], |sum, (i, c)| {
            sum + c / (x + i as f64 + 1.0)
        });
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_beta_quantile_matches_known_values() {
        // Beta(1,1) is uniform: its 5% quantile is 0.05.
        assert!((beta_quantile(0.05, 1.0, 1.0) - 0.05).abs() < 1e-9);
        // Beta(2,1) has CDF x²: the 5% quantile is √0.05.
        assert!((beta_quantile(0.05, 2.0, 1.0) - 0.05_f64.sqrt()).abs() < 1e-9);
        // Beta(1,2) has CDF 1−(1−x)²: the 5% quantile is 1−√0.95.
        assert!((beta_quantile(0.05, 1.0, 2.0) - (1.0 - 0.95_f64.sqrt())).abs() < 1e-9);
        // More evidence at the same mean raises the bound.
        let few = Reputation {
            positive: 8.0,
            negative: 2.0,
            evidence: 10,
        };
        let many = Reputation {
            positive: 80.0,
            negative: 20.0,
            evidence: 100,
        };
        assert!(many.lower_bound() > few.lower_bound());
        assert!((few.quality() - 0.75).abs() < 1e-12);
        assert!((Reputation::NONE.uncertainty() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn ln_gamma_matches_factorials() {
        for (n, factorial) in [(1.0, 1.0_f64), (5.0, 24.0), (11.0, 3_628_800.0)] {
            assert!((ln_gamma(n) - factorial.ln()).abs() < 1e-10, "Γ({n})");
        }
    }
}
