//! The SQLite registry: one database file per host.
//!
//! Rows that came from signed records keep the exact signed bytes, and reads re-verify them, so a
//! database edited behind the host's back yields errors rather than forged records.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::evidence::{MAX_REQUEST_TTL_MS, SignedFeedback, SignedRequest};
use crate::identity::{PublicKey, SecretKey};
use crate::manifest::SignedManifest;
use crate::receipt::{Receipt, SignedReceipt};
use crate::{Error, Hash};

/// Schema migrations, applied in order. `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: manifests, publishers, receipts, agent memory.
    "CREATE TABLE publishers (
         key        TEXT PRIMARY KEY,
         first_seen INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE manifests (
         hash           TEXT PRIMARY KEY,
         name           TEXT NOT NULL,
         version        TEXT NOT NULL,
         publisher      TEXT NOT NULL REFERENCES publishers(key),
         component_hash TEXT NOT NULL,
         component_size INTEGER NOT NULL,
         created_at     INTEGER NOT NULL,
         signed         BLOB NOT NULL,
         UNIQUE (publisher, name, version)
     ) STRICT;
     CREATE INDEX manifests_by_name ON manifests(name);
     CREATE INDEX manifests_by_component ON manifests(component_hash);
     -- (host, seq) is deliberately not unique: two receipts with one sequence number are
     -- evidence that a host forked its chain, and must be kept, not refused.
     CREATE TABLE receipts (
         hash           TEXT PRIMARY KEY,
         host           TEXT NOT NULL,
         seq            INTEGER NOT NULL,
         prev           TEXT,
         manifest_hash  TEXT NOT NULL,
         component_hash TEXT NOT NULL,
         outcome        TEXT NOT NULL,
         fuel_used      INTEGER NOT NULL,
         timestamp_ms   INTEGER NOT NULL,
         signed         BLOB NOT NULL
     ) STRICT;
     CREATE INDEX receipts_by_host ON receipts(host, seq);
     CREATE INDEX receipts_by_manifest ON receipts(manifest_hash, timestamp_ms);
     CREATE INDEX receipts_by_component ON receipts(component_hash, timestamp_ms);
     CREATE TABLE agent_kv (
         publisher TEXT NOT NULL,
         agent     TEXT NOT NULL,
         key       TEXT NOT NULL,
         value     BLOB NOT NULL,
         PRIMARY KEY (publisher, agent, key)
     ) STRICT, WITHOUT ROWID;",
    // 2: caller evidence. A signed request is kept for good: it is the evidence behind its
    // receipt, and its (caller, host, nonce) can never be used again, which is a stricter
    // replay cache than remembering nonces until expiry.
    "CREATE TABLE requests (
         hash          TEXT PRIMARY KEY,
         caller        TEXT NOT NULL,
         host          TEXT NOT NULL,
         nonce         TEXT NOT NULL,
         expires_at_ms INTEGER NOT NULL,
         signed        BLOB NOT NULL,
         UNIQUE (caller, host, nonce)
     ) STRICT;
     CREATE TABLE feedback (
         receipt_hash  TEXT PRIMARY KEY,
         hash          TEXT NOT NULL UNIQUE,
         rater         TEXT NOT NULL,
         score         INTEGER NOT NULL,
         created_at_ms INTEGER NOT NULL,
         signed        BLOB NOT NULL
     ) STRICT;
     ALTER TABLE receipts ADD COLUMN request_hash TEXT;
     ALTER TABLE receipts ADD COLUMN caller TEXT;",
    // 3: evidence that a host forked its receipt chain: two signed receipts, one sequence number.
    "CREATE TABLE forks (
         host      TEXT NOT NULL,
         seq       INTEGER NOT NULL,
         receipt_a TEXT NOT NULL,
         receipt_b TEXT NOT NULL,
         PRIMARY KEY (host, seq, receipt_a, receipt_b)
     ) STRICT;",
];

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

