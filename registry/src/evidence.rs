//! Evidence from callers: signed requests, which bind a receipt to a real caller, and signed
//! feedback about a receipt.

use serde::{Deserialize, Serialize};

use crate::Hash;
use crate::identity::PublicKey;
use crate::signed::{Record, Signed};

/// Longest a request may stay valid. Bounds how long a host must remember nonces.
pub const MAX_REQUEST_TTL_MS: u64 = 10 * 60 * 1000;

/// A caller's request to one host to run one agent, signed by the caller.
///
/// A receipt names the hash of the request it answers, so a host cannot invent callers, and a
/// request names its host, so it cannot be replayed elsewhere; its nonce stops replay at the
/// same host until it expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallRequest {
    /// Who asks, and signs.
    pub caller: PublicKey,
    /// The only host that may run it.
    pub host: PublicKey,
    /// The agent's manifest hash.
    pub agent: Hash,
    /// BLAKE3 of action and payload (see [`crate::request_hash`]).
    pub input_hash: Hash,
    /// The most fuel the caller will pay for.
    pub fuel_limit: u64,
    /// 128 random bits, as 32 hex digits.
    pub nonce: String,
    /// Milliseconds since the Unix epoch after which no host may run it.
    pub expires_at_ms: u64,
}

impl CallRequest {
    /// A fresh random nonce.
    pub fn new_nonce() -> String {
        let mut bytes = [0u8; 16];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut bytes);
        hex::encode(bytes)
    }
}

impl Record for CallRequest {
    const TAG: &'static str = "agora/request/v1";
    const KIND: &'static str = "request";

    fn signer(&self) -> &PublicKey {
        &self.caller
    }
}

/// A request with a verified caller signature.
pub type SignedRequest = Signed<CallRequest>;

/// A caller's rating of one execution, signed by the caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    /// The receipt rated.
    pub receipt: Hash,
    /// Who rates, and signs: it must be the receipt's caller.
    pub rater: PublicKey,
    /// 0 (useless) to 100 (excellent).
    pub score: u8,
    /// Short labels, e.g. `fair-price`, `slow`.
    pub tags: Vec<String>,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

/// Most tags on one feedback record, and longest tag.
pub const MAX_FEEDBACK_TAGS: usize = 8;
/// Longest feedback tag, in bytes.
pub const MAX_FEEDBACK_TAG_BYTES: usize = 32;

impl Record for Feedback {
    const TAG: &'static str = "agora/feedback/v1";
    const KIND: &'static str = "feedback";

    fn signer(&self) -> &PublicKey {
        &self.rater
    }
}

/// Feedback with a verified rater signature.
pub type SignedFeedback = Signed<Feedback>;

/// Why a feedback record does not count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FeedbackError {
    /// It rates a different receipt than the one given.
    #[error("feedback is about receipt {rated}, not {given}")]
    WrongReceipt {
        /// What it rates.
        rated: Hash,
        /// The receipt given.
        given: Hash,
    },
    /// The receipt answered no signed request, so it has no caller who could rate it.
    #[error("receipt {0} has no caller-signed request; only callers may rate")]
    NoCaller(Hash),
    /// The rater is not the receipt's caller.
    #[error("rater {rater} is not the caller {caller} of the receipt")]
    NotTheCaller {
        /// The rater.
        rater: PublicKey,
        /// The receipt's caller.
        caller: PublicKey,
    },
    /// The rater published the agent: self-rating.
    #[error("rater {0} published the agent and cannot rate it")]
    RaterIsPublisher(PublicKey),
    /// The rater ran the call: self-rating.
    #[error("rater {0} is the host that ran the call and cannot rate it")]
    RaterIsHost(PublicKey),
    /// Score above 100, or tags too many or too long.
    #[error("malformed feedback: {0}")]
    Malformed(String),
}

impl Feedback {
    /// Checks that this feedback counts as evidence about `receipt`, an execution of an agent
    /// published by `publisher`.
    pub fn validate(
        &self,
        receipt: &crate::SignedReceipt,
        publisher: &PublicKey,
    ) -> Result<(), FeedbackError> {
        if self.receipt != receipt.hash() {
            return Err(FeedbackError::WrongReceipt {
                rated: self.receipt,
                given: receipt.hash(),
            });
        }
        if self.score > 100 {
            return Err(FeedbackError::Malformed(format!(
                "score {} is above 100",
                self.score
            )));
        }
        if self.tags.len() > MAX_FEEDBACK_TAGS
            || self
                .tags
                .iter()
                .any(|t| t.is_empty() || t.len() > MAX_FEEDBACK_TAG_BYTES)
        {
            return Err(FeedbackError::Malformed(format!(
                "at most {MAX_FEEDBACK_TAGS} tags of 1 to {MAX_FEEDBACK_TAG_BYTES} bytes"
            )));
        }
        let body = receipt.body();
        let caller = body.caller.ok_or(FeedbackError::NoCaller(receipt.hash()))?;
        if self.rater != caller {
            return Err(FeedbackError::NotTheCaller {
                rater: self.rater,
                caller,
            });
        }
        if self.rater == *publisher {
            return Err(FeedbackError::RaterIsPublisher(self.rater));
        }
        if self.rater == body.host {
            return Err(FeedbackError::RaterIsHost(self.rater));
        }
        Ok(())
    }
}
