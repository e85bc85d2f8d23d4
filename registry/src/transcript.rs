//! Transcripts: what a call's host calls answered, in order, so that anyone holding the
//! component, the input and the transcript can run the call again and get the same outcome,
//! output and fuel.
//!
//! A guest's input and its virtual clocks and randomness (see [`CallEnvironment`]) decide
//! everything it computes except what the host answers: what `kv-get` found, whether `kv-set`
//! stored, what a `call-agent` callee returned and what it cost, what a language model said and
//! what an outbound HTTP request got. A transcript records exactly those answers, and what each
//! call asked (a key, the hash of a value written, a callee and the hash of its input, the hash
//! of a model request or of an HTTP request) so that a replay notices a guest whose calls
//! diverge from the record. Outbound HTTP exchanges come after the other calls, in the order the
//! guest made the requests (they finish in the network's order). A
//! receipt names its transcript by [`BlobRef`]: BLAKE3 of the transcript's bytes, and their
//! length.
//!
//! ```
//! use agora_registry::{CallAnswer, HostCall, Transcript};
//!
//! let transcript = Transcript {
//!     calls: vec![
//!         HostCall::KvGet { key: "fares".into(), value: Some(b"12".to_vec()) },
//!         HostCall::CallAgent {
//!             agent: "ride-driver".into(),
//!             input_hash: agora_registry::request_hash("quote", b"{}"),
//!             receipt: None,
//!             fuel_used: 0,
//!             charge: 0,
//!             answer: CallAnswer::Refused("call depth limit of 4 reached".into()),
//!         },
//!     ],
//! };
//! let bytes = transcript.to_bytes();
//! assert_eq!(Transcript::from_bytes(&bytes)?, transcript);
//! assert_eq!(transcript.blob_ref().hash, agora_registry::Hash::of(&bytes));
//! # Ok::<(), agora_registry::Error>(())
//! ```
//!
//! [`CallEnvironment`]: crate::CallEnvironment

use serde::{Deserialize, Serialize};

use crate::{Error, Hash};

/// Largest transcript a receipt may name, in bytes: what a host keeps and serves per receipt,
/// and what a verifier accepts before parsing.
pub const MAX_TRANSCRIPT_BYTES: u64 = 16 << 20;

/// A blob a receipt names: BLAKE3 of its bytes and how many there are, so a verifier can refuse
/// an oversized blob before fetching it and check what it fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobRef {
    /// BLAKE3 of the bytes.
    pub hash: Hash,
    /// Their length.
    pub size: u64,
}

impl BlobRef {
    /// The reference to `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        BlobRef {
            hash: Hash::of(bytes),
            size: bytes.len() as u64,
        }
    }
}

/// The host calls one call made, in the order it made them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transcript {
    /// Each host call and its answer.
    pub calls: Vec<HostCall>,
}

/// One host call and what the host answered. Calls whose answer the input decides (`log`, the
/// virtual clocks and randomness) are not recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum HostCall {
    /// `kv-get key`: the value found, if any.
    KvGet {
        /// The key asked for.
        key: String,
        /// What the agent's memory held.
        #[serde(with = "hex_option")]
        value: Option<Vec<u8>>,
    },
    /// `kv-set key value`: whether it was stored.
    KvSet {
        /// The key written.
        key: String,
        /// BLAKE3 of the value written (the guest computed it, so a replay computes it again).
        value_hash: Hash,
        /// The host's refusal (a quota, a storage failure), or `None` if stored.
        error: Option<String>,
    },
    /// `call-agent agent request`: what the callee answered and what it cost.
    CallAgent {
        /// The agent reference the guest named.
        agent: String,
        /// [`request_hash`](crate::request_hash) of the action and payload sent.
        input_hash: Hash,
        /// The callee's receipt, if it ran (a refused or unresolvable call has none).
        receipt: Option<Hash>,
        /// Fuel the callee used, taken from the caller's budget.
        fuel_used: u64,
        /// What the callee's call cost, added to the caller's charge.
        charge: u64,
        /// The callee's answer.
        answer: CallAnswer,
    },
    /// `complete` or `embed` on a language model: what it answered.
    Model {
        /// `complete` or `embed`.
        op: String,
        /// The model the guest named.
        model: String,
        /// [`model_request_hash`](crate::model::model_request_hash) of what the guest asked.
        request_hash: Hash,
        /// The answer.
        answer: crate::ModelAnswer,
    },
    /// An outbound request through `wasi:http/outgoing-handler`: what it got back.
    ///
    /// Requests answer in the order the network does, not the order they were made, so a
    /// transcript keeps them apart from the other calls, after them in the order the guest made
    /// them, and a replay answers each by its `index`.
    Http {
        /// Which of the call's outbound requests, from 0, in the order the guest made them.
        index: u32,
        /// The method.
        method: String,
        /// `scheme://authority/path?query`.
        url: String,
        /// [`http_request_hash`](crate::egress::http_request_hash) of what the guest sent.
        request_hash: Hash,
        /// Bytes the host sent (0 for a request it refused).
        bytes_sent: u64,
        /// Bytes the host received.
        bytes_received: u64,
        /// The answer.
        answer: crate::egress::HttpAnswer,
    },
}

