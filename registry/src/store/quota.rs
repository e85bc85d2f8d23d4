//! What keys this host does not trust may make it store.
//!
//! Keys are free, so a stranger's signed records cost it nothing to make; every record a
//! stranger can get stored is bounded, per key and in all:
//!
//! | what | per key ([`StrangerQuotas`] field, default) | in all |
//! |---|---|---|
//! | manifests a publisher signed | `manifests_per_key`, [`MAX_MANIFESTS_PER_STRANGER`] (64) | — |
//! | records waiting for what they refer to | `pending_per_key`, [`MAX_PENDING_PER_KEY`] (1,000) | — |
//! | receipts a host signed | `receipts_per_key`, [`MAX_RECEIPTS_PER_STRANGER`] (10,000) | `receipts_total`, [`MAX_STRANGER_RECEIPTS`] (10⁶) |
//! | feedback a rater signed | `feedback_per_key`, [`MAX_FEEDBACK_PER_STRANGER`] (1,000) | `feedback_total`, [`MAX_STRANGER_FEEDBACK`] (10⁶) |
//!
//! A record over a quota is refused with [`Error::Quota`] naming the key and the quota, and
//! counted ([`Registry::refused_over_quota`](super::Registry::refused_over_quota)); what is
//! stored already stays. Keys this host trusts are never held to these: its own, the ones its
//! operator trusts or anchors ([`Registry::trust`](super::Registry::trust)), and the ones that
//! earned trust in the last score computation
//! ([`Registry::set_earned_trust`](super::Registry::set_earned_trust)), so an honest host
//! whose calls are rated is held back only until its first ratings count.
//!
//! Every receipt and feedback record stored is counted against its signer in `key_usage` as
//! it is inserted (the row with the empty key holds the strangers' totals), so a check is two
//! lookups, not a count over the evidence. Counts start from what was stored when the table
//! was created; the totals start at zero then.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, OptionalExtension, params};

use super::db_error;
use crate::Error;
use crate::identity::PublicKey;

/// Most manifests one key that this host does not trust may have stored here.
pub const MAX_MANIFESTS_PER_STRANGER: i64 = 64;
/// Most records one key may have waiting for what they refer to. Beyond it, more are refused:
/// a stranger cannot fill the table with records about things that never arrive.
pub const MAX_PENDING_PER_KEY: i64 = 1_000;
/// Most receipts one host that this host does not trust may have stored here.
pub const MAX_RECEIPTS_PER_STRANGER: i64 = 10_000;
/// Most feedback records one rater that this host does not trust may have stored here.
pub const MAX_FEEDBACK_PER_STRANGER: i64 = 1_000;
/// Most receipts stored here from all hosts this host does not trust together.
pub const MAX_STRANGER_RECEIPTS: i64 = 1_000_000;
/// Most feedback records stored here from all raters this host does not trust together.
pub const MAX_STRANGER_FEEDBACK: i64 = 1_000_000;

/// The quotas on keys this host does not trust (see the module docs for what each
/// bounds). Each field is a count of records; at the limit, the next record is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StrangerQuotas {
    /// Manifests per publisher. Default [`MAX_MANIFESTS_PER_STRANGER`].
    pub manifests_per_key: i64,
    /// Records waiting for what they refer to, per signer. Default [`MAX_PENDING_PER_KEY`].
    pub pending_per_key: i64,
    /// Receipts per host. Default [`MAX_RECEIPTS_PER_STRANGER`].
    pub receipts_per_key: i64,
    /// Feedback records per rater. Default [`MAX_FEEDBACK_PER_STRANGER`].
    pub feedback_per_key: i64,
    /// Receipts from all strangers together. Default [`MAX_STRANGER_RECEIPTS`].
    pub receipts_total: i64,
    /// Feedback records from all strangers together. Default [`MAX_STRANGER_FEEDBACK`].
    pub feedback_total: i64,
}

impl Default for StrangerQuotas {
    fn default() -> Self {
        StrangerQuotas {
            manifests_per_key: MAX_MANIFESTS_PER_STRANGER,
            pending_per_key: MAX_PENDING_PER_KEY,
            receipts_per_key: MAX_RECEIPTS_PER_STRANGER,
            feedback_per_key: MAX_FEEDBACK_PER_STRANGER,
            receipts_total: MAX_STRANGER_RECEIPTS,
            feedback_total: MAX_STRANGER_FEEDBACK,
        }
    }
}

/// How many records from keys this host does not trust it holds, counted as they were stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StrangerUsage {
    /// Receipts from hosts this host does not trust.
    pub receipts: u64,
    /// Feedback records from raters this host does not trust.
    pub feedback: u64,
}

