//! Scores kept fresh for the API: a background task holds the evidence in memory, reads what
//! is new from the registry when evidence has arrived, and recomputes (at most every
//! [`SCORE_REFRESH`], and never more than a fifth of the time); readers take the latest
//! [`ScoreSnapshot`] without waiting for a computation.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agora_registry::EvidenceCursor;
use agora_registry::PublicKey;
use agora_registry::reputation::{EvidenceSet, ScoreParams, Scores, compute};

use super::ApiState;
use crate::node::Node;

/// Scores are recomputed at most this often, and only when evidence has changed or they have
/// aged by a minute (evidence decays with time).
pub const SCORE_REFRESH: Duration = Duration::from_secs(2);
/// Evidence decays with time, so scores are recomputed at least this often even when nothing new
/// has arrived.
const SCORE_MAX_AGE: Duration = Duration::from_secs(60);
/// Score computation may take at most 1/this of the time.
const SCORE_DUTY_CYCLE: u32 = 5;

/// The resolution of the clock scores are computed at, in milliseconds.
const SCORE_CLOCK_MS: u64 = 60_000;

/// Scores as computed at one moment from the evidence up to one cursor.
pub(crate) struct ScoreSnapshot {
    pub(crate) scores: Scores,
    pub(crate) cursor: EvidenceCursor,
    pub(crate) computed_at_ms: u64,
    pub(crate) computed: Instant,
    pub(crate) took: Duration,
    pub(crate) calls: usize,
    /// Stored rows the evidence read had to leave out.
    pub(crate) skipped_rows: u64,
}

/// The evidence scores are computed from, kept between refreshes so that each refresh reads
/// only what is new.
pub(crate) struct ReadEvidence {
    evidence: EvidenceSet,
    cursor: EvidenceCursor,
}

impl ReadEvidence {
    /// Nothing read yet: the next update reads everything.
    pub(crate) fn none() -> Self {
        ReadEvidence {
            evidence: EvidenceSet::default(),
            cursor: EvidenceCursor::default(),
        }
    }
}

/// Brings `read` up to date with the registry and computes scores from it, off the async
/// executor. Gives the evidence back for the next refresh.
pub(crate) async fn score(
    node: Node,
    anchors: Vec<PublicKey>,
    mut read: ReadEvidence,
) -> Result<(ScoreSnapshot, ReadEvidence), String> {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        read.cursor = node
            .registry()
            .update_evidence(&mut read.evidence, read.cursor)
            .map_err(|e| e.to_string())?;
        let (evidence, cursor) = (&read.evidence, read.cursor);
        // Scores are a function of the evidence, the anchors and the time. Reading the clock
        // to the minute (rounded up, so that evidence from the last seconds is not "future")
        // lets two hosts with the same evidence and anchors compute the very same scores within
        // a minute; evidence ages by a half-life of days, so nothing is lost.
        let now = (unix_ms() / SCORE_CLOCK_MS + 1) * SCORE_CLOCK_MS;
        let scores = compute(evidence, &ScoreParams::new(anchors, now));
        // A key that earned trust is no longer a stranger whose evidence is held to quotas.
        node.registry().set_earned_trust(
            scores
                .trust
                .iter()
                .filter(|(_, trust)| **trust > 0.0)
                .map(|(key, _)| *key),
        );
        let took = started.elapsed();
        tracing::debug!(calls = evidence.calls().len(), ?took, "scores computed");
        let snapshot = ScoreSnapshot {
            scores,
            cursor,
            computed_at_ms: now,
            computed: Instant::now(),
            took,
            calls: evidence.calls().len(),
            skipped_rows: evidence.skipped_rows,
        };
        Ok((snapshot, read))
    })
    .await
    .map_err(|e| format!("score computation failed: {e}"))?
}

/// Keeps the scores fresh while the server runs (it holds the state only weakly, so it stops
/// when the server does).
pub(crate) async fn refresh_scores(state: Weak<ApiState>, mut read: ReadEvidence) {
    loop {
        let (node, anchors, last) = {
            let Some(state) = state.upgrade() else { return };
            let last = state.snapshot();
            // Wait for new evidence or the refresh period, then for the duty-cycle gap.
            let _ = tokio::time::timeout(SCORE_REFRESH, state.evidence_arrived.notified()).await;
            (state.node.clone(), state.anchors.clone(), last)
        };
        let gap = last.took * (SCORE_DUTY_CYCLE - 1);
        let since = last.computed.elapsed();
        if since < gap {
            tokio::time::sleep(gap - since).await;
        }
        let reader = node.clone();
        let cursor = tokio::task::spawn_blocking(move || reader.registry().evidence_cursor()).await;
        let cursor = match cursor {
            Ok(read) => read.map_err(|e| e.to_string()),
            Err(join) => Err(join.to_string()),
        };
        let stale = match cursor {
            Ok(cursor) => cursor != last.cursor,
            Err(error) => {
                tracing::warn!(%error, "cannot read the evidence cursor");
                false
            }
        };
        if !stale && last.computed.elapsed() < SCORE_MAX_AGE {
            continue;
        }
        // If the refresh fails, what was read is lost and the next refresh reads everything.
        match score(
            node,
            anchors,
            std::mem::replace(&mut read, ReadEvidence::none()),
        )
        .await
        {
            Ok((fresh, updated)) => {
                read = updated;
                let Some(state) = state.upgrade() else { return };
                *state.scores.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
            }
            Err(error) => tracing::error!(%error, "scores not refreshed"),
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}