/// What `call-agent` returned to the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum CallAnswer {
    /// The callee's output.
    Output(#[serde(with = "hex_bytes")] Vec<u8>),
    /// `agent-error::bad-request`.
    BadRequest(String),
    /// `agent-error::refused`.
    Refused(String),
    /// `agent-error::internal`.
    Internal(String),
}

impl HostCall {
    /// The call's name as the guest imports it.
    pub fn name(&self) -> &'static str {
        match self {
            HostCall::KvGet { .. } => "kv-get",
            HostCall::KvSet { .. } => "kv-set",
            HostCall::CallAgent { .. } => "call-agent",
            HostCall::Model { .. } => "model",
            HostCall::Http { .. } => "http",
        }
    }
}

impl Transcript {
    /// The transcript's bytes, which its [`BlobRef`] names: JSON, bytes in lower-case hex.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising these types cannot fail: no maps with non-string keys, no custom errors.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a transcript's bytes, refusing more than [`MAX_TRANSCRIPT_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() as u64 > MAX_TRANSCRIPT_BYTES {
            return Err(Error::Invalid {
                kind: "transcript",
                reason: format!(
                    "{} bytes; at most {MAX_TRANSCRIPT_BYTES} are accepted",
                    bytes.len()
                ),
            });
        }
        serde_json::from_slice(bytes).map_err(|e| Error::Invalid {
            kind: "transcript",
            reason: e.to_string(),
        })
    }

    /// The reference a receipt records for this transcript.
    pub fn blob_ref(&self) -> BlobRef {
        BlobRef::of(&self.to_bytes())
    }
}

pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        hex::decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

mod hex_option {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_some(&hex::encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        let text = <Option<std::borrow::Cow<'de, str>>>::deserialize(deserializer)?;
        text.map(|t| hex::decode(t.as_bytes()).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transcript_reads_back_as_written_and_its_reference_names_its_bytes() {
        let transcript = Transcript {
            calls: vec![
                HostCall::KvGet {
                    key: "k".into(),
                    value: None,
                },
                HostCall::KvGet {
                    key: "k".into(),
                    value: Some(vec![0, 255, 7]),
                },
                HostCall::KvSet {
                    key: "k".into(),
                    value_hash: Hash::of(b"v"),
                    error: Some("quota".into()),
                },
                HostCall::CallAgent {
                    agent: "a".into(),
                    input_hash: Hash::of(b"i"),
                    receipt: Some(Hash::of(b"r")),
                    fuel_used: 7,
                    charge: 1,
                    answer: CallAnswer::Output(vec![1, 2]),
                },
            ],
        };
        let bytes = transcript.to_bytes();
        assert_eq!(Transcript::from_bytes(&bytes).unwrap(), transcript);
        assert_eq!(transcript.blob_ref(), BlobRef::of(&bytes));
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("\"00ff07\""), "{text}");
    }

    #[test]
    fn malformed_and_oversized_transcripts_are_refused() {
        for bad in [
            &b"{\"calls\":[{\"kv-get\":{\"key\":\"k\",\"value\":\"zz\"}}]}"[..],
            b"{\"calls\":[],\"extra\":1}",
            b"{\"calls\":[{\"kv-delete\":{}}]}",
        ] {
            let error = Transcript::from_bytes(bad).unwrap_err();
            assert!(error.to_string().contains("transcript"), "{error}");
        }
        let huge = vec![b' '; MAX_TRANSCRIPT_BYTES as usize + 1];
        assert!(
            Transcript::from_bytes(&huge)
                .unwrap_err()
                .to_string()
                .contains("at most")
        );
    }
}
