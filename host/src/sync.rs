//! Evidence catch-up between hosts (anti-entropy by cursor), over its own ALPN.
//!
//! Gossip only carries what is new while a host listens, so a host that joins late, or was
//! offline, would never hold the evidence that came before. A host therefore asks each peer it
//! can reach for everything the peer has stored after a cursor — manifests, every host's
//! receipts with their callers' signed requests, feedback, validations — in bounded rounds, and stores it
//! through the same checks as evidence from anywhere else. The cursor is the peer's own row
//! position, so a round is one indexed read on the peer; the asking host keeps it for the next
//! round.
//!
//! The exchange on one bidirectional stream: the asker sends the cursor (manifests, receipts,
//! feedback, validations: four big-endian `i64`) and a limit per kind (`i64`); the peer answers
//! with its new cursor (four `i64`) followed by frames `kind: u8 ‖ length: u32 ‖ bytes` (1: a
//! signed manifest, 2: a receipt message, 3: signed feedback, 4: a signed validation). A
//! validation that finds fraud is not believed: it is handed to the caller, to be checked by
//! running the call ([`catch_up`]).
//!
//! Version 1 ([`ALPN_V1`]) is the same without validations (three numbers in the cursor); it
//! is still served to peers that ask in it.

use std::time::Duration;

use agora_registry::{
    EvidenceCursor, ReceiptMessage, SignedFeedback, SignedManifest, SignedReceipt, SignedRequest,
    SignedValidation,
};
use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler};

use crate::node::Node;

/// The ALPN of the evidence catch-up protocol.
pub const ALPN: &[u8] = b"agora/evidence/2";

/// The ALPN of the protocol's first version, without validations; served, never asked in.
pub const ALPN_V1: &[u8] = b"agora/evidence/1";

/// A version of the catch-up protocol: what a cursor holds and which records travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// Manifests, receipts and feedback ([`ALPN_V1`]).
    V1,
    /// Those and validations ([`ALPN`]).
    V2,
}

impl Version {
    /// The version a connection's ALPN names.
    pub fn of_alpn(alpn: &[u8]) -> Version {
        if alpn == ALPN_V1 {
            Version::V1
        } else {
            Version::V2
        }
    }

    /// Numbers in a cursor.
    fn cursor_len(self) -> usize {
        match self {
            Version::V1 => 3,
            Version::V2 => 4,
        }
    }

    /// Bytes in a question: the cursor and the limit.
    pub fn ask_len(self) -> usize {
        8 * (self.cursor_len() + 1)
    }

    fn cursor_numbers(self, cursor: &EvidenceCursor) -> Vec<i64> {
        let all = [
            cursor.manifests,
            cursor.receipts,
            cursor.feedback,
            cursor.validations,
        ];
        all[..self.cursor_len()].to_vec()
    }

    fn cursor_of(self, numbers: &[i64]) -> EvidenceCursor {
        let at = |i: usize| numbers.get(i).copied().unwrap_or_default();
        EvidenceCursor {
            manifests: at(0),
            receipts: at(1),
            feedback: at(2),
            validations: if self == Version::V2 { at(3) } else { 0 },
            ..EvidenceCursor::default()
        }
    }
}

/// Most records of each kind in one round.
const ROUND_LIMIT: i64 = 256;
/// Most rounds in one catch-up with one peer: at most 256 × 256 records of each kind.
const MAX_ROUNDS: usize = 256;
/// Largest answer accepted: 256 manifests of 64 KiB each, and the receipts and feedback.
const MAX_ANSWER_BYTES: usize = 24 << 20;
/// How long one round may take.
const ROUND_TIMEOUT: Duration = Duration::from_secs(20);

const FRAME_MANIFEST: u8 = 1;
const FRAME_RECEIPT: u8 = 2;
const FRAME_FEEDBACK: u8 = 3;
const FRAME_VALIDATION: u8 = 4;

/// Serves this host's evidence to peers catching up.
#[derive(Debug, Clone)]
pub(crate) struct EvidenceProtocol {
    pub node: Node,
}

impl ProtocolHandler for EvidenceProtocol {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let version = Version::of_alpn(connection.alpn());
        // A peer may ask round after round on one connection, up to a whole catch-up's worth.
        let mut rounds = 0;
        while let Ok((mut send, mut recv)) = connection.accept_bi().await {
            rounds += 1;
            if rounds > MAX_ROUNDS {
                connection.close(3u32.into(), b"too many rounds");
                return Ok(());
            }
            let ask = recv
                .read_to_end(version.ask_len())
                .await
                .map_err(AcceptError::from_err)?;
            let Some((after, limit)) = parse_ask(version, &ask) else {
                connection.close(1u32.into(), b"malformed request");
                return Ok(());
            };
            let node = self.node.clone();
            let answer = tokio::task::spawn_blocking(move || answer(&node, version, after, limit))
                .await
                .map_err(AcceptError::from_err)?;
            let answer = match answer {
                Ok(answer) => answer,
                Err(error) => {
                    tracing::warn!(%error, "reading evidence for a peer");
                    connection.close(2u32.into(), b"internal error");
                    return Ok(());
                }
            };
            send.write_all(&answer)
                .await
                .map_err(AcceptError::from_err)?;
            send.finish().map_err(AcceptError::from_err)?;
        }
        Ok(())
    }
}

