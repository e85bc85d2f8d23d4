//! The marketplace gossip topic: announcing releases and this host's evidence, receiving and
//! recording what peers announce, within a budget per neighbour.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agora_registry::{
    Inserted, ReceiptMessage, SignedFeedback, SignedManifest, SignedReceipt, SignedValidation,
};
use iroh::EndpointAddr;
use iroh_gossip::TopicId;
use iroh_gossip::api::{Event, GossipSender};
use n0_future::StreamExt;

use super::{CatchUpState, MAX_MANIFEST_BYTES};
use crate::node::Node;

/// Manifests one gossip neighbour may deliver in a burst, and per second after it. Beyond
/// that they are dropped and counted ([`GossipStats::over_quota`]): a peer relaying a flood
/// of manifests from fresh keys cannot fill this host's registry.
const MANIFESTS_PER_PEER_BURST: f64 = 256.0;

const MANIFESTS_PER_PEER_PER_SECOND: f64 = 2.0;

/// Receipts and feedback one gossip neighbour may deliver in a burst, and per second after it.
/// Beyond that they are dropped unread and counted ([`GossipStats::over_quota`]), and the
/// neighbour is owed a catch-up ([`OWED_CATCH_UP_INTERVAL`]): what an honest neighbour relays
/// faster than this still arrives, later, through the bounded catch-up, while a neighbour
/// relaying a flood from fresh keys is held to this rate.
pub const EVIDENCE_PER_PEER_BURST: f64 = 1024.0;

/// See [`EVIDENCE_PER_PEER_BURST`].
pub const EVIDENCE_PER_PEER_PER_SECOND: f64 = 256.0;

/// At most this often, a neighbour whose evidence was dropped over its budget is caught up on.
pub const OWED_CATCH_UP_INTERVAL: Duration = Duration::from_secs(5);

/// How often the host looks for releases published by other processes to announce.
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(2);

/// Expired requests that were never answered are pruned every this many announce intervals.
const PRUNE_EVERY_TICKS: u64 = 30;

/// Gossip message kind: a signed manifest follows.
const ANNOUNCE_MANIFEST: u8 = 1;

/// Gossip message kind: a signed receipt follows.
const ANNOUNCE_RECEIPT: u8 = 2;

/// Gossip message kind: signed feedback follows.
const ANNOUNCE_FEEDBACK: u8 = 3;

/// Gossip message kind: a signed validation follows (see [`super::audit`]).
const ANNOUNCE_VALIDATION: u8 = 4;

/// Most announcements taken off the gossip stream and recorded together: receipts and feedback
/// that arrive together are verified in one batch and stored in one transaction.
const GOSSIP_BATCH: usize = 512;

/// The gossip topic every agora host joins to hear about agents.
pub fn marketplace_topic() -> TopicId {
    TopicId::from_bytes(*blake3::hash(b"agora/marketplace/v1").as_bytes())
}

/// Counts of gossip announcements received.
#[derive(Debug, Default)]
pub struct GossipStats {
    accepted: AtomicU64,
    dropped: AtomicU64,
    over_quota: AtomicU64,
    neighbours: AtomicU64,
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
}

