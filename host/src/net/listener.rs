//! The receiving side of the marketplace gossip: one subscription read in batches, each
//! neighbour held to a budget, evidence dropped over budget or missed pulled back by catch-up.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use iroh::EndpointAddr;
use iroh_gossip::Gossip;
use iroh_gossip::api::{ApiError, Event, GossipReceiver, GossipSender};
use n0_future::{Stream, StreamExt};

use super::CatchUpState;
use super::gossip::{
    ANNOUNCE_FEEDBACK, ANNOUNCE_RECEIPT, ANNOUNCE_VALIDATION, GossipStats, marketplace_topic,
    record_evidence, record_manifest, record_validation,
};
use super::peers::PeerBook;
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

/// Most announcements taken off the gossip stream and recorded together: receipts and feedback
/// that arrive together are verified in one batch and stored in one transaction.
const GOSSIP_BATCH: usize = 512;

/// How long the listener waits before trying again to subscribe after its subscription ended
/// and the gossip actor refused a new one.
const RESUBSCRIBE_INTERVAL: Duration = Duration::from_secs(1);

/// Records verified announcements, and catches up on each new neighbour's evidence. Runs until
/// aborted: when the subscription ends, it subscribes again (see [`Subscription`]).
pub(super) async fn listen(
    node: Node,
    mut subscription: Subscription,
    stats: Arc<GossipStats>,
    catch_up: Arc<CatchUpState>,
    reported: super::audit::ReportedFrauds,
) {
    let mut budgets = PeerBudgets::new(MANIFESTS_PER_PEER_BURST, MANIFESTS_PER_PEER_PER_SECOND);
    let mut evidence_budgets =
        PeerBudgets::new(EVIDENCE_PER_PEER_BURST, EVIDENCE_PER_PEER_PER_SECOND);
    let mut owed = OwedCatchUps::default();
    let mut owed_tick = tokio::time::interval(OWED_CATCH_UP_INTERVAL);
    loop {
        let first = tokio::select! {
            next = subscription.receiver.next() => next,
            _ = owed_tick.tick() => {
                owed.start_due(&catch_up);
                continue;
            }
        };
        let Batch { events, ended } = take_batch(&mut subscription.receiver, first).await;
        let mut evidence = Vec::new();
        for event in events {
            match event {
                Event::Received(message) => match message.content.first() {
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
                Event::NeighborUp(peer) => {
                    // Catching up is pulled by each side from the other, so what a neighbour
                    // learns of this host's catalogue goes to that neighbour only, in bounded
                    // rounds, instead of a broadcast to every neighbour.
                    tracing::debug!(peer = %peer.fmt_short(), "gossip neighbour up; catching up on its evidence");
                    stats.neighbours.fetch_add(1, Ordering::Relaxed);
                    let (catch_up, book) = (catch_up.clone(), subscription.book.clone());
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
                Event::NeighborDown(peer) => {
                    tracing::debug!(peer = %peer.fmt_short(), "gossip neighbour down");
                    let _ =
                        stats
                            .neighbours
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                n.checked_sub(1)
                            });
                }
                Event::Lagged => {
                    stats.lagged.fetch_add(1, Ordering::Relaxed);
                    // Announcements were dropped before this host read them: what they carried
                    // is pulled from the neighbours instead.
                    tracing::warn!(
                        "marketplace gossip outran this host; catching up on neighbours"
                    );
                    for peer in subscription.receiver.neighbors() {
                        owed.owe(peer);
                    }
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
        if let Some(reason) = ended {
            tracing::warn!(%reason, "marketplace gossip subscription ended; subscribing again");
            // The new subscription announces every current neighbour again.
            stats.neighbours.store(0, Ordering::Relaxed);
            subscription.renew().await;
            // Whatever was announced while nobody listened is pulled from the peers instead.
            for peer in subscription.book.addrs() {
                owed.owe(peer.id);
            }
        }
        owed.start_due(&catch_up);
    }
}

/// This host's subscription to the marketplace topic.
///
/// A gossip subscription can end while the host runs (iroh-gossip closes a subscriber that
/// falls too far behind, and its stream must not be polled after it ended); the listener then
/// opens a new one, bootstrapped from the peers it remembers, instead of going deaf.
pub(super) struct Subscription {
    gossip: Gossip,
    receiver: GossipReceiver,
    book: Arc<PeerBook>,
}

impl Subscription {
    /// Subscribes to the marketplace topic, joining `bootstrap`; returns the subscription and
    /// the sender to announce on.
    pub(super) async fn open(
        gossip: Gossip,
        bootstrap: Vec<iroh::EndpointId>,
        book: Arc<PeerBook>,
    ) -> Result<(Subscription, GossipSender), ApiError> {
        let (sender, receiver) = gossip
            .subscribe(marketplace_topic(), bootstrap)
            .await?
            .split();
        let subscription = Subscription {
            gossip,
            receiver,
            book,
        };
        Ok((subscription, sender))
    }

    /// Replaces the receiver with a new subscription, trying again every
    /// [`RESUBSCRIBE_INTERVAL`] until the gossip actor takes it (it only refuses while it shuts
    /// down, and then the listener is aborted).
    async fn renew(&mut self) {
        loop {
            let bootstrap = self.book.addrs().iter().map(|peer| peer.id).collect();
            match self.gossip.subscribe(marketplace_topic(), bootstrap).await {
                // The topic's other sender (the host's announcements) keeps it open; this
                // subscription's own sender is not needed.
                Ok(topic) => {
                    self.receiver = topic.split().1;
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "subscribing to the marketplace gossip again");
                    tokio::time::sleep(RESUBSCRIBE_INTERVAL).await;
                }
            }
        }
    }
}

/// Events taken off the gossip stream together, and why the stream ended if it did.
struct Batch {
    events: Vec<Event>,
    ended: Option<String>,
}

/// Takes `first` and whatever else has already arrived (at most [`GOSSIP_BATCH`]), so that a
/// burst of evidence is verified and stored as one batch. A zero timeout polls the stream once
/// without waiting. Once the stream has ended (`None`) or failed, it is not polled again, and
/// the batch says why, for the caller to subscribe again.
async fn take_batch<S, E>(stream: &mut S, first: Option<Result<Event, E>>) -> Batch
where
    S: Stream<Item = Result<Event, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut events = Vec::new();
    let mut next = first;
    loop {
        let ended = match next {
            Some(Ok(event)) => {
                events.push(event);
                None
            }
            Some(Err(error)) => Some(error.to_string()),
            None => Some("the gossip actor closed it".to_owned()),
        };
        if ended.is_some() || events.len() >= GOSSIP_BATCH {
            return Batch { events, ended };
        }
        match tokio::time::timeout(Duration::ZERO, stream.next()).await {
            Ok(item) => next = item,
            Err(_) => return Batch { events, ended },
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

#[cfg(test)]
mod tests {
    use n0_future::stream;

    use super::*;

    fn neighbour(n: u8) -> Event {
        Event::NeighborUp(iroh::SecretKey::from_bytes(&[n; 32]).public())
    }

    /// A stream like a gossip receiver's: it panics if polled after it has ended.
    fn ending_after(events: Vec<Event>) -> impl Stream<Item = Result<Event, String>> + Unpin {
        Box::pin(stream::unfold(
            events.into_iter(),
            |mut events| async move { events.next().map(|event| (Ok(event), events)) },
        ))
    }

    #[tokio::test]
    async fn a_subscription_that_ends_mid_batch_is_reported_ended_with_what_came_before() {
        let mut receiver = ending_after(vec![neighbour(1), neighbour(2), neighbour(3)]);
        let first = receiver.next().await;
        let batch = take_batch(&mut receiver, first).await;
        assert_eq!(batch.events, vec![neighbour(1), neighbour(2), neighbour(3)]);
        assert_eq!(batch.ended.as_deref(), Some("the gossip actor closed it"));
    }

    #[tokio::test]
    async fn a_subscription_that_fails_is_reported_ended_with_the_reason() {
        let mut receiver = stream::iter(vec![
            Ok(neighbour(1)),
            Err("connection lost".to_owned()),
            Ok(neighbour(2)),
        ]);
        let first = receiver.next().await;
        let batch = take_batch(&mut receiver, first).await;
        assert_eq!(batch.events, vec![neighbour(1)]);
        assert_eq!(batch.ended.as_deref(), Some("connection lost"));
    }

    #[tokio::test]
    async fn a_batch_takes_what_has_arrived_without_waiting_for_more() {
        let mut receiver = stream::iter(vec![Ok::<_, String>(neighbour(1)), Ok(neighbour(2))])
            .chain(stream::pending());
        let first = receiver.next().await;
        let batch = take_batch(&mut receiver, first).await;
        assert_eq!(batch.events, vec![neighbour(1), neighbour(2)]);
        assert_eq!(batch.ended, None);
    }

    #[tokio::test]
    async fn a_batch_holds_at_most_gossip_batch_events() {
        let mut receiver =
            stream::iter((0..GOSSIP_BATCH + 5).map(|_| Ok::<_, String>(neighbour(1))));
        let first = receiver.next().await;
        let batch = take_batch(&mut receiver, first).await;
        assert_eq!(batch.events.len(), GOSSIP_BATCH);
        assert_eq!(batch.ended, None);
        let next = receiver.next().await;
        assert_eq!(take_batch(&mut receiver, next).await.events.len(), 5);
    }
}