/// Decodes a peer's question in `version`: its cursor and how many records of each kind it
/// wants. `None` for anything but exactly [`Version::ask_len`] bytes. Public so that it can be
/// fuzzed.
pub fn parse_ask(version: Version, ask: &[u8]) -> Option<(EvidenceCursor, i64)> {
    if ask.len() != version.ask_len() {
        return None;
    }
    let numbers: Vec<i64> = ask
        .chunks_exact(8)
        .map(|c| i64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    let (limit, cursor) = numbers.split_last()?;
    Some((version.cursor_of(cursor), *limit))
}

fn answer(
    node: &Node,
    version: Version,
    after: EvidenceCursor,
    limit: i64,
) -> Result<Vec<u8>, agora_registry::Error> {
    let evidence = node
        .registry()
        // A negative limit is no limit at all to SQLite; the registry clamps too, this keeps the
        // round bound visible where the peer's number arrives.
        .evidence_after(None, after, limit.clamp(1, ROUND_LIMIT))?;
    let mut out = Vec::new();
    for n in version.cursor_numbers(&evidence.cursor) {
        out.extend_from_slice(&n.to_be_bytes());
    }
    let mut frame = |kind: u8, bytes: &[u8]| {
        out.push(kind);
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    for manifest in &evidence.manifests {
        frame(FRAME_MANIFEST, manifest.as_bytes());
    }
    for (receipt, request) in &evidence.receipts {
        frame(
            FRAME_RECEIPT,
            &ReceiptMessage::encode(receipt, request.as_ref()),
        );
    }
    for feedback in &evidence.feedback {
        frame(FRAME_FEEDBACK, feedback.as_bytes());
    }
    if version == Version::V2 {
        for validation in &evidence.validations {
            frame(FRAME_VALIDATION, validation.as_bytes());
        }
    }
    Ok(out)
}

/// What one catch-up brought.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CatchUp {
    /// Rounds asked.
    pub rounds: usize,
    /// Records the peer sent.
    pub received: usize,
    /// Records stored as new (or kept waiting for what they refer to).
    pub stored: usize,
    /// Records refused (malformed, badly signed, breaking the rules).
    pub refused: usize,
    /// Validations finding fraud, handed on to be checked by running the call.
    pub reported: usize,
    /// Whether validations finding fraud were left for a later catch-up because the checker
    /// had no room for them: the cursor does not move past them.
    pub deferred: bool,
}

/// Asks the peer on `connection` for everything after `cursor`, round after round until it has
/// nothing more (or [`MAX_ROUNDS`]), and stores it; each validation that finds fraud goes to
/// `report` instead, unbelieved. When `report` refuses one (the checker is full), the catch-up
/// stops with its validations cursor before that round, so a later catch-up brings them again.
/// Returns what it brought and the cursor to continue from next time.
pub(crate) async fn catch_up(
    node: &Node,
    connection: &Connection,
    mut cursor: EvidenceCursor,
    report: impl Fn(SignedValidation) -> bool,
) -> Result<(CatchUp, EvidenceCursor), String> {
    let mut total = CatchUp::default();
    for _ in 0..MAX_ROUNDS {
        let answer = tokio::time::timeout(ROUND_TIMEOUT, ask(connection, cursor))
            .await
            .map_err(|_| {
                format!(
                    "the peer did not answer within {} s",
                    ROUND_TIMEOUT.as_secs()
                )
            })??;
        let (next, frames) = parse_answer(Version::V2, &answer)?;
        total.rounds += 1;
        if frames.is_empty() {
            break;
        }
        total.received += frames.len();
        let node = node.clone();
        let stored = tokio::task::spawn_blocking(move || store(&node, frames))
            .await
            .map_err(|e| e.to_string())?;
        total.stored += stored.stored;
        total.refused += stored.refused;
        for fraud in stored.frauds {
            if !report(fraud) {
                total.deferred = true;
                break;
            }
            total.reported += 1;
        }
        if total.deferred {
            // Everything else this round brought is stored; its frauds, and the validations
            // after them, are asked for again.
            let validations = cursor.validations;
            cursor = next;
            cursor.validations = validations;
            break;
        }
        if next == cursor {
            break;
        }
        cursor = next;
    }
    Ok((total, cursor))
}

async fn ask(connection: &Connection, cursor: EvidenceCursor) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = connection
        .open_bi()
        .await
        .map_err(|e| format!("opening a stream: {e}"))?;
    let mut ask = Vec::with_capacity(Version::V2.ask_len());
    for n in Version::V2.cursor_numbers(&cursor) {
        ask.extend_from_slice(&n.to_be_bytes());
    }
    ask.extend_from_slice(&ROUND_LIMIT.to_be_bytes());
    send.write_all(&ask)
        .await
        .map_err(|e| format!("asking: {e}"))?;
    send.finish().map_err(|e| format!("asking: {e}"))?;
    recv.read_to_end(MAX_ANSWER_BYTES)
        .await
        .map_err(|e| format!("reading the answer: {e}"))
}

