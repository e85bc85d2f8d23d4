//! The records of the agora marketplace and the registry that keeps them.
//!
//! Everything a host knows about the marketplace is a signed record:
//!
//! - a [`Manifest`], signed by a publisher, names an agent's component by its BLAKE3 [`Hash`](struct@Hash)
//!   and states its actions, capabilities, limits and price;
//! - a [`Receipt`], signed by a host, records one execution: which agent, input and output
//!   hashes, fuel, charge and [`Outcome`], the [`Transcript`] of its host calls, chained to the
//!   host's previous receipt;
//! - a [`Validation`], signed by a verifier, says what running a receipt's call again gave; one
//!   that finds a lie travels as a [`FraudProof`] anyone can check.
//!
//! Records travel as [`Signed`] envelopes: canonical JSON, a domain-separated ed25519
//! signature verified strictly, and an identity that is the hash of the signed bytes. A valid
//! signature is not enough: [`rules`] bounds every field, and the registry checks receipts and
//! feedback against the records they refer to, keeping proof of any contradiction as
//! [`Misbehaviour`] against its signer. The [`Registry`] stores them in SQLite together with each agent's private key-value memory;
//! writes are committed in batched transactions, one committer at a time, and reads come from a
//! pool, so reads never wait for writes. [`reputation`] computes trust and agent scores from the
//! evidence the registry holds (signed requests, receipts, feedback).
//!
//! ```
//! use agora_registry::{ComponentRef, Hash, Manifest, ManifestLimits, SecretKey, Signed, AGENT_WORLD};
//!
//! let publisher = SecretKey::generate();
//! let manifest = Manifest {
//!     name: "ride-driver".into(),
//!     version: "1.0.0".into(),
//!     publisher: publisher.public(),
//!     component: ComponentRef { hash: Hash::of(b"component bytes"), size: 15 },
//!     world: AGENT_WORLD.into(),
//!     actions: vec!["quote".into()],
//!     capabilities: vec![],
//!     limits: ManifestLimits { max_fuel: 1_000_000, max_memory_bytes: 1 << 24, max_wall_ms: 1000, max_output_bytes: 1 << 16 },
//!     price_per_mfuel: 10,
//!     description: "quotes fares".into(),
//!     created_at: 0,
//!     models: vec![],
//!     egress: vec![],
//! };
//! let signed = Signed::sign(manifest, &publisher)?;
//! let received = Signed::<Manifest>::from_bytes(signed.as_bytes())?;
//! assert_eq!(received.hash(), signed.hash());
//! # Ok::<(), agora_registry::Error>(())
//! ```

pub mod egress;
mod error;
mod evidence;
mod hash;
mod identity;
mod manifest;
pub mod model;
mod nonces;
mod receipt;
pub mod reputation;
pub mod rules;
mod signed;
mod store;
pub mod transcript;
mod validation;

pub use error::Error;
pub use evidence::{
    CallRequest, Feedback, FeedbackError, MAX_FEEDBACK_TAG_BYTES, MAX_FEEDBACK_TAGS,
    MAX_REQUEST_TTL_MS, SignedFeedback, SignedRequest,
};
pub use hash::{Hash, ParseHashError};
pub use identity::{PublicKey, SecretKey};
pub use manifest::{AGENT_WORLD, ComponentRef, Manifest, ManifestLimits, SignedManifest};
pub use model::{
    ChatMessage, FinishReason, ModelAnswer, ModelDeclaration, ModelErrorKind, ModelParams,
    ModelUsage,
};
pub use receipt::{
    AgentRef, CallEnvironment, CallLimits, Input, Outcome, ParentCall, RECEIPT_SEQ_BLOCK,
    RECEIPT_V1_TAG, RECEIPT_V2_TAG, Receipt, ReceiptMessage, SignedReceipt, TrapCode, check_pair,
    request_hash,
};
pub use signed::{Record, Signed};
pub use store::{
    CALL_DATA_RETENTION_MS, CallData, Evidence, EvidenceCursor, Fork, HostRecord, Inserted,
    KvNamespace, KvQuota, MAX_FEEDBACK_PER_STRANGER, MAX_MANIFESTS_PER_STRANGER,
    MAX_PENDING_PER_KEY, MAX_RECEIPTS_PER_STRANGER, MAX_STRANGER_FEEDBACK, MAX_STRANGER_RECEIPTS,
    Misbehaviour, ReceiptCursor, ReceiptDurability, ReceiptPage, Registry, StrangerQuotas,
    StrangerUsage, WAL_SYNC_INTERVAL,
};
pub use transcript::{BlobRef, CallAnswer, HostCall, Transcript};
pub use validation::{Finding, FraudProof, MAX_FRAUD_PROOF_BYTES, SignedValidation, Validation};

#[cfg(test)]
mod tests;
