//! Reading evidence back: batches to pass on to peers, and the facts scores are computed from.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{Connection, params};

use super::{Registry, parse_stored, text};
use crate::evidence::{SignedFeedback, SignedRequest};
use crate::identity::PublicKey;
use crate::manifest::SignedManifest;
use crate::receipt::SignedReceipt;
use crate::reputation::{AgentFacts, Call, CallOutcome, EvidenceSet, Rating};
use crate::signed::Signed;
use crate::validation::SignedValidation;
use crate::{Error, Hash};

/// A batch of records to pass on to peers; see [`Registry::evidence_since`].
#[derive(Clone, Debug)]
pub struct Evidence {
    /// Manifests, oldest first.
    pub manifests: Vec<SignedManifest>,
    /// Receipts, oldest first, each with the caller's signed request it answers.
    pub receipts: Vec<(SignedReceipt, Option<SignedRequest>)>,
    /// Feedback, oldest first.
    pub feedback: Vec<SignedFeedback>,
    /// Validations, oldest first: what verifiers found on re-executing receipts. Only in
    /// [`Registry::evidence_after`] for every host (what a peer catching up asks for).
    pub validations: Vec<SignedValidation>,
    /// Where the next batch starts.
    pub cursor: EvidenceCursor,
}

/// Row positions up to which records have been read, per table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvidenceCursor {
    /// Last manifest row read.
    pub manifests: i64,
    /// Last receipt row read.
    pub receipts: i64,
    /// Last feedback row read.
    pub feedback: i64,
    /// Last validation row read.
    pub validations: i64,
    /// Last rows of evidence against keys (forks and misbehaviour), summed: it changes when
    /// such evidence arrives.
    pub against: i64,
}

/// Most records of one kind in one [`Evidence`] batch.
const EVIDENCE_BATCH: i64 = 1000;

/// The position after the last manifest, receipt and feedback row.
pub(super) fn cursor_now(conn: &Connection) -> rusqlite::Result<EvidenceCursor> {
    conn.query_row(
        "SELECT (SELECT COALESCE(MAX(rowid), 0) FROM manifests),
                (SELECT COALESCE(MAX(rowid), 0) FROM receipts),
                (SELECT COALESCE(MAX(rowid), 0) FROM feedback),
                (SELECT COALESCE(MAX(rowid), 0) FROM validations),
                (SELECT COALESCE(MAX(rowid), 0) FROM forks)
                    + (SELECT COALESCE(MAX(rowid), 0) FROM misbehaviour)
                    + (SELECT COALESCE(MAX(rowid), 0) FROM unbacked_receipts)",
        [],
        |row| {
            Ok(EvidenceCursor {
                manifests: row.get(0)?,
                receipts: row.get(1)?,
                feedback: row.get(2)?,
                validations: row.get(3)?,
                against: row.get(4)?,
            })
        },
    )
}

/// Parses each distinct key once: a key's curve point is checked when it is parsed, and a
/// million receipts name only a few thousand keys.
struct KeyInterner<'a> {
    path: &'a Path,
    parsed: HashMap<String, PublicKey>,
}

impl<'a> KeyInterner<'a> {
    fn new(path: &'a Path) -> Self {
        KeyInterner {
            path,
            parsed: HashMap::new(),
        }
    }

    fn get(&mut self, hex: &str) -> Result<PublicKey, Error> {
        if let Some(key) = self.parsed.get(hex) {
            return Ok(*key);
        }
        let key: PublicKey = parse_stored(self.path, hex)?;
        self.parsed.insert(hex.to_owned(), key);
        Ok(key)
    }
}

impl Registry {
    /// Manifests, receipts signed by `host`, and feedback stored after `after`, with the
    /// position to continue from: what a host has not yet told its peers. Validations are left
    /// out: a verifier announces its own as it signs them.
    pub fn evidence_since(
        &self,
        host: &PublicKey,
        after: EvidenceCursor,
    ) -> Result<Evidence, Error> {
        self.evidence_after(Some(host), after, EVIDENCE_BATCH)
    }

