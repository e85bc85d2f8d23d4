use std::path::PathBuf;

use crate::identity::PublicKey;

/// Everything that can go wrong with signed records and the registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A public key that must not be trusted.
    #[error("invalid public key {key}: {reason}")]
    InvalidKey {
        /// The key as given (truncated).
        key: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A key file could not be read or written.
    #[error("key file {}: {source}", path.display())]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key file that others than its owner may read or write: the key must be treated as
    /// leaked, and is not used.
    #[error(
        "key file {} is accessible to others (mode {mode:03o}); a secret key must be readable only by its owner: chmod 600 it, or make a new key if others may have read it",
        path.display()
    )]
    KeyFileExposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file that does not hold a key.
    #[error("key file {} does not hold a hex-encoded ed25519 secret key", path.display())]
    MalformedKeyFile {
        /// The key file.
        path: PathBuf,
    },
    /// Bytes that do not parse as the record they claim to be.
    #[error("malformed {kind}: {reason}")]
    Malformed {
        /// The record type.
        kind: &'static str,
        /// What the parser said.
        reason: String,
    },
    /// A record whose signature may be fine but whose fields break the rules every host
    /// applies (see [`crate::rules`]).
    #[error("invalid {kind}: {reason}")]
    Invalid {
        /// The record type.
        kind: &'static str,
        /// Which field, and what is wrong with it.
        reason: String,
    },
    /// A record tagged as a different type or version.
    #[error("{kind} has domain tag `{found}`, expected `{expected}`")]
    WrongTag {
        /// The record type.
        kind: &'static str,
        /// The tag this type signs with.
        expected: &'static str,
        /// The tag found.
        found: String,
    },
    /// A signature that does not verify under the key the record names.
    #[error("{kind} signature does not verify under key {signer}")]
    BadSignature {
        /// The record type.
        kind: &'static str,
        /// The key the record claims signed it.
        signer: PublicKey,
    },
    /// A record encoded in other than its one canonical form.
    #[error("{kind} is not in canonical encoding")]
    NotCanonical {
        /// The record type.
        kind: &'static str,
    },
    /// An attempt to sign a record with a key other than the one it names.
    #[error("{kind} names signer {expected} but was to be signed by {found}")]
    WrongSigner {
        /// The record type.
        kind: &'static str,
        /// The key the record names.
        expected: PublicKey,
        /// The key offered.
        found: PublicKey,
    },
    /// A publisher tried to re-release a name and version with different code.
    #[error(
        "{name}@{version} is already released by {publisher} as manifest {existing}; releases are immutable, publish a new version"
    )]
    ReleaseConflict {
        /// Agent name.
        name: String,
        /// Version.
        version: String,
        /// The publisher.
        publisher: PublicKey,
        /// The manifest already released.
        existing: String,
    },
    /// No stored manifest matches an agent reference.
    #[error(
        "no agent `{reference}` in the registry from a publisher this host trusts (give a manifest hash, <publisher>/<name>[@<version>], or the name of a trusted publisher's agent)"
    )]
    UnknownAgent {
        /// The reference given.
        reference: String,
    },
    /// A name used by several publishers.
    #[error("agent name `{reference}` is used by {} publishers ({}); give a manifest hash instead", publishers.len(), publishers.iter().map(|p| p.short()).collect::<Vec<_>>().join(", "))]
    AmbiguousAgent {
        /// The reference given.
        reference: String,
        /// The publishers using it.
        publishers: Vec<PublicKey>,
    },
    /// A request addressed to another host.
    #[error("request is addressed to host {addressed}, not this host {host}")]
    WrongHost {
        /// The host the request names.
        addressed: PublicKey,
        /// This host.
        host: PublicKey,
    },
    /// A request past its expiry.
    #[error("request expired at {expired_at_ms} ms (now {now_ms} ms)")]
    RequestExpired {
        /// When it expired.
        expired_at_ms: u64,
        /// Now.
        now_ms: u64,
    },
    /// A request valid for too long.
    #[error("request must expire within {max_ms} ms")]
    RequestTooLongLived {
        /// The most allowed.
        max_ms: u64,
    },
    /// A request whose nonce was already used.
    #[error("request replayed: caller {caller} already used nonce {nonce}")]
    Replayed {
        /// The caller.
        caller: PublicKey,
        /// The nonce.
        nonce: String,
    },
    /// Feedback that does not count.
    #[error(transparent)]
    Feedback(#[from] crate::evidence::FeedbackError),
    /// Feedback about a receipt this registry does not have.
    #[error("no receipt {0} in the registry")]
    UnknownReceipt(crate::Hash),
    /// A second, different feedback record on one receipt.
    #[error("receipt {0} already has feedback; each receipt is rated once")]
    DuplicateFeedback(crate::Hash),
    /// A key has used up what this host keeps for it.
    #[error("quota for key {key}: {what}")]
    Quota {
        /// The key.
        key: PublicKey,
        /// What it has too much of.
        what: String,
    },
    /// An agent's persistent memory would exceed its quota.
    #[error("agent memory quota: {0}")]
    KvQuota(String),
    /// The database failed.
    #[error("registry database {}: {source}", path.display())]
    Database {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// A write could not be committed; nothing of it was stored.
    #[error("registry database {}: write failed: {reason}", path.display())]
    WriteFailed {
        /// The database file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another process signs this registry's host receipts in a way this one cannot share:
    /// one that signs ahead of committing (see [`ReceiptDurability::Pipelined`]) keeps the
    /// chain's head in its memory, so no other process may sign beside it.
    ///
    /// [`ReceiptDurability::Pipelined`]: crate::ReceiptDurability::Pipelined
    #[error(
        "registry database {}: another process signs receipts for it ({holder}); stop it, or call that host over HTTP instead",
        path.display()
    )]
    SignerBusy {
        /// The database file.
        path: PathBuf,
        /// Who holds it, as far as can be told.
        holder: &'static str,
    },
    /// The database holds a value no version of agora writes.
    #[error("registry database {} is corrupt: {what}", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// The database was written by a newer agora.
    #[error("registry database {} has schema version {found}; this agora supports up to {supported}", path.display())]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        found: usize,
        /// The newest this build knows.
        supported: usize,
    },
}
