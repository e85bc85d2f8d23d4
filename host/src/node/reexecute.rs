//! Re-running the call a receipt describes, to check what its host signed.
//!
//! A receipt names the component, the input, the profile, the limits, the clocks and randomness
//! its guest saw, and the transcript of what its host calls were answered. Given the bytes of
//! the component, the input and the transcript, any host running the same profile runs the same
//! call, answering its host calls from the transcript ([`Replay`]), and compares outcome, output
//! hash and fuel. A guest whose host calls are not the ones the transcript records is caught
//! too: the transcript does not belong to this call.

use std::sync::Arc;
use std::time::Duration;

use agora_registry::{BlobRef, Hash, Input, Outcome, SignedReceipt, Transcript};

use super::{Node, unix_now};
use crate::error::CheckError;
use crate::sandbox::CallLimits;
use crate::sandbox::{CallWorld, Divergence, Replay, Request};

/// What re-running a receipt's call gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reexecution {
    /// How the call ended this time.
    pub outcome: Outcome,
    /// BLAKE3 of this time's output.
    pub output_hash: Option<Hash>,
    /// Fuel this time.
    pub fuel_used: u64,
    /// Whether that is what the receipt says.
    pub verdict: Verdict,
}

/// A re-execution compared with its receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Outcome (a trap by its code), output hash and fuel are the receipt's.
    Matches,
    /// The receipt says otherwise: each named field differs. Under the receipt's profile,
    /// environment and transcript the call has one result, so this is proof that the host
    /// signed something its call did not produce.
    Differs {
        /// `outcome`, `output_hash`, `fuel_used`, `nested`, `model_usage` (its tokens),
        /// `egress` (its requests and bytes).
        fields: Vec<&'static str>,
    },
    /// The guest's host calls are not the ones the transcript records: the receipt's host
    /// answered calls this call never made, or left out calls it made.
    TranscriptDiverges(Divergence),
    /// The receipt's outcome depends on the host that ran it (a timeout, the host's memory, a
    /// stack overflow): nothing to compare.
    NotReproducible,
}

/// Why a receipt's call could not be re-run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReexecuteError {
    /// The receipt does not carry what a re-execution needs.
    #[error("receipt {receipt} cannot be re-checked: {reason}")]
    Unverifiable {
        /// The receipt.
        receipt: Hash,
        /// What it lacks.
        reason: String,
    },
    /// The component given is not the one the receipt names.
    #[error("the component given hashes to {actual}, but receipt {receipt} names {expected}")]
    ComponentMismatch {
        /// The receipt.
        receipt: Hash,
        /// What the receipt names.
        expected: Hash,
        /// What was given.
        actual: Hash,
    },
    /// The input given is not the one the receipt names, or not an input at all.
    #[error("the input given is not the one receipt {receipt} names: {reason}")]
    InputMismatch {
        /// The receipt.
        receipt: Hash,
        /// How it differs.
        reason: String,
    },
    /// The transcript given is not the one the receipt names, or not a transcript at all.
    #[error("the transcript given is not the one receipt {receipt} names: {reason}")]
    TranscriptMismatch {
        /// The receipt.
        receipt: Hash,
        /// How it differs.
        reason: String,
    },
    /// The receipt's limits are above this host's own: running it would give a stranger's
    /// receipt more of this host than the host gives its own callers.
    #[error("receipt {receipt} ran with {limit} {asked}, more than this host allows ({allowed})")]
    AboveHostLimits {
        /// The receipt.
        receipt: Hash,
        /// Which limit.
        limit: &'static str,
        /// The receipt's.
        asked: u64,
        /// This host's.
        allowed: u64,
    },
    /// The component does not pass this host's checks.
    #[error("component {component}: {source}")]
    Check {
        /// The component.
        component: Hash,
        /// Why.
        source: CheckError,
    },
    /// The sandbox could not run the call (not the guest's doing).
    #[error("running the call again: {0}")]
    Sandbox(String),
}

