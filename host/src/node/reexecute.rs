//! Re-running the call a receipt describes, to check what its host signed.
//!
//! A receipt names the component, the input hash, the profile, the limits and the clocks and
//! randomness its guest saw. Given the component's and the input's bytes, any host running the
//! same profile runs the same call and compares outcome, output hash and fuel. Calls whose
//! results depended on more than that — agent memory read with `kv-get`, nested calls — are not
//! re-checked until the host calls they made are recorded with the receipt.

use std::time::Duration;

use agora_registry::{Hash, Outcome, SignedReceipt, request_hash};

use super::{Node, unix_now};
use crate::error::CheckError;
use crate::limits::CallLimits;
use crate::sandbox::{CallWorld, Request};

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
    /// The receipt says otherwise: each named field differs. Proof of a lie only for a call
    /// that did not depend on agent memory: a re-execution has none, so a call whose agent
    /// found something with `kv-get`, or wrote with `kv-set`, may differ honestly.
    Differs {
        /// `outcome`, `output_hash`, `fuel_used`.
        fields: Vec<&'static str>,
    },
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
    /// The action and payload given are not the input the receipt names.
    #[error("the input given is not the one receipt {receipt} names")]
    InputMismatch {
        /// The receipt.
        receipt: Hash,
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
    /// Runs again, under this host's profile, the call `receipt` describes: `component` must be
    /// the component it names and `action` and `payload` its input. No receipt is signed and
    /// nothing is stored.
    pub async fn reexecute(
        &self,
        receipt: &SignedReceipt,
        component: &[u8],
        action: &str,
        payload: &[u8],
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
        if !body.nested.is_empty() {
            return Err(unverifiable(
                "it made nested calls, whose answers are not recorded",
            ));
        }
        let actual = Hash::of(component);
        if actual != body.agent.component {
            return Err(ReexecuteError::ComponentMismatch {
                receipt: receipt.hash(),
                expected: body.agent.component,
                actual,
            });
        }
        if request_hash(action, payload) != body.input_hash {
            return Err(ReexecuteError::InputMismatch {
                receipt: receipt.hash(),
            });
        }
        let checked = self
            .check_hashed(actual, component.to_vec())
            .await
            .map_err(|source| ReexecuteError::Check {
                component: actual,
                source,
            })?;
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
        let call = self.0.sandbox.call_state(
            "(re-execution)".into(),
            None,
            body.parent_call.map_or(0, |p| p.depth),
            call_limits.max_wall,
        );
        let request = Request {
            action: action.to_owned(),
            payload: payload.to_vec(),
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
        let verdict = if !body.outcome.is_reproducible() {
            Verdict::NotReproducible
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
