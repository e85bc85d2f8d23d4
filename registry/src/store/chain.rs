//! What a registry knows about hosts' receipt chains (heads, activity, forks) and the evidence
//! it holds against any key.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Registry, db_error, parse_stored};
use crate::identity::PublicKey;
use crate::{Error, Hash};

/// Two receipts signed by one host with the same sequence number: proof that the host showed
/// different histories to different peers (or rewrote its own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fork {
    /// The host that signed both.
    pub host: PublicKey,
    /// The sequence number both claim.
    pub seq: u64,
    /// The receipt stored first.
    pub first: Hash,
    /// The conflicting receipt.
    pub second: Hash,
}

/// What this registry holds about one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRecord {
    /// Receipts the host signed.
    pub receipts: u64,
    /// The highest sequence number seen and its receipt.
    pub head: Option<(u64, Hash)>,
    /// Sequence numbers below the head that this registry does not hold: gaps, behind which
    /// none of the host's receipts count for scores.
    pub missing: u64,
    /// The timestamps of its first and latest receipts (by sequence number), in milliseconds
    /// since the Unix epoch.
    pub active_ms: Option<(u64, u64)>,
    /// Forks in its receipt chain.
    pub forks: Vec<Fork>,
    /// Other evidence that it lied (see [`Misbehaviour`]).
    pub misbehaviour: Vec<Misbehaviour>,
}

/// Signed records that together prove their signer broke the rules: a receipt that contradicts
/// its caller's request, its manifest, its nested receipts or its host's chain; two feedback
/// records on one receipt; two manifests for one release. A key with any gets no trust, and
/// nothing it signed counts (see [`crate::reputation`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Misbehaviour {
    /// Whose: the key that signed the contradiction.
    pub key: PublicKey,
    /// What kind: `request-mismatch`, `wrong-component`, `over-limit`, `fuel`, `charge`,
    /// `foreign-nested`, `broken-link`, `double-feedback` or `double-release`.
    pub kind: String,
    /// The record it is about.
    pub subject: Hash,
    /// What is contradictory, for people.
    pub reason: String,
}

/// Records evidence against `key`, with the signed records that prove it. Recording the same
/// evidence twice changes nothing.
pub(super) fn record_misbehaviour(
    conn: &Connection,
    path: &std::path::Path,
    key: &PublicKey,
    kind: &str,
    subject: &Hash,
    reason: &str,
    proof: &[&[u8]],
) -> Result<(), Error> {
    // The proof is the signed records, newline-separated (canonical JSON has no raw newlines).
    let proof = proof.join(&b"\n"[..]);
    conn.prepare_cached(
        "INSERT OR IGNORE INTO misbehaviour (key, kind, subject, reason, proof)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut stmt| stmt.execute(params![key.to_hex(), kind, subject.to_hex(), reason, proof]))
    .map_err(|e| db_error(path, e))?;
    tracing::warn!(%key, kind, %subject, reason, "recorded evidence against a key");
    Ok(())
}

impl Registry {
    /// Recorded evidence against `key` other than forks.
    pub fn misbehaviour(&self, key: &PublicKey) -> Result<Vec<Misbehaviour>, Error> {
        self.read(|conn| {
            let db = |e| self.db_error(e);
            let mut stmt = conn
                .prepare_cached(
                    "SELECT kind, subject, reason FROM misbehaviour WHERE key = ?1
                     ORDER BY kind, subject",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![key.to_hex()], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get(2)?,
                    ))
                })
                .map_err(db)?;
            let mut found = Vec::new();
            for row in rows {
                let (kind, subject, reason) = row.map_err(db)?;
                found.push(Misbehaviour {
                    key: *key,
                    kind,
                    subject: parse_stored(&self.path, &subject)?,
                    reason,
                });
            }
            Ok(found)
        })
    }

    /// Recorded forks in `host`'s receipt chain.
    pub fn forks(&self, host: &PublicKey) -> Result<Vec<Fork>, Error> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, receipt_a, receipt_b FROM forks WHERE host = ?1 ORDER BY seq",
                )
                .map_err(|e| self.db_error(e))?;
            let rows = stmt
                .query_map(params![host.to_hex()], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                    ))
                })
                .map_err(|e| self.db_error(e))?;
            let mut forks = Vec::new();
            for row in rows {
                let (seq, first, second) = row.map_err(|e| self.db_error(e))?;
                forks.push(Fork {
                    host: *host,
                    seq: seq as u64,
                    first: parse_stored(&self.path, &first)?,
                    second: parse_stored(&self.path, &second)?,
                });
            }
            Ok(forks)
        })
    }

    /// What this registry holds about `host`: how many receipts it signed, its chain head,
    /// when it was active, and any forks.
    pub fn host_record(&self, host: &PublicKey) -> Result<HostRecord, Error> {
        let forks = self.forks(host)?;
        let misbehaviour = self.misbehaviour(host)?;
        self.read(|conn| {
            let db = |e| self.db_error(e);
            let key = host.to_hex();
            // Everything comes from the (host, seq) index: a count over it, and its two ends.
            let receipts: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM receipts WHERE host = ?1")
                .and_then(|mut stmt| stmt.query_row(params![key], |row| row.get(0)))
                .map_err(db)?;
            // Every receipt beyond the first at one sequence number is recorded as a fork.
            let distinct = receipts - forks.len() as i64;
            let end = |order: &str| -> Result<Option<(i64, String, i64)>, Error> {
                conn.prepare_cached(&format!(
                    "SELECT seq, hash, timestamp_ms FROM receipts WHERE host = ?1
                     ORDER BY seq {order}, rowid LIMIT 1"
                ))
                .and_then(|mut stmt| {
                    stmt.query_row(params![key], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })
                    .optional()
                })
                .map_err(db)
            };
            let (first, last) = (end("ASC")?, end("DESC")?);
            let head = match &last {
                Some((seq, hash, _)) => Some((*seq as u64, parse_stored(&self.path, hash)?)),
                None => None,
            };
            Ok(HostRecord {
                receipts: receipts as u64,
                missing: head.map_or(0, |(seq, _)| (seq + 1).saturating_sub(distinct as u64)),
                head,
                active_ms: first
                    .zip(last)
                    .map(|(first, last)| (first.2 as u64, last.2 as u64)),
                forks,
                misbehaviour,
            })
        })
    }
}