impl super::Registry {
    /// How many receipts and feedback records from strangers this registry holds: what their
    /// totals ([`StrangerQuotas::receipts_total`], [`StrangerQuotas::feedback_total`]) bound.
    pub fn stranger_usage(&self) -> Result<StrangerUsage, Error> {
        self.read(|conn| {
            conn.query_row(
                "SELECT receipts, feedback FROM key_usage WHERE key = ''",
                [],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)),
            )
            .optional()
            .map_err(|e| self.db_error(e))
        })
        .map(|usage| {
            let (receipts, feedback) = usage.unwrap_or((0, 0));
            StrangerUsage {
                receipts: receipts.max(0) as u64,
                feedback: feedback.max(0) as u64,
            }
        })
    }
}

/// The keys a registry trusts, and its quotas on the others.
#[derive(Debug, Default)]
pub(super) struct Trust {
    operator: HashSet<PublicKey>,
    earned: HashSet<PublicKey>,
    /// Both sets together, shared with writes in progress.
    all: Arc<HashSet<PublicKey>>,
    quotas: StrangerQuotas,
}

impl Trust {
    pub(super) fn add_operator(&mut self, keys: impl IntoIterator<Item = PublicKey>) {
        self.operator.extend(keys);
        self.rebuild();
    }

    pub(super) fn set_earned(&mut self, keys: impl IntoIterator<Item = PublicKey>) {
        self.earned = keys.into_iter().collect();
        self.rebuild();
    }

    pub(super) fn set_quotas(&mut self, quotas: StrangerQuotas) {
        self.quotas = quotas;
    }

    fn rebuild(&mut self) {
        self.all = Arc::new(self.operator.union(&self.earned).copied().collect());
    }

    /// What a write needs to hold strangers to their quotas.
    pub(super) fn strangers(&self, refused: &Arc<AtomicU64>) -> Strangers {
        Strangers {
            trusted: self.all.clone(),
            quotas: self.quotas,
            refused: refused.clone(),
        }
    }
}

/// Which kind of evidence a signer's count is of.
#[derive(Clone, Copy, Debug)]
pub(super) enum Evidence {
    Receipt,
    Feedback,
}

/// The trusted keys and quotas as they were when a write was queued, and the counter of
/// refusals.
#[derive(Clone, Debug)]
pub(super) struct Strangers {
    trusted: Arc<HashSet<PublicKey>>,
    quotas: StrangerQuotas,
    refused: Arc<AtomicU64>,
}

impl Strangers {
    pub(super) fn is_stranger(&self, key: &PublicKey) -> bool {
        !self.trusted.contains(key)
    }

    pub(super) fn quotas(&self) -> &StrangerQuotas {
        &self.quotas
    }

    /// The refusal of a record from `key` over a quota, counted.
    pub(super) fn refuse(&self, key: &PublicKey, what: String) -> Error {
        self.refused.fetch_add(1, Ordering::Relaxed);
        Error::Quota { key: *key, what }
    }

    /// Counts one more `kind` record signed by `key` about to be stored, or refuses it if `key`
    /// is a stranger at its quota or strangers are at theirs in all. The outer error is a
    /// database failure.
    pub(super) fn count(
        &self,
        conn: &Connection,
        path: &std::path::Path,
        kind: Evidence,
        key: &PublicKey,
    ) -> Result<Result<(), Error>, Error> {
        let (column, per_key, total, what) = match kind {
            Evidence::Receipt => (
                "receipts",
                self.quotas.receipts_per_key,
                self.quotas.receipts_total,
                ("receipts from a host", "receipts from hosts"),
            ),
            Evidence::Feedback => (
                "feedback",
                self.quotas.feedback_per_key,
                self.quotas.feedback_total,
                (
                    "feedback records from a rater",
                    "feedback records from raters",
                ),
            ),
        };
        let key_hex = key.to_hex();
        let stranger = self.is_stranger(key);
        if stranger {
            let used = |of: &str| -> Result<i64, Error> {
                conn.prepare_cached(&format!("SELECT {column} FROM key_usage WHERE key = ?1"))
                    .and_then(|mut stmt| stmt.query_row(params![of], |row| row.get(0)).optional())
                    .map(|used| used.unwrap_or(0))
                    .map_err(|e| db_error(path, e))
            };
            if used(&key_hex)? >= per_key {
                return Ok(Err(self.refuse(
                    key,
                    format!("{per_key} {} this host does not trust", what.0),
                )));
            }
            if used("")? >= total {
                return Ok(Err(self.refuse(
                    key,
                    format!(
                        "this host holds its limit of {total} {} it does not trust, in all",
                        what.1
                    ),
                )));
            }
        }
        let add = |of: &str| {
            conn.prepare_cached(&format!(
                "INSERT INTO key_usage (key, {column}) VALUES (?1, 1)
                 ON CONFLICT (key) DO UPDATE SET {column} = {column} + 1"
            ))
            .and_then(|mut stmt| stmt.execute(params![of]))
            .map_err(|e| db_error(path, e))
        };
        add(&key_hex)?;
        if stranger {
            add("")?;
        }
        Ok(Ok(()))
    }
}
