//! The marketplace gossip topic: announcing releases and this host's evidence, receiving and
//! recording what peers announce, within a budget per neighbour.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agora_registry::{
    Inserted, ReceiptMessage, SignedFeedback, SignedManifest, SignedReceipt, SignedValidation,
};
use iroh_gossip::TopicId;
use iroh_gossip::api::GossipSender;

use super::MAX_MANIFEST_BYTES;
use crate::node::Node;

/// How often the host looks for releases published by other processes to announce.
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(2);

/// Expired requests that were never answered are pruned every this many announce intervals.
const PRUNE_EVERY_TICKS: u64 = 30;

/// Gossip message kind: a signed manifest follows.
const ANNOUNCE_MANIFEST: u8 = 1;

/// Gossip message kind: a signed receipt follows.
pub(super) const ANNOUNCE_RECEIPT: u8 = 2;

/// Gossip message kind: signed feedback follows.
pub(super) const ANNOUNCE_FEEDBACK: u8 = 3;

/// Gossip message kind: a signed validation follows (see [`super::audit`]).
pub(super) const ANNOUNCE_VALIDATION: u8 = 4;

/// The gossip topic every agora host joins to hear about agents.
pub fn marketplace_topic() -> TopicId {
    TopicId::from_bytes(*blake3::hash(b"agora/marketplace/v1").as_bytes())
}

/// Counts of gossip announcements received.
#[derive(Debug, Default)]
pub struct GossipStats {
    accepted: AtomicU64,
    dropped: AtomicU64,
    pub(super) over_quota: AtomicU64,
    pub(super) lagged: AtomicU64,
    pub(super) neighbours: AtomicU64,
}

impl GossipStats {
    /// Gossip neighbours this host has now.
    pub fn neighbours(&self) -> u64 {
        self.neighbours.load(Ordering::Relaxed)
    }

    /// Announcements that verified and added a manifest, receipt or feedback to the registry.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Announcements dropped: oversized, unknown kind, malformed, or failing verification.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Manifest announcements dropped unread because the neighbour that delivered them was
    /// over its budget.
    pub fn over_quota(&self) -> u64 {
        self.over_quota.load(Ordering::Relaxed)
    }

    /// Times the gossip layer dropped announcements because this host read them too slowly;
    /// each time, the neighbours are caught up on instead.
    pub fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }
}

impl GossipStats {
    pub(super) fn count(&self, recorded: Result<bool, String>, from: &iroh::EndpointId) {
        match recorded {
            Ok(true) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {}
            Err(reason) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(from = %from.fmt_short(), %reason, "dropped announcement");
            }
        }
    }
}

pub(super) fn announcement(manifest: &SignedManifest) -> bytes::Bytes {
    message(ANNOUNCE_MANIFEST, manifest.as_bytes())
}

/// The gossip message announcing what a re-execution found.
pub(super) fn validation_announcement(validation: &SignedValidation) -> bytes::Bytes {
    message(ANNOUNCE_VALIDATION, validation.as_bytes())
}

fn message(kind: u8, signed: &[u8]) -> bytes::Bytes {
    let mut message = Vec::with_capacity(1 + signed.len());
    message.push(kind);
    message.extend_from_slice(signed);
    message.into()
}

/// Announces releases that appear in the registry, including those published by another
/// process (`agora publish` while `agora host` runs), and passes on evidence: the receipts this
/// host signs and the feedback it accepts. What is known at start-up reaches neighbours through
/// the catch-up in [`super::listener::listen`] instead.
pub(super) async fn announce_new_releases(node: Node, sender: GossipSender) {
    // Releases known at start-up reach neighbours through the catch-up; this host's evidence is
    // passed on from the beginning (peers drop what they already have).
    let mut cursor = agora_registry::EvidenceCursor {
        manifests: node.registry().manifests_cursor().unwrap_or(0),
        ..Default::default()
    };
    let mut ticker = tokio::time::interval(ANNOUNCE_INTERVAL);
    let mut ticks = 0u64;
    loop {
        ticker.tick().await;
        ticks += 1;
        if ticks.is_multiple_of(PRUNE_EVERY_TICKS) {
            let node = node.clone();
            let pruned = tokio::task::spawn_blocking(move || {
                node.registry()
                    .prune_requests(agora_registry::rules::now_ms())
            })
            .await;
            if let Ok(Err(error)) = pruned {
                tracing::warn!(%error, "pruning expired requests");
            }
        }
        // Reading a tick's evidence can take a while behind a busy registry: off the executor,
        // which also runs the deadlines that stop guests.
        let reader = node.clone();
        let read = tokio::task::spawn_blocking(move || {
            reader
                .registry()
                .evidence_since(&reader.public_key(), cursor)
        })
        .await;
        let read = match read {
            Ok(read) => read.map_err(|e| e.to_string()),
            Err(join) => Err(join.to_string()),
        };
        let evidence = match read {
            Ok(evidence) => evidence,
            Err(error) => {
                tracing::warn!(%error, "reading what to announce");
                continue;
            }
        };
        let messages = evidence
            .manifests
            .iter()
            .map(announcement)
            .chain(evidence.receipts.iter().map(|(receipt, request)| {
                message(
                    ANNOUNCE_RECEIPT,
                    &ReceiptMessage::encode(receipt, request.as_ref()),
                )
            }))
            .chain(
                evidence
                    .feedback
                    .iter()
                    .map(|f| message(ANNOUNCE_FEEDBACK, f.as_bytes())),
            );
        for message in messages {
            if let Err(error) = sender.broadcast(message).await {
                tracing::warn!(%error, "announcing");
            }
        }
        cursor = evidence.cursor;
    }
}