impl GossipStats {
    fn count(&self, recorded: Result<bool, String>, from: &iroh::EndpointId) {
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
/// the catch-up in [`listen`] instead.
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

/// Records verified announcements, and catches up on each new neighbour's evidence.
pub(super) async fn listen(
    node: Node,
    mut receiver: iroh_gossip::api::GossipReceiver,
    stats: Arc<GossipStats>,
    catch_up: Arc<CatchUpState>,
    book: Arc<super::peers::PeerBook>,
    reported: super::audit::ReportedFrauds,
) {
    let mut budgets = PeerBudgets::new(MANIFESTS_PER_PEER_BURST, MANIFESTS_PER_PEER_PER_SECOND);
    let mut evidence_budgets =
        PeerBudgets::new(EVIDENCE_PER_PEER_BURST, EVIDENCE_PER_PEER_PER_SECOND);
    let mut owed = OwedCatchUps::default();
    let mut owed_tick = tokio::time::interval(OWED_CATCH_UP_INTERVAL);
    loop {
        let first = tokio::select! {
            next = receiver.next() => match next {
                Some(event) => event,
                None => break,
            },
            _ = owed_tick.tick() => {
                owed.start_due(&catch_up);
                continue;
            }
        };
        // Take whatever else has already arrived, so that a burst of evidence is verified and
        // stored as one batch. A zero timeout polls the stream once without waiting.
        let mut events = vec![first];
        while events.len() < GOSSIP_BATCH {
            match tokio::time::timeout(Duration::ZERO, receiver.next()).await {
                Ok(Some(event)) => events.push(event),
                Ok(None) | Err(_) => break,
            }
        }
        let mut evidence = Vec::new();
        let mut closed = false;
        for event in events {
            match event {
                Ok(Event::Received(message)) => match message.content.first() {
                    Some(&ANNOUNCE_VALIDATION) => {
                        if !evidence_budgets.take(message.delivered_from) {
                            stats.over_quota.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let recorded = record_validation(
                            &node,
                            &message.content[1..],
                            &reported,
                            message.delivered_from,
                        )
                        .await;
                        stats.count(recorded, &message.delivered_from);
                    }
                    Some(&ANNOUNCE_RECEIPT | &ANNOUNCE_FEEDBACK) => {
                        if evidence_budgets.take(message.delivered_from) {
                            evidence.push(message);
                        } else {
                            stats.over_quota.fetch_add(1, Ordering::Relaxed);
                            owed.owe(message.delivered_from);
                        }
                    }
                    _ => {
                        if !budgets.take(message.delivered_from) {
                            stats.over_quota.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let recorded = record_manifest(&node, &message.content).await;
                        stats.count(recorded, &message.delivered_from);
                    }
                },
                Ok(Event::NeighborUp(peer)) => {
                    // Catching up is pulled by each side from the other, so what a neighbour
                    // learns of this host's catalogue goes to that neighbour only, in bounded
                    // rounds, instead of a broadcast to every neighbour.
                    tracing::debug!(peer = %peer.fmt_short(), "gossip neighbour up; catching up on its evidence");
                    stats.neighbours.fetch_add(1, Ordering::Relaxed);
                    let (catch_up, book) = (catch_up.clone(), book.clone());
                    tokio::spawn(async move {
                        // Remembered where it was reached, for the next start.
                        if let Some(info) = catch_up.endpoint.remote_info(peer).await {
                            let addrs = info.into_addrs().map(|addr| addr.into_addr());
                            let addr = EndpointAddr::from_parts(peer, addrs);
                            // A file written and synced: off the executor.
                            let _ = tokio::task::spawn_blocking(move || book.remember(&addr)).await;
                        }
                        catch_up.with(EndpointAddr::new(peer)).await
                    });
                }
                Ok(Event::NeighborDown(peer)) => {
                    tracing::debug!(peer = %peer.fmt_short(), "gossip neighbour down");
                    let _ =
                        stats
                            .neighbours
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                n.checked_sub(1)
                            });
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "marketplace gossip closed");
                    closed = true;
                    break;
                }
            }
        }
        if !evidence.is_empty() {
            let node = node.clone();
            let recorded = tokio::task::spawn_blocking(move || {
                let results = record_evidence(&node, &evidence);
                evidence
                    .into_iter()
                    .map(|m| m.delivered_from)
                    .zip(results)
                    .collect::<Vec<_>>()
            })
            .await;
            match recorded {
                Ok(recorded) => {
                    for (from, result) in recorded {
                        stats.count(result, &from);
                    }
                }
                Err(error) => tracing::error!(%error, "recording gossiped evidence"),
            }
        }
        owed.start_due(&catch_up);
        if closed {
            break;
        }
    }
}

/// Neighbours owed a catch-up for evidence dropped over their budget, at most one catch-up per
/// [`OWED_CATCH_UP_INTERVAL`] each, and only when no other catch-up runs or waits.
#[derive(Default)]
struct OwedCatchUps(std::collections::HashMap<iroh::EndpointId, Owed>);

struct Owed {
    due: bool,
    last: Option<std::time::Instant>,
}

impl OwedCatchUps {
    fn owe(&mut self, peer: iroh::EndpointId) {
        // Bounded like the budgets: neighbours are few, and a full table only delays.
        if self.0.len() < 1024 || self.0.contains_key(&peer) {
            self.0
                .entry(peer)
                .or_insert(Owed {
                    due: true,
                    last: None,
                })
                .due = true;
        }
    }

    /// Starts the catch-ups that are due and whose interval has passed; forgets neighbours
    /// owed nothing whose interval has passed.
    fn start_due(&mut self, catch_up: &Arc<CatchUpState>) {
        let now = std::time::Instant::now();
        self.0.retain(|peer, owed| {
            let waited = owed
                .last
                .is_none_or(|at| now.duration_since(at) >= OWED_CATCH_UP_INTERVAL);
            if !waited {
                return true;
            }
            if !owed.due {
                return false;
            }
            // Busy with another catch-up: still owed, tried at the next batch or tick.
            if catch_up.start_if_idle(EndpointAddr::new(*peer)) {
                owed.due = false;
                owed.last = Some(now);
            }
            true
        });
    }
}

/// A token bucket of announcements per gossip neighbour.
struct PeerBudgets {
    burst: f64,
    per_second: f64,
    buckets: std::collections::HashMap<iroh::EndpointId, (f64, std::time::Instant)>,
}

impl PeerBudgets {
    fn new(burst: f64, per_second: f64) -> PeerBudgets {
        PeerBudgets {
            burst,
            per_second,
            buckets: Default::default(),
        }
    }

    /// Takes one announcement from `peer`'s budget; false if it has none left.
    fn take(&mut self, peer: iroh::EndpointId) -> bool {
        let now = std::time::Instant::now();
        let (burst, per_second) = (self.burst, self.per_second);
        // Neighbours come and go; forget the ones whose budget has filled up again.
        if self.buckets.len() > 1024 {
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + at.elapsed().as_secs_f64() * per_second < burst
            });
        }
        let (tokens, at) = self.buckets.entry(peer).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_second).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Verifies gossiped receipts and feedback in a batch and stores what verifies in batched
/// transactions; one result per message: `Ok(false)` if it was already known.
fn record_evidence(
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
async fn record_validation(
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
async fn record_manifest(node: &Node, message: &[u8]) -> Result<bool, String> {
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