/// Bounds on an agent's persistent memory on one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvQuota {
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// All keys and values of one agent together, in bytes.
    pub max_total_bytes: u64,
}

impl Default for KvQuota {
    fn default() -> Self {
        KvQuota {
            max_key_bytes: 256,
            max_value_bytes: 64 * 1024,
            max_total_bytes: 1024 * 1024,
        }
    }
}

/// Whose memory a kv operation touches: one agent name under one publisher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvNamespace {
    /// The agent's publisher.
    pub publisher: PublicKey,
    /// The agent's name.
    pub agent: String,
}

/// A batch of records to pass on to peers; see [`Registry::evidence_since`].
#[derive(Clone, Debug)]
pub struct Evidence {
    /// Manifests, oldest first.
    pub manifests: Vec<SignedManifest>,
    /// Receipts, oldest first.
    pub receipts: Vec<SignedReceipt>,
    /// Feedback, oldest first.
    pub feedback: Vec<SignedFeedback>,
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
}

/// Most records of one kind in one [`Evidence`] batch.
const EVIDENCE_BATCH: i64 = 1000;

/// Whether an insert stored something new.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// The record was new and is now stored.
    New,
    /// The same record was already stored; nothing changed.
    AlreadyPresent,
}

/// A host's registry of manifests, receipts and agent memory.
///
/// Cheap operations are serialised on one connection; SQLite runs in WAL mode with
/// `synchronous = FULL`, so an acknowledged receipt survives a power cut.
pub struct Registry {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("path", &self.path)
            .finish()
    }
}