    /// Everything stored after `after` — manifests, every host's receipts with their requests,
    /// feedback, and (when `host` is `None`) validations — at most `limit` (and at most 1,000)
    /// of each kind, with the position to continue from: what a peer catching up asks for.
    pub fn evidence_after(
        &self,
        host: Option<&PublicKey>,
        after: EvidenceCursor,
        limit: i64,
    ) -> Result<Evidence, Error> {
        let limit = limit.clamp(1, EVIDENCE_BATCH);
        let host = host.map(PublicKey::to_hex);
        self.read(|conn| {
            let mut cursor = after;
            let manifests = self.signed_rows_after(
                conn,
                "SELECT rowid, signed FROM manifests WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
                params![after.manifests, limit],
                &mut cursor.manifests,
            )?;
            let mut receipts = Vec::new();
            let mut stmt = conn
                .prepare_cached(
                    "SELECT r.rowid, r.signed, COALESCE(rr.signed, q.signed) FROM receipts r
                     LEFT JOIN receipt_requests rr ON rr.receipt = r.rowid
                     LEFT JOIN requests q ON rr.signed IS NULL AND q.hash = r.request_hash
                     WHERE r.rowid > ?1 AND (?3 IS NULL OR r.host = ?3) ORDER BY r.rowid LIMIT ?2",
                )
                .map_err(|e| self.db_error(e))?;
            let mut rows = stmt
                .query(params![after.receipts, limit, host])
                .map_err(|e| self.db_error(e))?;
            while let Some(row) = rows.next().map_err(|e| self.db_error(e))? {
                let receipt: Vec<u8> = row.get(1).map_err(|e| self.db_error(e))?;
                let request: Option<Vec<u8>> = row.get(2).map_err(|e| self.db_error(e))?;
                receipts.push((
                    Signed::from_stored(&receipt)?,
                    request.map(|r| Signed::from_stored(&r)).transpose()?,
                ));
                cursor.receipts = row.get(0).map_err(|e| self.db_error(e))?;
            }
            let feedback = self.signed_rows_after(
                conn,
                "SELECT rowid, signed FROM feedback WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
                params![after.feedback, limit],
                &mut cursor.feedback,
            )?;
            let validations = if host.is_none() {
                self.signed_rows_after(
                    conn,
                    "SELECT rowid, signed FROM validations WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
                    params![after.validations, limit],
                    &mut cursor.validations,
                )?
            } else {
                Vec::new()
            };
            Ok(Evidence {
                manifests,
                receipts,
                feedback,
                validations,
                cursor,
            })
        })
    }

    /// The position after every manifest stored so far.
    pub fn manifests_cursor(&self) -> Result<i64, Error> {
        Ok(self.evidence_cursor()?.manifests)
    }

    /// The position after every manifest, receipt and feedback stored so far: it changes
    /// whenever evidence arrives, so it tells when scores are stale.
    pub fn evidence_cursor(&self) -> Result<EvidenceCursor, Error> {
        self.read(|conn| cursor_now(conn).map_err(|e| self.db_error(e)))
    }

