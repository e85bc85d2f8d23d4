//! Validations and fraud proofs: signing what a re-execution found, and acting on a proof that
//! a host signed a receipt its call did not produce.

use agora_registry::{
    Finding, FraudProof, Hash, PublicKey, Signed, SignedReceipt, SignedValidation, Validation,
};

use super::reexecute::{ReexecuteError, Reexecution, Verdict};
use super::{Node, unix_now};

/// Why a fraud proof was not acted on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FraudError {
    /// A part of the proof breaks the rules every host applies (a timestamp in the future, a
    /// malformed finding).
    #[error("the fraud proof is not admissible: {0}")]
    Invalid(#[source] agora_registry::Error),
    /// This host does not have the component the receipt names, so it cannot run the call.
    #[error("this host does not have component {0}, which the receipt names")]
    MissingComponent(Hash),
    /// The call could not be run again here.
    #[error("running the receipt's call again: {0}")]
    Reexecute(#[from] ReexecuteError),
    /// Running the call again gave what the receipt says: the proof proves nothing.
    #[error("running the call again gives what receipt {receipt} says: no fraud")]
    NotFraud {
        /// The receipt.
        receipt: Hash,
    },
    /// Storing the finding failed.
    #[error("recording the fraud: {0}")]
    Registry(#[source] agora_registry::Error),
}

impl FraudError {
    /// Whether checking the same proof again later may end otherwise: the component may have
    /// arrived, the call may run, the registry may take the write. A proof that is
    /// inadmissible or proves nothing stays so.
    pub fn is_transient(&self) -> bool {
        match self {
            FraudError::MissingComponent(_)
            | FraudError::Reexecute(_)
            | FraudError::Registry(_) => true,
            FraudError::Invalid(_) | FraudError::NotFraud { .. } => false,
        }
    }
}

/// A fraud proof this host checked and recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FraudRecorded {
    /// The host that lied, now dishonest in this host's scores.
    pub host: PublicKey,
    /// The receipt it lied in.
    pub receipt: Hash,
    /// What this host's re-execution found.
    pub finding: Finding,
}

impl Verdict {
    /// The finding a validation records, or `None` when there is nothing to compare.
    pub fn finding(&self) -> Option<Finding> {
        match self {
            Verdict::Matches => Some(Finding::Matches),
            Verdict::Differs { fields } => Some(Finding::Differs {
                fields: fields.iter().map(|f| f.to_string()).collect(),
            }),
            Verdict::TranscriptDiverges(divergence) => Some(Finding::TranscriptDiverges {
                index: divergence.index as u64,
                reason: crate::sandbox::truncate(
                    &divergence.reason,
                    agora_registry::rules::MAX_REASON_BYTES,
                ),
            }),
            Verdict::NotReproducible => None,
        }
    }
}

impl Node {
    /// Runs `receipt`'s call again (see [`Node::reexecute`]) and signs what it found as this
    /// host; `None` for the validation when the receipt's outcome is not reproducible.
    pub async fn validate(
        &self,
        receipt: &SignedReceipt,
        component: &[u8],
        input: &[u8],
        transcript: &[u8],
    ) -> Result<(Reexecution, Option<SignedValidation>), ReexecuteError> {
        let again = self
            .reexecute(receipt, component, input, transcript)
            .await?;
        let Some(finding) = again.verdict.finding() else {
            return Ok((again, None));
        };
        let validation = Validation {
            receipt: receipt.hash(),
            host: receipt.body().host,
            validator: self.public_key(),
            profile: self.0.sandbox.profile_hash(),
            outcome: again.outcome.clone(),
            output_hash: again.output_hash,
            fuel_used: again.fuel_used,
            finding,
            timestamp_ms: unix_now().as_millis() as u64,
        };
        let signed = Signed::sign(validation, &self.0.key)
            .map_err(|e| ReexecuteError::Sandbox(format!("signing the validation: {e}")))?;
        Ok((again, Some(signed)))
    }

    /// Checks a fraud proof by running the receipt's call again here, with the component from
    /// this host's blob store; if this host too finds the receipt wrong, records the proof
    /// against its host, who from then on counts as dishonest in this host's scores. The
    /// proof's own finding is not trusted: only this host's re-execution is.
    pub async fn accept_fraud_proof(
        &self,
        proof: &FraudProof,
    ) -> Result<FraudRecorded, FraudError> {
        let now_ms = unix_now().as_millis() as u64;
        let receipt = &proof.receipt;
        receipt.body().check(now_ms).map_err(FraudError::Invalid)?;
        proof
            .validation
            .body()
            .check(now_ms)
            .map_err(FraudError::Invalid)?;
        let component_hash = receipt.body().agent.component;
        let component = self
            .0
            .blobs
            .get(&component_hash)
            .await
            .ok()
            .flatten()
            .ok_or(FraudError::MissingComponent(component_hash))?;
        let again = self
            .reexecute(receipt, &component, &proof.input, &proof.transcript)
            .await?;
        let finding =
            (again.verdict.finding())
                .filter(Finding::is_fraud)
                .ok_or(FraudError::NotFraud {
                    receipt: receipt.hash(),
                })?;
        let reason = format!("re-executing receipt {}: {finding}", receipt.hash());
        let (node, owned, why) = (self.clone(), proof.clone(), reason);
        super::blocking(move || node.0.registry.record_fraud(&owned, &why))
            .await
            .map_err(FraudError::Registry)?;
        Ok(FraudRecorded {
            host: receipt.body().host,
            receipt: receipt.hash(),
            finding,
        })
    }
}