/// Verifies gossiped receipts and feedback in a batch and stores what verifies in batched
/// transactions; one result per message: `Ok(false)` if it was already known.
pub(super) fn record_evidence(
    node: &Node,
    messages: &[iroh_gossip::api::Message],
) -> Vec<Result<bool, String>> {
    let mut results: Vec<Result<bool, String>> = vec![Ok(false); messages.len()];
    let of_kind = |kind: u8| -> (Vec<usize>, Vec<&[u8]>) {
        messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m.content.first() == Some(&kind))
            .map(|(i, m)| (i, &m.content[1..]))
            .unzip()
    };

    let (positions, bytes) = of_kind(ANNOUNCE_RECEIPT);
    let mut split = Vec::new();
    let mut split_at = Vec::new();
    for (position, bytes) in positions.into_iter().zip(bytes) {
        match ReceiptMessage::parse(bytes) {
            Ok(parsed) => {
                split.push(parsed);
                split_at.push(position);
            }
            Err(error) => results[position] = Err(error.to_string()),
        }
    }
    let receipts: Vec<&[u8]> = split.iter().map(|m| m.receipt).collect();
    let mut verified = Vec::new();
    let mut stored_at = Vec::new();
    for ((position, parsed), message) in split_at
        .into_iter()
        .zip(SignedReceipt::from_bytes_batch(&receipts))
        .zip(&split)
    {
        let request = message
            .request
            .map(agora_registry::SignedRequest::from_bytes)
            .transpose();
        match (parsed, request) {
            (Ok(receipt), Ok(request)) => {
                verified.push((receipt, request));
                stored_at.push(position);
            }
            (Err(error), _) | (_, Err(error)) => results[position] = Err(error.to_string()),
        }
    }
    if !verified.is_empty() {
        place(
            &mut results,
            stored_at,
            node.registry().insert_receipts(verified),
        );
    }

    // Feedback goes second: it may rate a receipt that arrived in the same batch.
    let (positions, bytes) = of_kind(ANNOUNCE_FEEDBACK);
    let mut verified = Vec::new();
    let mut stored_at = Vec::new();
    for (position, parsed) in positions
        .into_iter()
        .zip(SignedFeedback::from_bytes_batch(&bytes))
    {
        match parsed {
            Ok(feedback) => {
                verified.push(feedback);
                stored_at.push(position);
            }
            Err(error) => results[position] = Err(error.to_string()),
        }
    }
    if !verified.is_empty() {
        place(
            &mut results,
            stored_at,
            node.registry().insert_feedback_batch(verified),
        );
    }
    results
}

/// Puts each stored record's answer (`Ok(true)` if it was new) at its message's position; a batch
/// that failed as a whole fails each of its records.
fn place(
    results: &mut [Result<bool, String>],
    stored_at: Vec<usize>,
    answers: Result<Vec<Result<Inserted, agora_registry::Error>>, agora_registry::Error>,
) {
    match answers {
        Ok(answers) => {
            for (position, answer) in stored_at.into_iter().zip(answers) {
                results[position] = match answer {
                    Ok(Inserted::New) => Ok(true),
                    Ok(Inserted::AlreadyPresent | Inserted::Pending) => Ok(false),
                    Err(error) => Err(error.to_string()),
                };
            }
        }
        Err(error) => {
            for position in stored_at {
                results[position] = Err(error.to_string());
            }
        }
    }
}

/// Verifies a validation another verifier announced and keeps it; one that finds fraud is
/// queued to be checked by running the call here (see [`super::audit`]): it is not believed.
pub(super) async fn record_validation(
    node: &Node,
    bytes: &[u8],
    reported: &super::audit::ReportedFrauds,
    from: iroh::EndpointId,
) -> Result<bool, String> {
    let validation = SignedValidation::from_bytes(bytes).map_err(|e| e.to_string())?;
    validation
        .body()
        .check(agora_registry::rules::now_ms())
        .map_err(|e| e.to_string())?;
    if validation.body().finding.is_fraud() {
        // Kept once this host has reached the same finding itself.
        reported.report(validation, from);
        return Ok(false);
    }
    let node = node.clone();
    match tokio::task::spawn_blocking(move || node.registry().insert_validation(&validation)).await
    {
        Ok(Ok(Inserted::New)) => Ok(true),
        Ok(Ok(_)) => Ok(false),
        Ok(Err(error)) => Err(error.to_string()),
        Err(error) => Err(error.to_string()),
    }
}

/// Verifies a manifest announcement and records it; `Ok(false)` if it was already known.
pub(super) async fn record_manifest(node: &Node, message: &[u8]) -> Result<bool, String> {
    let bytes = match message.split_first() {
        Some((&ANNOUNCE_MANIFEST, bytes)) => bytes,
        _ => return Err("unknown message kind".into()),
    };
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err("oversized manifest".into());
    }
    let manifest = SignedManifest::from_bytes(bytes).map_err(|e| e.to_string())?;
    // The insert waits for the registry's writer: keep it off the async executor.
    let inserted = {
        let (node, manifest) = (node.clone(), manifest.clone());
        tokio::task::spawn_blocking(move || node.registry().insert_manifest(&manifest))
            .await
            .map_err(|e| e.to_string())?
    };
    match inserted {
        Ok(Inserted::AlreadyPresent | Inserted::Pending) => Ok(false),
        Ok(Inserted::New) => {
            // Keep the manifest blob too, so this host can serve it to whoever asks.
            node.blobs()
                .put(manifest.as_bytes().to_vec())
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(agent = %manifest.body().name, manifest = %manifest.hash(), "learned of agent");
            Ok(true)
        }
        Err(error) => Err(error.to_string()),
    }
}