    /// Records from `(rowid, signed)` rows, advancing `cursor` past each.
    fn signed_rows_after<T: crate::Record>(
        &self,
        conn: &Connection,
        sql: &str,
        params: impl rusqlite::Params,
        cursor: &mut i64,
    ) -> Result<Vec<Signed<T>>, Error> {
        let mut stmt = conn.prepare_cached(sql).map_err(|e| self.db_error(e))?;
        let rows = stmt
            .query_map(params, |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
            })
            .map_err(|e| self.db_error(e))?;
        let mut records = Vec::new();
        for row in rows {
            let (rowid, bytes) = row.map_err(|e| self.db_error(e))?;
            records.push(Signed::from_stored(&bytes)?);
            *cursor = rowid;
        }
        Ok(records)
    }

    /// Everything in the registry that reputation is computed from, read from columns rather
    /// than by parsing each record, so that it stays fast with millions of receipts.
    pub fn evidence_set(&self) -> Result<EvidenceSet, Error> {
        let mut evidence = EvidenceSet::default();
        self.update_evidence(&mut evidence, EvidenceCursor::default())?;
        Ok(evidence)
    }

    /// Brings `evidence`, read up to `since`, up to date: adds the receipts and feedback stored
    /// after `since` and rereads the (few) manifests and the evidence against keys. Returns the cursor it is now
    /// read up to, for the next update. Reading only what is new keeps refreshing scores cheap
    /// however much evidence there is.
    pub fn update_evidence(
        &self,
        evidence: &mut EvidenceSet,
        since: EvidenceCursor,
    ) -> Result<EvidenceCursor, Error> {
        self.read(|conn| {
            let db = |e| self.db_error(e);
            // One read transaction (rolled back on drop): every table as of one commit, and a
            // cursor that matches it exactly.
            let _snapshot = conn.unchecked_transaction().map_err(db)?;
            let cursor = cursor_now(conn).map_err(db)?;
            let mut keys = KeyInterner::new(&self.path);
            // A row this build cannot read (written before a rule existed, or damaged) is
            // skipped and counted: one bad record must never stop every score.
            let mut skipped = 0u64;
            let mut agents = std::collections::BTreeMap::new();
            let mut stmt = conn
                .prepare_cached(
                    "SELECT hash, publisher, component_hash, max_fuel, price_per_mfuel,
                            max_memory_bytes
                     FROM manifests",
                )
                .map_err(db)?;
            let mut rows = stmt.query([]).map_err(db)?;
            while let Some(row) = rows.next().map_err(db)? {
                let facts = (|| -> Result<(Hash, AgentFacts), Error> {
                    let max_fuel: i64 = row.get(3).map_err(db)?;
                    let price: i64 = row.get(4).map_err(db)?;
                    Ok((
                        parse_stored(&self.path, text(row, 0).map_err(db)?)?,
                        AgentFacts {
                            publisher: keys.get(text(row, 1).map_err(db)?)?,
                            component: parse_stored(&self.path, text(row, 2).map_err(db)?)?,
                            max_fuel: u64::try_from(max_fuel)
                                .map_err(|_| self.corrupt("max_fuel"))?,
                            price_per_mfuel: u64::try_from(price)
                                .map_err(|_| self.corrupt("price"))?,
                            max_memory_bytes: row
                                .get::<_, Option<i64>>(5)
                                .map_err(db)?
                                .and_then(|m| u64::try_from(m).ok()),
                        },
                    ))
                })();
                match facts {
                    Ok((hash, facts)) => {
                        agents.insert(hash, facts);
                    }
                    Err(error) => {
                        skipped += 1;
                        tracing::warn!(%error, "skipping a manifest row scores cannot use");
                    }
                }
            }
            // Ratings are attached after the calls are merged in: one pass over the feedback is
            // cheaper than a join that probes the feedback index once per receipt.
            let mut ratings = Vec::new();
            let mut stmt = conn
                .prepare_cached(
                    "SELECT receipt_hash, rater, score FROM feedback
                     WHERE rowid > ?1 AND rowid <= ?2",
                )
                .map_err(db)?;
            let mut rows = stmt
                .query(params![since.feedback, cursor.feedback])
                .map_err(db)?;
            while let Some(row) = rows.next().map_err(db)? {
                let rating = (|| -> Result<(Hash, Rating), Error> {
                    let score: i64 = row.get(2).map_err(db)?;
                    Ok((
                        parse_stored(&self.path, text(row, 0).map_err(db)?)?,
                        Rating {
                            rater: keys.get(text(row, 1).map_err(db)?)?,
                            score: u8::try_from(score)
                                .ok()
                                .filter(|s| *s <= 100)
                                .ok_or_else(|| self.corrupt("score"))?,
                        },
                    ))
                })();
                match rating {
                    Ok(rating) => ratings.push(rating),
                    Err(error) => {
                        skipped += 1;
                        tracing::warn!(%error, "skipping a feedback row scores cannot use");
                    }
                }
            }
            let mut calls = Vec::new();
            let mut stmt = conn
                .prepare_cached(
                    "SELECT hash, host, caller, manifest_hash, component_hash, outcome,
                            fuel_limit, charge, timestamp_ms, seq, memory_limit, prev
                     FROM receipts WHERE rowid > ?1 AND rowid <= ?2",
                )
                .map_err(db)?;
            let mut rows = stmt
                .query(params![since.receipts, cursor.receipts])
                .map_err(db)?;
            while let Some(row) = rows.next().map_err(db)? {
                let call = (|| -> Result<Call, Error> {
                    let outcome = text(row, 5).map_err(db)?;
                    let number = |i| -> Result<u64, Error> {
                        let value: i64 = row.get(i).map_err(db)?;
                        u64::try_from(value).map_err(|_| self.corrupt("a negative receipt field"))
                    };
                    let caller = row
                        .get_ref(2)
                        .and_then(|v| v.as_str_or_null().map_err(Into::into))
                        .map_err(db)?;
                    Ok(Call {
                        receipt: parse_stored(&self.path, text(row, 0).map_err(db)?)?,
                        host: keys.get(text(row, 1).map_err(db)?)?,
                        caller: caller.map(|c| keys.get(c)).transpose()?,
                        manifest: parse_stored(&self.path, text(row, 3).map_err(db)?)?,
                        component: parse_stored(&self.path, text(row, 4).map_err(db)?)?,
                        outcome: CallOutcome::from_name(outcome)
                            .ok_or_else(|| self.corrupt("an unknown receipt outcome"))?,
                        fuel_limit: number(6)?,
                        charge: number(7)?,
                        timestamp_ms: number(8)?,
                        seq: number(9)?,
                        prev: row
                            .get_ref(11)
                            .and_then(|v| v.as_str_or_null().map_err(Into::into))
                            .map_err(db)?
                            .map(|p| parse_stored(&self.path, p))
                            .transpose()?,
                        memory_limit: row
                            .get::<_, Option<i64>>(10)
                            .map_err(db)?
                            .and_then(|m| u64::try_from(m).ok()),
                        rating: None,
                    })
                })();
                match call {
                    Ok(call) => calls.push(call),
                    Err(error) => {
                        skipped += 1;
                        tracing::warn!(%error, "skipping a receipt row scores cannot use");
                    }
                }
            }
            // Keys with recorded evidence against them: forks, and every other misbehaviour.
            let mut dishonest = std::collections::BTreeSet::new();
            let mut stmt = conn
                .prepare_cached("SELECT host FROM forks UNION SELECT key FROM misbehaviour")
                .map_err(db)?;
            let mut rows = stmt.query([]).map_err(db)?;
            while let Some(row) = rows.next().map_err(db)? {
                match keys.get(text(row, 0).map_err(db)?) {
                    Ok(key) => {
                        dishonest.insert(key);
                    }
                    Err(error) => {
                        skipped += 1;
                        tracing::warn!(%error, "skipping evidence against an unreadable key");
                    }
                }
            }
            // Receipts their host could not back with their input and transcript: few, reread
            // whole like the keys above.
            let mut unbacked = std::collections::BTreeSet::new();
            let mut stmt = conn
                .prepare_cached("SELECT receipt FROM unbacked_receipts")
                .map_err(db)?;
            let mut rows = stmt.query([]).map_err(db)?;
            while let Some(row) = rows.next().map_err(db)? {
                unbacked.insert(parse_stored(&self.path, text(row, 0).map_err(db)?)?);
            }
            evidence.update(agents, calls, ratings, dishonest);
            evidence.unbacked = unbacked;
            evidence.skipped_rows += skipped;
            Ok(cursor)
        })
    }
}