impl Node {
    /// Runs again, under this host's profile, the call `receipt` describes: `component`,
    /// `input` ([`Input::to_bytes`]) and `transcript` ([`Transcript::to_bytes`]) must be the
    /// bytes it names. No receipt is signed and nothing is stored.
    pub async fn reexecute(
        &self,
        receipt: &SignedReceipt,
        component: &[u8],
        input: &[u8],
        transcript: &[u8],
    ) -> Result<Reexecution, ReexecuteError> {
        let body = receipt.body();
        let unverifiable = |reason: &str| ReexecuteError::Unverifiable {
            receipt: receipt.hash(),
            reason: reason.into(),
        };
        if body.profile != Some(self.0.sandbox.profile_hash()) {
            return Err(unverifiable(&match body.profile {
                Some(other) => format!(
                    "it ran under profile {other}, this host runs {} ({})",
                    self.0.sandbox.profile().name,
                    self.0.sandbox.profile_hash()
                ),
                None => "it names no execution profile".into(),
            }));
        }
        let Some(environment) = body.environment else {
            return Err(unverifiable(
                "it does not record its guest's clocks and randomness",
            ));
        };
        let Some(limits) = body.limits else {
            return Err(unverifiable("it does not record its limits"));
        };
        let Some(transcript_ref) = body.transcript else {
            return Err(unverifiable("it does not record its host calls"));
        };
        let host = self.0.sandbox.limits();
        for (limit, asked, allowed) in [
            ("fuel", body.fuel_limit, host.max_fuel),
            ("memory bytes", limits.memory_bytes, host.max_memory_bytes),
            (
                "wall ms",
                limits.wall_ms,
                u64::try_from(host.max_wall.as_millis()).unwrap_or(u64::MAX),
            ),
            ("output bytes", limits.output_bytes, host.max_output_bytes),
        ] {
            if asked > allowed {
                return Err(ReexecuteError::AboveHostLimits {
                    receipt: receipt.hash(),
                    limit,
                    asked,
                    allowed,
                });
            }
        }
        let input_mismatch = |reason: String| ReexecuteError::InputMismatch {
            receipt: receipt.hash(),
            reason,
        };
        let input = Input::from_bytes(input).map_err(|e| input_mismatch(e.to_string()))?;
        if input.hash() != body.input_hash {
            return Err(input_mismatch(format!(
                "it hashes to {}, the receipt names {}",
                input.hash(),
                body.input_hash
            )));
        }
        let given = BlobRef::of(transcript);
        if given != transcript_ref {
            return Err(ReexecuteError::TranscriptMismatch {
                receipt: receipt.hash(),
                reason: format!(
                    "{} bytes hashing to {}, the receipt names {} bytes hashing to {}",
                    given.size, given.hash, transcript_ref.size, transcript_ref.hash
                ),
            });
        }
        let transcript =
            Transcript::from_bytes(transcript).map_err(|e| ReexecuteError::TranscriptMismatch {
                receipt: receipt.hash(),
                reason: e.to_string(),
            })?;
        let actual = Hash::of(component);
        if actual != body.agent.component {
            return Err(ReexecuteError::ComponentMismatch {
                receipt: receipt.hash(),
                expected: body.agent.component,
                actual,
            });
        }
        // A component this host has loaded passed its checks already; only new ones are copied
        // and checked.
        let checked = match self.0.sandbox.cached(&actual) {
            Some(checked) => checked,
            None => self
                .check_hashed(actual, component.to_vec())
                .await
                .map_err(|source| ReexecuteError::Check {
                    component: actual,
                    source,
                })?,
        };
        let call_limits = CallLimits {
            max_fuel: body.fuel_limit,
            max_memory_bytes: limits.memory_bytes,
            max_wall: Duration::from_millis(limits.wall_ms),
            max_output_bytes: limits.output_bytes,
        };
        let world = CallWorld {
            seed: environment.seed(&body.input_hash, body.request.as_ref()),
            environment,
        };
        let replay = Arc::new(Replay::new(transcript));
        let call = self.0.sandbox.call_state(
            "(re-execution)".into(),
            replay.clone(),
            body.parent_call.map_or(0, |p| p.depth),
            call_limits.max_wall,
        );
        let request = Request {
            action: input.action,
            payload: input.payload,
        };
        let started = unix_now();
        let invocation = self
            .0
            .sandbox
            .invoke(
                &checked,
                call,
                &call_limits,
                body.fuel_limit,
                &request,
                &world,
            )
            .await
            .map_err(|e| ReexecuteError::Sandbox(format!("{e:#}")))?;
        tracing::debug!(
            receipt = %receipt.hash(),
            outcome = %invocation.outcome,
            took_ms = (unix_now().saturating_sub(started)).as_millis() as u64,
            "re-executed"
        );
        let output_hash = invocation.output.as_deref().map(Hash::of);
        // However the call ended, it made every call its host recorded before the end.
        let diverged = (invocation.diverged.clone()).or_else(|| replay.finish().err());
        let verdict = if !body.outcome.is_reproducible() {
            Verdict::NotReproducible
        } else if let Some(divergence) = diverged {
            Verdict::TranscriptDiverges(divergence)
        } else {
            let mut fields = Vec::new();
            if !same_outcome(&invocation.outcome, &body.outcome) {
                fields.push("outcome");
            }
            if output_hash != body.output_hash {
                fields.push("output_hash");
            }
            if invocation.fuel_used != body.fuel_used {
                fields.push("fuel_used");
            }
            // The callees' receipts come from the transcript: the receipt must name those.
            if !invocation
                .nested
                .iter()
                .map(|nested| nested.receipt)
                .eq(body.nested.iter().copied())
            {
                fields.push("nested");
            }
            // Tokens come from the transcript's model answers too (their price is the host's).
            let tokens = |usage: &[agora_registry::ModelUsage]| -> Vec<(String, u64, u64)> {
                (usage.iter())
                    .map(|u| (u.model.clone(), u.prompt_tokens, u.generated_tokens))
                    .collect()
            };
            let used = crate::model::ModelConfig::default().usage(&invocation.transcript);
            if tokens(&used) != tokens(&body.model_usage) {
                fields.push("model_usage");
            }
            // Requests and bytes are the transcript's exchanges' (the price is the host's).
            let traffic = |usage: Option<agora_registry::egress::EgressUsage>| {
                let usage = usage.unwrap_or_default();
                (usage.requests, usage.bytes_sent, usage.bytes_received)
            };
            let exchanged = agora_registry::egress::EgressUsage::recount(&invocation.transcript);
            if traffic(Some(exchanged)) != traffic(body.egress) {
                fields.push("egress");
            }
            if fields.is_empty() {
                Verdict::Matches
            } else {
                Verdict::Differs { fields }
            }
        };
        Ok(Reexecution {
            outcome: invocation.outcome,
            output_hash,
            fuel_used: invocation.fuel_used,
            verdict,
        })
    }
}

/// Outcomes compared as a re-execution must: a trap by its stable code (its message is the
/// runtime's wording), an agent's error by its kind and message, everything else by kind.
fn same_outcome(ran: &Outcome, signed: &Outcome) -> bool {
    match (ran, signed) {
        (Outcome::Trap { code: ran, .. }, Outcome::Trap { code: signed, .. }) => ran == signed,
        (ran, signed) => ran == signed,
    }
}
