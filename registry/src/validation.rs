//! Validation records and fraud proofs: what a verifier signs after running a receipt's call
//! again, and the bundle that lets anyone check a lie without trusting the verifier.
//!
//! A [`Validation`] says which receipt was re-executed, under which profile, what the
//! re-execution gave and whether that is what the receipt says ([`Finding`]). A validation whose
//! finding is not [`Finding::Matches`], together with the receipt and the input and transcript
//! it was run from, is a [`FraudProof`]: self-contained, because anyone holding the component
//! (named by the receipt, fetched by hash from anywhere) can run the call again under the same
//! profile and reach the same finding. The verifier's signature only says who found it.

use serde::{Deserialize, Serialize};

use crate::identity::PublicKey;
use crate::receipt::{Outcome, Receipt, SignedReceipt};
use crate::signed::{Record, Signed};
use crate::{Error, Hash, Input, Transcript};

/// A verifier's signed account of one re-execution.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validation {
    /// The receipt re-executed.
    pub receipt: Hash,
    /// The host that signed it.
    pub host: PublicKey,
    /// Who re-executed it and signs this.
    pub validator: PublicKey,
    /// The execution profile it ran under (the receipt's).
    pub profile: Hash,
    /// How the re-execution ended.
    pub outcome: Outcome,
    /// BLAKE3 of its output.
    pub output_hash: Option<Hash>,
    /// Its fuel.
    pub fuel_used: u64,
    /// Whether that is what the receipt says.
    pub finding: Finding,
    /// When, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// What a re-execution found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Finding {
    /// Outcome, output hash and fuel are the receipt's.
    Matches,
    /// These of the receipt's fields are not what the call gives: `outcome`, `output_hash`,
    /// `fuel_used`, `nested` (the callees' receipts, which the transcript names), `model_usage`
    /// (the tokens the transcript's model answers count), `egress` (the requests and bytes its
    /// outbound HTTP exchanges count).
    Differs {
        /// The fields, in that order.
        fields: Vec<String>,
    },
    /// The guest's host calls are not the ones the receipt's transcript records.
    TranscriptDiverges {
        /// The first call that differs, from 0.
        index: u64,
        /// How, for people.
        reason: String,
    },
}

impl Finding {
    /// Whether the finding shows the receipt's host signed what its call did not produce.
    pub fn is_fraud(&self) -> bool {
        !matches!(self, Finding::Matches)
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Matches => f.write_str("matches the receipt"),
            Finding::Differs { fields } => {
                write!(f, "differs from the receipt in {}", fields.join(", "))
            }
            Finding::TranscriptDiverges { index, reason } => {
                write!(f, "the transcript diverges at host call {index}: {reason}")
            }
        }
    }
}

impl Record for Validation {
    const TAG: &'static str = "agora/validation/v1";
    const KIND: &'static str = "validation";

    fn signer(&self) -> &PublicKey {
        &self.validator
    }
}

/// A validation with a verified signature.
pub type SignedValidation = Signed<Validation>;

/// Everything needed to check that a receipt's host lied: the receipt, a validation finding
/// fraud in it, and the input and transcript the call runs from. The component is named by the
/// receipt and fetched by hash.
#[derive(Clone, Debug)]
pub struct FraudProof {
    /// The receipt, signed by the host accused.
    pub receipt: SignedReceipt,
    /// The finding, signed by whoever found it.
    pub validation: SignedValidation,
    /// [`Input::to_bytes`] of the call's input.
    pub input: Vec<u8>,
    /// [`Transcript::to_bytes`] of the transcript the receipt names.
    pub transcript: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProofWire<'a> {
    #[serde(borrow)]
    receipt: &'a serde_json::value::RawValue,
    #[serde(borrow)]
    validation: &'a serde_json::value::RawValue,
    input: String,
    transcript: String,
}

/// Largest fraud proof accepted, in bytes: a transcript and an input at their bounds, in hex,
/// and room for the two records.
pub const MAX_FRAUD_PROOF_BYTES: usize = 2
    * (crate::transcript::MAX_TRANSCRIPT_BYTES as usize + crate::rules::MAX_INPUT_BYTES as usize)
    + (1 << 20);

impl FraudProof {
    /// Checks that the parts belong together: the validation is about this receipt and its
    /// host, finds fraud, ran under the receipt's profile; the input is the one the receipt
    /// names and the transcript has the receipt's hash and size. Whether the finding is right is
    /// for a re-execution to say.
    pub fn new(
        receipt: SignedReceipt,
        validation: SignedValidation,
        input: Vec<u8>,
        transcript: Vec<u8>,
    ) -> Result<Self, Error> {
        let invalid = |reason: String| Error::Invalid {
            kind: "fraud proof",
            reason,
        };
        let (body, found): (&Receipt, &Validation) = (receipt.body(), validation.body());
        if found.receipt != receipt.hash() || found.host != body.host {
            return Err(invalid(format!(
                "the validation is about receipt {} by {}, not receipt {} by {}",
                found.receipt,
                found.host,
                receipt.hash(),
                body.host
            )));
        }
        if !found.finding.is_fraud() {
            return Err(invalid(
                "the validation found that the receipt matches".into(),
            ));
        }
        if body.profile != Some(found.profile) {
            return Err(invalid(
                "the validation ran under another profile than the receipt names".into(),
            ));
        }
        let parsed = Input::from_bytes(&input)?;
        if parsed.hash() != body.input_hash {
            return Err(invalid("the input is not the one the receipt names".into()));
        }
        if body.transcript != Some(crate::BlobRef::of(&transcript)) {
            return Err(invalid(
                "the transcript is not the one the receipt names".into(),
            ));
        }
        Transcript::from_bytes(&transcript)?;
        Ok(FraudProof {
            receipt,
            validation,
            input,
            transcript,
        })
    }

    /// The proof as it travels: `{"receipt": <signed>, "validation": <signed>, "input": hex,
    /// "transcript": hex}`, each record in its exact signed bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let raw = |bytes: &[u8]| {
            serde_json::value::RawValue::from_string(String::from_utf8_lossy(bytes).into_owned())
        };
        let (Ok(receipt), Ok(validation)) = (
            raw(self.receipt.as_bytes()),
            raw(self.validation.as_bytes()),
        ) else {
            // Signed records are canonical JSON: they always embed.
            return Vec::new();
        };
        serde_json::to_vec(&ProofWire {
            receipt: &receipt,
            validation: &validation,
            input: hex::encode(&self.input),
            transcript: hex::encode(&self.transcript),
        })
        .unwrap_or_default()
    }

    /// Parses and checks a proof (see [`FraudProof::new`]): both signatures, and that the parts
    /// belong together.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let invalid = |reason: String| Error::Invalid {
            kind: "fraud proof",
            reason,
        };
        if bytes.len() > MAX_FRAUD_PROOF_BYTES {
            return Err(invalid(format!(
                "{} bytes; at most {MAX_FRAUD_PROOF_BYTES} are accepted",
                bytes.len()
            )));
        }
        let wire: ProofWire<'_> =
            serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        let hex = |field: &str, text: &str| {
            hex::decode(text).map_err(|e| invalid(format!("{field}: {e}")))
        };
        FraudProof::new(
            Signed::from_bytes(wire.receipt.get().as_bytes())?,
            Signed::from_bytes(wire.validation.get().as_bytes())?,
            hex("input", &wire.input)?,
            hex("transcript", &wire.transcript)?,
        )
    }
}