impl Registry {
    /// Opens (creating if needed) the registry database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let db_error = |source| Error::Database {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(db_error)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(db_error)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;",
        )
        .map_err(db_error)?;
        let registry = Registry {
            conn: Mutex::new(conn),
            path: path.to_owned(),
        };
        registry.migrate()?;
        Ok(registry)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite itself consistent (transactions roll back
        // on drop), so the poisoned guard is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn db_error(&self, source: rusqlite::Error) -> Error {
        Error::Database {
            path: self.path.clone(),
            source,
        }
    }

    fn migrate(&self) -> Result<(), Error> {
        let mut conn = self.conn();
        let applied: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| self.db_error(e))?;
        let applied = usize::try_from(applied).unwrap_or(usize::MAX);
        if applied > MIGRATIONS.len() {
            return Err(Error::SchemaTooNew {
                path: self.path.clone(),
                found: applied,
                supported: MIGRATIONS.len(),
            });
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
            let tx = conn.transaction().map_err(|e| self.db_error(e))?;
            tx.execute_batch(sql).map_err(|e| self.db_error(e))?;
            tx.pragma_update(None, "user_version", (index + 1) as i64)
                .map_err(|e| self.db_error(e))?;
            tx.commit().map_err(|e| self.db_error(e))?;
            tracing::debug!(migration = index + 1, "applied registry migration");
        }
        Ok(())
    }

    /// Stores a verified manifest.
    ///
    /// Releases are immutable: if the publisher already released a different manifest under the
    /// same name and version, this fails with [`Error::ReleaseConflict`], unless that manifest names the same component,
    /// in which case the earlier release stands and [`Inserted::AlreadyPresent`] is returned.
    pub fn insert_manifest(&self, manifest: &SignedManifest) -> Result<Inserted, Error> {
        let body = manifest.body();
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.db_error(e))?;
        let existing: Option<(String, String)> = tx
            .query_row(
                "SELECT hash, component_hash FROM manifests
                 WHERE publisher = ?1 AND name = ?2 AND version = ?3",
                params![body.publisher.to_hex(), body.name, body.version],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(|e| self.db_error(e))?;
        if let Some((existing_hash, existing_component)) = existing {
            if existing_component == body.component.hash.to_hex() {
                return Ok(Inserted::AlreadyPresent);
            }
            return Err(Error::ReleaseConflict {
                name: body.name.clone(),
                version: body.version.clone(),
                publisher: body.publisher,
                existing: existing_hash,
            });
        }
        tx.execute(
            "INSERT OR IGNORE INTO publishers (key, first_seen) VALUES (?1, ?2)",
            params![body.publisher.to_hex(), body.created_at as i64],
        )
        .map_err(|e| self.db_error(e))?;
        tx.execute(
            "INSERT INTO manifests
                 (hash, name, version, publisher, component_hash, component_size, created_at, signed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                manifest.hash().to_hex(),
                body.name,
                body.version,
                body.publisher.to_hex(),
                body.component.hash.to_hex(),
                body.component.size as i64,
                body.created_at as i64,
                manifest.as_bytes(),
            ],
        )
        .map_err(|e| self.db_error(e))?;
        tx.commit().map_err(|e| self.db_error(e))?;
        Ok(Inserted::New)
    }

    /// The manifest with this hash, if stored.
    pub fn manifest(&self, hash: &Hash) -> Result<Option<SignedManifest>, Error> {
        self.query_manifests("WHERE hash = ?1", params![hash.to_hex()])
            .map(|mut found| found.pop())
    }

    /// The manifest `publisher` released as `name` `version`, if stored.
    pub fn release(
        &self,
        publisher: &PublicKey,
        name: &str,
        version: &str,
    ) -> Result<Option<SignedManifest>, Error> {
        self.query_manifests(
            "WHERE publisher = ?1 AND name = ?2 AND version = ?3",
            params![publisher.to_hex(), name, version],
        )
        .map(|mut found| found.pop())
    }

    /// Every stored manifest, newest first.
    pub fn manifests(&self) -> Result<Vec<SignedManifest>, Error> {
        self.query_manifests("", params![])
    }

    /// Finds the manifest an agent reference names. A reference is a manifest hash, a component
    /// hash (the newest manifest for it), or a name, optionally `name@version` (the newest
    /// release of that name; ambiguous if several publishers use the name).
    pub fn resolve(&self, reference: &str) -> Result<SignedManifest, Error> {
        if let Ok(hash) = reference.parse::<Hash>() {
            if let Some(manifest) = self.manifest(&hash)? {
                return Ok(manifest);
            }
            let mut by_component =
                self.query_manifests("WHERE component_hash = ?1", params![hash.to_hex()])?;
            if !by_component.is_empty() {
                return Ok(by_component.swap_remove(0));
            }
            return Err(Error::UnknownAgent {
                reference: reference.to_owned(),
            });
        }
        let (name, version) = match reference.split_once('@') {
            Some((name, version)) => (name, Some(version)),
            None => (reference, None),
        };
        let mut found = match version {
            Some(version) => {
                self.query_manifests("WHERE name = ?1 AND version = ?2", params![name, version])?
            }
            None => self.query_manifests("WHERE name = ?1", params![name])?,
        };
        let mut publishers: Vec<PublicKey> = found.iter().map(|m| m.body().publisher).collect();
        publishers.sort();
        publishers.dedup();
        match publishers.len() {
            0 => Err(Error::UnknownAgent {
                reference: reference.to_owned(),
            }),
            1 => Ok(found.swap_remove(0)),
            _ => Err(Error::AmbiguousAgent {
                reference: reference.to_owned(),
                publishers,
            }),
        }
    }

    fn query_manifests(
        &self,
        filter: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<SignedManifest>, Error> {
        let conn = self.conn();
        let sql =
            format!("SELECT signed FROM manifests {filter} ORDER BY created_at DESC, rowid DESC");
        let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.db_error(e))?;
        let rows = stmt
            .query_map(params, |row| row.get::<_, Vec<u8>>(0))
            .map_err(|e| self.db_error(e))?;
        let mut manifests = Vec::new();
        for bytes in rows {
            let bytes = bytes.map_err(|e| self.db_error(e))?;
            manifests.push(SignedManifest::from_bytes(&bytes)?);
        }
        Ok(manifests)
    }

    /// Signs and stores this host's next receipt. `build` receives the sequence number and the
    /// previous receipt's hash and returns the receipt; appending is serialised, so the chain
    /// never forks on one host.
    pub fn append_receipt(
        &self,
        host_key: &SecretKey,
        build: impl FnOnce(u64, Option<Hash>) -> Receipt,
    ) -> Result<SignedReceipt, Error> {
        let host = host_key.public();
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.db_error(e))?;
        let last: Option<(i64, String)> = tx
            .query_row(
                "SELECT seq, hash FROM receipts WHERE host = ?1 ORDER BY seq DESC LIMIT 1",
                params![host.to_hex()],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(|e| self.db_error(e))?;
        let (seq, prev) = match last {
            Some((seq, hash)) => (
                seq as u64 + 1,
                Some(hash.parse::<Hash>().map_err(|e| Error::Corrupt {
                    path: self.path.clone(),
                    what: e.to_string(),
                })?),
            ),
            None => (0, None),
        };
        let receipt = Signed::sign(build(seq, prev), host_key)?;
        insert_receipt_row(&tx, &receipt).map_err(|e| self.db_error(e))?;
        tx.commit().map_err(|e| self.db_error(e))?;
        Ok(receipt)
    }

    /// Stores a verified receipt from any host (for example one received from a peer). A
    /// receipt whose host already signed a different receipt with the same sequence number is
    /// stored too, and the pair is recorded as a [`Fork`].
    pub fn insert_receipt(&self, receipt: &SignedReceipt) -> Result<Inserted, Error> {
        let body = receipt.body();
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.db_error(e))?;
        let changed = insert_receipt_row(&tx, receipt).map_err(|e| self.db_error(e))?;
        if changed == 0 {
            return Ok(Inserted::AlreadyPresent);
        }
        let first: Option<String> = tx
            .query_row(
                "SELECT hash FROM receipts WHERE host = ?1 AND seq = ?2 AND hash != ?3
                 ORDER BY rowid LIMIT 1",
                params![body.host.to_hex(), body.seq as i64, receipt.hash().to_hex()],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.db_error(e))?;
        if let Some(first) = first {
            tracing::warn!(host = %body.host, seq = body.seq, "host forked its receipt chain");
            tx.execute(
                "INSERT OR IGNORE INTO forks (host, seq, receipt_a, receipt_b) VALUES (?1, ?2, ?3, ?4)",
                params![body.host.to_hex(), body.seq as i64, first, receipt.hash().to_hex()],
            )
            .map_err(|e| self.db_error(e))?;
        }
        tx.commit().map_err(|e| self.db_error(e))?;
        Ok(Inserted::New)
    }

    /// Recorded forks in `host`'s receipt chain.
    pub fn forks(&self, host: &PublicKey) -> Result<Vec<Fork>, Error> {
        let conn = self.conn();
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
            let parse = |h: String| {
                h.parse::<Hash>().map_err(|e| Error::Corrupt {
                    path: self.path.clone(),
                    what: e.to_string(),
                })
            };
            forks.push(Fork {
                host: *host,
                seq: seq as u64,
                first: parse(first)?,
                second: parse(second)?,
            });
        }
        Ok(forks)
    }

    /// Manifests, receipts signed by `host`, and feedback stored after `after`, with the
    /// position to continue from: what a host has not yet told its peers.
    pub fn evidence_since(
        &self,
        host: &PublicKey,
        after: EvidenceCursor,
    ) -> Result<Evidence, Error> {
        let conn = self.conn();
        let mut cursor = after;
        let manifests = self.signed_rows_after(
            &conn,
            "SELECT rowid, signed FROM manifests WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
            params![after.manifests, EVIDENCE_BATCH],
            &mut cursor.manifests,
        )?;
        let receipts = self.signed_rows_after(
            &conn,
            "SELECT rowid, signed FROM receipts WHERE rowid > ?1 AND host = ?3
             ORDER BY rowid LIMIT ?2",
            params![after.receipts, EVIDENCE_BATCH, host.to_hex()],
            &mut cursor.receipts,
        )?;
        let feedback = self.signed_rows_after(
            &conn,
            "SELECT rowid, signed FROM feedback WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
            params![after.feedback, EVIDENCE_BATCH],
            &mut cursor.feedback,
        )?;
        Ok(Evidence {
            manifests,
            receipts,
            feedback,
            cursor,
        })
    }

    /// The position after every manifest stored so far.
    pub fn manifests_cursor(&self) -> Result<i64, Error> {
        self.conn()
            .query_row("SELECT COALESCE(MAX(rowid), 0) FROM manifests", [], |row| {
                row.get(0)
            })
            .map_err(|e| self.db_error(e))
    }

    /// Verified records from `(rowid, signed)` rows, advancing `cursor` past each.
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
            records.push(Signed::from_bytes(&bytes)?);
            *cursor = rowid;
        }
        Ok(records)
    }

    /// The receipt with this hash, if stored.
    pub fn receipt(&self, hash: &Hash) -> Result<Option<SignedReceipt>, Error> {
        self.query_receipts("WHERE hash = ?1", params![hash.to_hex()], 1)
            .map(|mut found| found.pop())
    }

    /// Receipts about the agent released as `manifest`, newest first, at most `limit`.
    pub fn receipts_for_manifest(
        &self,
        manifest: &Hash,
        limit: usize,
    ) -> Result<Vec<SignedReceipt>, Error> {
        self.query_receipts(
            "WHERE manifest_hash = ?1",
            params![manifest.to_hex()],
            limit,
        )
    }

    /// All receipts, newest first, at most `limit`.
    pub fn receipts(&self, limit: usize) -> Result<Vec<SignedReceipt>, Error> {
        self.query_receipts("", params![], limit)
    }

    /// One host's receipts in chain order (oldest first).
    pub fn receipt_chain(&self, host: &PublicKey) -> Result<Vec<SignedReceipt>, Error> {
        let mut chain =
            self.query_receipts("WHERE host = ?1", params![host.to_hex()], usize::MAX)?;
        chain.sort_by_key(|r| r.body().seq);
        Ok(chain)
    }

    fn query_receipts(
        &self,
        filter: &str,
        params: impl rusqlite::Params,
        limit: usize,
    ) -> Result<Vec<SignedReceipt>, Error> {
        let conn = self.conn();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT signed FROM receipts {filter} ORDER BY timestamp_ms DESC, rowid DESC LIMIT {limit}"
        );
        let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.db_error(e))?;
        let rows = stmt
            .query_map(params, |row| row.get::<_, Vec<u8>>(0))
            .map_err(|e| self.db_error(e))?;
        let mut receipts = Vec::new();
        for bytes in rows {
            let bytes = bytes.map_err(|e| self.db_error(e))?;
            receipts.push(SignedReceipt::from_bytes(&bytes)?);
        }
        Ok(receipts)
    }

    /// Accepts a caller-signed request for `host` to run, at time `now_ms`, or says why not:
    /// addressed to another host, expired, valid for longer than [`MAX_REQUEST_TTL_MS`], or a
    /// replay of a request already accepted. Accepted requests are kept as evidence.
    pub fn admit_request(
        &self,
        request: &SignedRequest,
        host: &PublicKey,
        now_ms: u64,
    ) -> Result<(), Error> {
        let body = request.body();
        if body.host != *host {
            return Err(Error::WrongHost {
                addressed: body.host,
                host: *host,
            });
        }
        if body.expires_at_ms <= now_ms {
            return Err(Error::RequestExpired {
                expired_at_ms: body.expires_at_ms,
                now_ms,
            });
        }
        if body.expires_at_ms - now_ms > MAX_REQUEST_TTL_MS {
            return Err(Error::RequestTooLongLived {
                max_ms: MAX_REQUEST_TTL_MS,
            });
        }
        if body.nonce.len() != 32 || !body.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Malformed {
                kind: "request",
                reason: "nonce must be 32 hex digits (128 bits)".into(),
            });
        }
        let conn = self.conn();
        let inserted = conn
            .execute(
                "INSERT OR IGNORE INTO requests (hash, caller, host, nonce, expires_at_ms, signed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    request.hash().to_hex(),
                    body.caller.to_hex(),
                    body.host.to_hex(),
                    body.nonce,
                    body.expires_at_ms as i64,
                    request.as_bytes(),
                ],
            )
            .map_err(|e| self.db_error(e))?;
        if inserted == 0 {
            return Err(Error::Replayed {
                caller: body.caller,
                nonce: body.nonce.clone(),
            });
        }
        Ok(())
    }

    /// The signed request with this hash, if stored.
    pub fn request(&self, hash: &Hash) -> Result<Option<SignedRequest>, Error> {
        let conn = self.conn();
        let bytes: Option<Vec<u8>> = conn
            .query_row(
                "SELECT signed FROM requests WHERE hash = ?1",
                params![hash.to_hex()],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.db_error(e))?;
        bytes.map(|b| SignedRequest::from_bytes(&b)).transpose()
    }

    /// Stores a caller's feedback if it counts: the receipt is known, the rater is its caller
    /// and neither the agent's publisher nor the host, and it is the first feedback on that
    /// receipt.
    pub fn insert_feedback(&self, feedback: &SignedFeedback) -> Result<Inserted, Error> {
        let body = feedback.body();
        let receipt = self
            .receipt(&body.receipt)?
            .ok_or(Error::UnknownReceipt(body.receipt))?;
        let manifest =
            self.manifest(&receipt.body().agent.manifest)?
                .ok_or(Error::UnknownAgent {
                    reference: receipt.body().agent.manifest.to_hex(),
                })?;
        body.validate(&receipt, &manifest.body().publisher)?;
        let conn = self.conn();
        let existing: Option<String> = conn
            .query_row(
                "SELECT hash FROM feedback WHERE receipt_hash = ?1",
                params![body.receipt.to_hex()],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.db_error(e))?;
        match existing {
            Some(hash) if hash == feedback.hash().to_hex() => return Ok(Inserted::AlreadyPresent),
            Some(_) => return Err(Error::DuplicateFeedback(body.receipt)),
            None => {}
        }
        conn.execute(
            "INSERT INTO feedback (receipt_hash, hash, rater, score, created_at_ms, signed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                body.receipt.to_hex(),
                feedback.hash().to_hex(),
                body.rater.to_hex(),
                i64::from(body.score),
                body.created_at_ms as i64,
                feedback.as_bytes(),
            ],
        )
        .map_err(|e| self.db_error(e))?;
        Ok(Inserted::New)
    }

    /// The feedback on a receipt, if any.
    pub fn feedback(&self, receipt: &Hash) -> Result<Option<SignedFeedback>, Error> {
        let conn = self.conn();
        let bytes: Option<Vec<u8>> = conn
            .query_row(
                "SELECT signed FROM feedback WHERE receipt_hash = ?1",
                params![receipt.to_hex()],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.db_error(e))?;
        bytes.map(|b| SignedFeedback::from_bytes(&b)).transpose()
    }

    /// Everything in the registry that reputation is computed from.
    pub fn evidence_set(&self) -> Result<crate::reputation::EvidenceSet, Error> {
        let manifests = self.manifests()?;
        let receipts = self.query_receipts("", params![], usize::MAX)?;
        let conn = self.conn();
        let mut feedback = Vec::new();
        let mut stmt = conn
            .prepare_cached("SELECT signed FROM feedback ORDER BY rowid")
            .map_err(|e| self.db_error(e))?;
        let rows = stmt
            .query_map([], |row| row.get::<_, Vec<u8>>(0))
            .map_err(|e| self.db_error(e))?;
        for bytes in rows {
            feedback.push(SignedFeedback::from_bytes(
                &bytes.map_err(|e| self.db_error(e))?,
            )?);
        }
        let mut stmt = conn
            .prepare_cached("SELECT DISTINCT host FROM forks")
            .map_err(|e| self.db_error(e))?;
        let rows = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(|e| self.db_error(e))?;
        let mut forked_hosts = std::collections::BTreeSet::new();
        for host in rows {
            forked_hosts.insert(host.map_err(|e| self.db_error(e))?.parse::<PublicKey>()?);
        }
        Ok(crate::reputation::EvidenceSet {
            manifests,
            receipts,
            feedback,
            forked_hosts,
        })
    }

    /// Reads a key from an agent's memory.
    pub fn kv_get(&self, ns: &KvNamespace, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let conn = self.conn();
        conn.query_row(
            "SELECT value FROM agent_kv WHERE publisher = ?1 AND agent = ?2 AND key = ?3",
            params![ns.publisher.to_hex(), ns.agent, key],
            |row| row.get(0),
        )
        .optional()
        .map_err(|e| self.db_error(e))
    }

    /// Writes a key in an agent's memory, within `quota`.
    pub fn kv_set(
        &self,
        ns: &KvNamespace,
        key: &str,
        value: &[u8],
        quota: &KvQuota,
    ) -> Result<(), Error> {
        if key.len() > quota.max_key_bytes {
            return Err(Error::KvQuota(format!(
                "key is {} bytes; the limit is {}",
                key.len(),
                quota.max_key_bytes
            )));
        }
        if value.len() > quota.max_value_bytes {
            return Err(Error::KvQuota(format!(
                "value is {} bytes; the limit is {}",
                value.len(),
                quota.max_value_bytes
            )));
        }
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.db_error(e))?;
        let used_by_others: i64 = tx
            .query_row(
                "SELECT COALESCE(SUM(length(key) + length(value)), 0) FROM agent_kv
                 WHERE publisher = ?1 AND agent = ?2 AND key != ?3",
                params![ns.publisher.to_hex(), ns.agent, key],
                |row| row.get(0),
            )
            .map_err(|e| self.db_error(e))?;
        let total = used_by_others as u64 + (key.len() + value.len()) as u64;
        if total > quota.max_total_bytes {
            return Err(Error::KvQuota(format!(
                "the agent's memory would hold {total} bytes; the quota is {}",
                quota.max_total_bytes
            )));
        }
        tx.execute(
            "INSERT INTO agent_kv (publisher, agent, key, value) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (publisher, agent, key) DO UPDATE SET value = excluded.value",
            params![ns.publisher.to_hex(), ns.agent, key, value],
        )
        .map_err(|e| self.db_error(e))?;
        tx.commit().map_err(|e| self.db_error(e))
    }
}

use crate::signed::Signed;

fn insert_receipt_row(conn: &Connection, receipt: &SignedReceipt) -> rusqlite::Result<usize> {
    let body = receipt.body();
    conn.execute(
        "INSERT OR IGNORE INTO receipts
             (hash, host, seq, prev, manifest_hash, component_hash, outcome, fuel_used,
              timestamp_ms, signed, request_hash, caller)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            receipt.hash().to_hex(),
            body.host.to_hex(),
            body.seq as i64,
            body.prev.map(|h| h.to_hex()),
            body.agent.manifest.to_hex(),
            body.agent.component.to_hex(),
            body.outcome.name(),
            body.fuel_used as i64,
            body.timestamp_ms as i64,
            receipt.as_bytes(),
            body.request.map(|h| h.to_hex()),
            body.caller.map(|c| c.to_hex()),
        ],
    )
}