/// Records as they travel in an answer: a kind byte and the record's bytes.
pub type Frames = Vec<(u8, Vec<u8>)>;

/// Decodes a peer's answer in `version`: its new cursor and the frames after it, not yet
/// verified. Public so that it can be fuzzed.
pub fn parse_answer(version: Version, answer: &[u8]) -> Result<(EvidenceCursor, Frames), String> {
    let malformed = || "malformed answer".to_owned();
    let cursor_bytes = 8 * version.cursor_len();
    let numbers: Vec<i64> = answer
        .get(..cursor_bytes)
        .ok_or_else(malformed)?
        .chunks_exact(8)
        .map(|c| i64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    let cursor = version.cursor_of(&numbers);
    let mut frames = Vec::new();
    let mut rest = answer.get(cursor_bytes..).ok_or_else(malformed)?;
    while let Some((&kind, after)) = rest.split_first() {
        let len = after.get(..4).ok_or_else(malformed)?;
        let len = u32::from_be_bytes(len.try_into().map_err(|_| malformed())?) as usize;
        let bytes = after.get(4..4 + len).ok_or_else(malformed)?;
        frames.push((kind, bytes.to_vec()));
        rest = &after[4 + len..];
    }
    Ok((cursor, frames))
}

/// What [`store`] made of one round's frames.
struct Stored {
    stored: usize,
    refused: usize,
    /// Validations finding fraud, which meet the rules but are not stored: not yet believed.
    frauds: Vec<SignedValidation>,
}

/// Verifies and stores frames: manifests first, then receipts, then feedback, then
/// validations, so that what refers to something sent in the same round finds it.
fn store(node: &Node, frames: Frames) -> Stored {
    let (mut stored, mut refused) = (0, 0);
    let mut count = |result: Result<agora_registry::Inserted, agora_registry::Error>| match result {
        Ok(agora_registry::Inserted::AlreadyPresent) => {}
        Ok(_) => stored += 1,
        Err(error) => {
            tracing::debug!(%error, "refused evidence from a peer");
            refused += 1;
        }
    };
    let of = |kind: u8| frames.iter().filter(move |(k, _)| *k == kind);
    for (_, bytes) in of(FRAME_MANIFEST) {
        count(SignedManifest::from_bytes(bytes).and_then(|m| node.registry().insert_manifest(&m)));
    }
    let mut receipts: Vec<(SignedReceipt, Option<SignedRequest>)> = Vec::new();
    for (_, bytes) in of(FRAME_RECEIPT) {
        match ReceiptMessage::parse(bytes).and_then(|m| m.verify()) {
            Ok(pair) => receipts.push(pair),
            Err(error) => count(Err(error)),
        }
    }
    match node.registry().insert_receipts(receipts) {
        Ok(answers) => answers.into_iter().for_each(&mut count),
        Err(error) => tracing::warn!(%error, "storing receipts from a peer"),
    }
    let mut feedback = Vec::new();
    for (_, bytes) in of(FRAME_FEEDBACK) {
        match SignedFeedback::from_bytes(bytes) {
            Ok(record) => feedback.push(record),
            Err(error) => count(Err(error)),
        }
    }
    match node.registry().insert_feedback_batch(feedback) {
        Ok(answers) => answers.into_iter().for_each(&mut count),
        Err(error) => tracing::warn!(%error, "storing feedback from a peer"),
    }
    let mut frauds = Vec::new();
    for (_, bytes) in of(FRAME_VALIDATION) {
        let validation = SignedValidation::from_bytes(bytes).and_then(|validation| {
            validation.body().check(agora_registry::rules::now_ms())?;
            Ok(validation)
        });
        match validation {
            Ok(validation) if validation.body().finding.is_fraud() => {
                // One this host has already proven needs no second check.
                let body = validation.body();
                let known = node.registry().fraud_proven(&body.host, &body.receipt);
                if !matches!(known, Ok(true)) {
                    frauds.push(validation);
                }
            }
            Ok(validation) => count(node.registry().insert_validation(&validation)),
            Err(error) => count(Err(error)),
        }
    }
    for (kind, _) in &frames {
        if ![
            FRAME_MANIFEST,
            FRAME_RECEIPT,
            FRAME_FEEDBACK,
            FRAME_VALIDATION,
        ]
        .contains(kind)
        {
            refused += 1;
        }
    }
    Stored {
        stored,
        refused,
        frauds,
    }
}
