//! The evidence scores are computed from: the facts of receipts, feedback and manifests, read
//! from the registry's columns or built from records in memory.

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
    /// Receipts whose host could not produce the input or transcript a re-execution needs
    /// within the deadline: they stay in their host's chain but count for nothing.
    pub unbacked: BTreeSet<Hash>,
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
    /// The host's receipt before it in the chain.
    pub prev: Option<Hash>,
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
    /// It hit a bound that depends on the host running it (a wall-clock timeout, the host's
    /// memory for all calls, the native stack): never blamed on the agent.
    HostBound,
}

impl CallOutcome {
    /// Classifies a receipt's outcome.
    pub fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Trap { .. } => CallOutcome::Trap,
            Outcome::MemoryLimit => CallOutcome::Memory,
            Outcome::Timeout | Outcome::HostMemory | Outcome::StackOverflow => {
                CallOutcome::HostBound
            }
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
            "timeout" | "host-memory" | "stack-overflow" => CallOutcome::HostBound,
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
            unbacked: BTreeSet::new(),
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
                    prev: body.prev,
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
