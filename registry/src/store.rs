//! The SQLite registry: one database file per host.
//!
//! Rows that came from signed records keep the exact signed bytes. Every record is verified
//! before it is written, so reads parse the stored bytes without checking signatures again: the
//! database is the host's own, as trusted as the key file beside it.
//!
//! **Concurrency.** SQLite runs in WAL mode, where readers never wait for a writer. All writes go
//! to one writer thread, which commits whatever has queued up in one transaction (group commit:
//! one fsync for many receipts), each write inside its own savepoint so that one failing write
//! does not undo the others. Reads take a connection from a pool of read-only connections.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::evidence::{MAX_REQUEST_TTL_MS, SignedFeedback, SignedRequest};
use crate::identity::{PublicKey, SecretKey};
use crate::manifest::SignedManifest;
use crate::receipt::{Receipt, SignedReceipt};
use crate::reputation::{AgentFacts, Call, CallOutcome, EvidenceSet, Rating};
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
    // 4: the receipt fields scores are computed from, as columns, so that a million receipts can
    // be scored without parsing their JSON; and paging of an agent's receipts by arrival.
    "ALTER TABLE receipts ADD COLUMN fuel_limit INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE receipts ADD COLUMN charge INTEGER NOT NULL DEFAULT 0;
     UPDATE receipts SET
         fuel_limit = json_extract(CAST(signed AS TEXT), '$.body.fuel_limit'),
         charge = json_extract(CAST(signed AS TEXT), '$.body.charge');
     CREATE INDEX receipts_by_manifest_arrival ON receipts(manifest_hash);",
    // 5: indexes no query uses any more; each one slowed every receipt insert.
    "DROP INDEX receipts_by_manifest;
     DROP INDEX receipts_by_component;",
];

/// Most writes committed in one transaction.
const MAX_WRITE_BATCH: usize = 1024;
/// Idle read connections kept open.
const MAX_IDLE_READERS: usize = 16;
/// How long a connection waits for a lock held by another process before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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

/// One page of receipts; see [`Registry::receipts_page`].
#[derive(Clone, Debug)]
pub struct ReceiptPage {
    /// The signed receipts as stored (canonical JSON envelopes), newest arrival first. Serving
    /// them needs no parsing; [`ReceiptPage::parse`] gives the records.
    pub receipts: Vec<Vec<u8>>,
    /// Where the next (older) page starts, if there may be one.
    pub next: Option<ReceiptCursor>,
}

impl ReceiptPage {
    /// The page's receipts as records.
    pub fn parse(&self) -> Result<Vec<SignedReceipt>, Error> {
        self.receipts
            .iter()
            .map(|bytes| SignedReceipt::from_stored(bytes))
            .collect()
    }
}

/// A position in a list of receipts, opaque to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiptCursor(i64);

impl std::fmt::Display for ReceiptCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for ReceiptCursor {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        s.parse::<i64>()
            .ok()
            .filter(|row| *row > 0)
            .map(ReceiptCursor)
            .ok_or_else(|| Error::Malformed {
                kind: "cursor",
                reason: format!(
                    "`{}` is not a cursor this host returned",
                    s.chars().take(32).collect::<String>()
                ),
            })
    }
}

/// What this registry holds about one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRecord {
    /// Receipts the host signed.
    pub receipts: u64,
    /// The highest sequence number seen and its receipt.
    pub head: Option<(u64, Hash)>,
    /// The timestamps of its first and latest receipts (by sequence number), in milliseconds
    /// since the Unix epoch.
    pub active_ms: Option<(u64, u64)>,
    /// Forks in its receipt chain.
    pub forks: Vec<Fork>,
}

/// A host's registry of manifests, receipts and agent memory.
///
/// Writes are serialised on a writer thread and committed in batches; SQLite runs in WAL mode
/// with `synchronous = FULL`, so an acknowledged write survives a power cut. Reads come from a
/// pool of read-only connections and never wait for writes.
pub struct Registry {
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    writer: Option<mpsc::Sender<Box<dyn WriteJob>>>,
    writer_thread: Option<JoinHandle<()>>,
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
        let mut conn = Connection::open(path).map_err(db_error)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db_error)?;
        // The writer inserts into indexes keyed by hashes, which land on random pages: a
        // larger page cache than SQLite's 2 MiB default keeps ingest from slowing to the speed
        // of the disk as the registry grows.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA cache_size = -65536;",
        )
        .map_err(db_error)?;
        migrate(&mut conn, path)?;
        let (writer, jobs) = mpsc::channel();
        let thread_path = path.to_owned();
        let writer_thread = std::thread::Builder::new()
            .name("agora-registry-writer".into())
            .spawn(move || write_loop(conn, &thread_path, jobs))
            .map_err(|e| Error::WriteFailed {
                path: path.to_owned(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Registry {
            path: path.to_owned(),
            readers: Mutex::new(Vec::new()),
            writer: Some(writer),
            writer_thread: Some(writer_thread),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db_error(&self, source: rusqlite::Error) -> Error {
        db_error(&self.path, source)
    }

    /// Runs `read` on a pooled read-only connection. Readers see the last committed state and
    /// never wait for the writer.
    fn read<R>(&self, read: impl FnOnce(&Connection) -> Result<R, Error>) -> Result<R, Error> {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(|e| self.db_error(e))?;
                conn.busy_timeout(BUSY_TIMEOUT)
                    .map_err(|e| self.db_error(e))?;
                conn.execute_batch("PRAGMA cache_size = -16384;")
                    .map_err(|e| self.db_error(e))?;
                conn
            }
        };
        let result = read(&conn);
        let mut idle = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        result
    }

    /// Runs `write` on the writer thread inside a transaction shared with whatever other writes
    /// are queued, and returns once that transaction is durable. If `write` fails, its changes
    /// are rolled back and the others still commit.
    fn write<R: Send + 'static>(
        &self,
        write: impl FnOnce(&Connection, &Path) -> Result<R, Error> + Send + 'static,
    ) -> Result<R, Error> {
        let stopped = || Error::WriteFailed {
            path: self.path.clone(),
            reason: "the writer thread has stopped".into(),
        };
        let (reply, answer) = mpsc::sync_channel(1);
        let job = Box::new(Job {
            work: Some(write),
            outcome: None,
            reply,
        });
        self.writer
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())?;
        answer.recv().map_err(|_| stopped())?
    }

    /// Stores a verified manifest.
    ///
    /// Releases are immutable: if the publisher already released a different manifest under the
    /// same name and version, this fails with [`Error::ReleaseConflict`], unless that manifest names the same component,
    /// in which case the earlier release stands and [`Inserted::AlreadyPresent`] is returned.
    pub fn insert_manifest(&self, manifest: &SignedManifest) -> Result<Inserted, Error> {
        let manifest = manifest.clone();
        self.write(move |conn, path| {
            let db = |e| db_error(path, e);
            let body = manifest.body();
            let existing: Option<(String, String)> = conn
                .query_row(
                    "SELECT hash, component_hash FROM manifests
                     WHERE publisher = ?1 AND name = ?2 AND version = ?3",
                    params![body.publisher.to_hex(), body.name, body.version],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(db)?;
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
            conn.execute(
                "INSERT OR IGNORE INTO publishers (key, first_seen) VALUES (?1, ?2)",
                params![body.publisher.to_hex(), body.created_at as i64],
            )
            .map_err(db)?;
            conn.execute(
                "INSERT INTO manifests
                     (hash, name, version, publisher, component_hash, component_size, created_at,
                      signed)
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
            .map_err(db)?;
            Ok(Inserted::New)
        })
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

    /// Every manifest `publisher` released, newest first.
    pub fn manifests_by(&self, publisher: &PublicKey) -> Result<Vec<SignedManifest>, Error> {
        self.query_manifests("WHERE publisher = ?1", params![publisher.to_hex()])
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
        let sql =
            format!("SELECT signed FROM manifests {filter} ORDER BY created_at DESC, rowid DESC");
        self.read(|conn| self.stored_records(conn, &sql, params))
    }

    /// Parses the records in the first column of `sql`'s rows.
    fn stored_records<T: crate::Record>(
        &self,
        conn: &Connection,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Signed<T>>, Error> {
        let mut stmt = conn.prepare_cached(sql).map_err(|e| self.db_error(e))?;
        let rows = stmt
            .query_map(params, |row| row.get::<_, Vec<u8>>(0))
            .map_err(|e| self.db_error(e))?;
        let mut records = Vec::new();
        for bytes in rows {
            let bytes = bytes.map_err(|e| self.db_error(e))?;
            records.push(Signed::from_stored(&bytes)?);
        }
        Ok(records)
    }

    /// Signs and stores this host's next receipt: `receipt` with its `seq` and `prev` set to
    /// follow the host's last receipt. Appends are serialised, so the chain never forks on one
    /// host.
    pub fn append_receipt(
        &self,
        host_key: &SecretKey,
        mut receipt: Receipt,
    ) -> Result<SignedReceipt, Error> {
        let host_key = host_key.clone();
        self.write(move |conn, path| {
            let last: Option<(i64, String)> = conn
                .query_row(
                    "SELECT seq, hash FROM receipts WHERE host = ?1 ORDER BY seq DESC LIMIT 1",
                    params![host_key.public().to_hex()],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(|e| db_error(path, e))?;
            let (seq, prev) = match last {
                Some((seq, hash)) => (seq as u64 + 1, Some(parse_stored(path, &hash)?)),
                None => (0, None),
            };
            receipt.seq = seq;
            receipt.prev = prev;
            let receipt = Signed::sign(receipt, &host_key)?;
            insert_receipt_row(conn, &receipt).map_err(|e| db_error(path, e))?;
            Ok(receipt)
        })
    }

    /// Stores a verified receipt from any host (for example one received from a peer). A
    /// receipt whose host already signed a different receipt with the same sequence number is
    /// stored too, and the pair is recorded as a [`Fork`].
    pub fn insert_receipt(&self, receipt: &SignedReceipt) -> Result<Inserted, Error> {
        let mut inserted = self.insert_receipts(vec![receipt.clone()])?;
        Ok(inserted.pop().unwrap_or(Inserted::AlreadyPresent))
    }

    /// Stores many verified receipts in one transaction (see [`Signed::from_bytes_batch`] for
    /// verifying them), saying for each whether it was new.
    pub fn insert_receipts(&self, receipts: Vec<SignedReceipt>) -> Result<Vec<Inserted>, Error> {
        self.write(move |conn, path| {
            let db = |e| db_error(path, e);
            let mut inserted = Vec::with_capacity(receipts.len());
            for receipt in &receipts {
                let body = receipt.body();
                if insert_receipt_row(conn, receipt).map_err(db)? == 0 {
                    inserted.push(Inserted::AlreadyPresent);
                    continue;
                }
                inserted.push(Inserted::New);
                let first: Option<String> = conn
                    .prepare_cached(
                        "SELECT hash FROM receipts WHERE host = ?1 AND seq = ?2 AND hash != ?3
                         ORDER BY rowid LIMIT 1",
                    )
                    .and_then(|mut stmt| {
                        stmt.query_row(
                            params![body.host.to_hex(), body.seq as i64, receipt.hash().to_hex()],
                            |row| row.get(0),
                        )
                        .optional()
                    })
                    .map_err(db)?;
                if let Some(first) = first {
                    tracing::warn!(host = %body.host, seq = body.seq, "host forked its receipt chain");
                    conn.execute(
                        "INSERT OR IGNORE INTO forks (host, seq, receipt_a, receipt_b)
                         VALUES (?1, ?2, ?3, ?4)",
                        params![body.host.to_hex(), body.seq as i64, first, receipt.hash().to_hex()],
                    )
                    .map_err(db)?;
                }
            }
            Ok(inserted)
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
        self.read(|conn| {
            let db = |e| self.db_error(e);
            let key = host.to_hex();
            // Everything comes from the (host, seq) index: a count over it, and its two ends.
            let receipts: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM receipts WHERE host = ?1")
                .and_then(|mut stmt| stmt.query_row(params![key], |row| row.get(0)))
                .map_err(db)?;
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
                head,
                active_ms: first
                    .zip(last)
                    .map(|(first, last)| (first.2 as u64, last.2 as u64)),
                forks,
            })
        })
    }

    /// Manifests, receipts signed by `host`, and feedback stored after `after`, with the
    /// position to continue from: what a host has not yet told its peers.
    pub fn evidence_since(
        &self,
        host: &PublicKey,
        after: EvidenceCursor,
    ) -> Result<Evidence, Error> {
        self.read(|conn| {
            let mut cursor = after;
            let manifests = self.signed_rows_after(
                conn,
                "SELECT rowid, signed FROM manifests WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
                params![after.manifests, EVIDENCE_BATCH],
                &mut cursor.manifests,
            )?;
            let receipts = self.signed_rows_after(
                conn,
                "SELECT rowid, signed FROM receipts WHERE rowid > ?1 AND host = ?3
                 ORDER BY rowid LIMIT ?2",
                params![after.receipts, EVIDENCE_BATCH, host.to_hex()],
                &mut cursor.receipts,
            )?;
            let feedback = self.signed_rows_after(
                conn,
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
        })
    }

    /// The position after every manifest stored so far.
    pub fn manifests_cursor(&self) -> Result<i64, Error> {
        Ok(self.evidence_cursor()?.manifests)
    }

    /// The position after every manifest, receipt and feedback stored so far: it changes
    /// whenever evidence arrives, so it tells when scores are stale.
    pub fn evidence_cursor(&self) -> Result<EvidenceCursor, Error> {
        self.read(|conn| {
            conn.query_row(
                "SELECT (SELECT COALESCE(MAX(rowid), 0) FROM manifests),
                        (SELECT COALESCE(MAX(rowid), 0) FROM receipts),
                        (SELECT COALESCE(MAX(rowid), 0) FROM feedback)",
                [],
                |row| {
                    Ok(EvidenceCursor {
                        manifests: row.get(0)?,
                        receipts: row.get(1)?,
                        feedback: row.get(2)?,
                    })
                },
            )
            .map_err(|e| self.db_error(e))
        })
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

    /// The receipt with this hash, if stored.
    pub fn receipt(&self, hash: &Hash) -> Result<Option<SignedReceipt>, Error> {
        self.query_receipts("WHERE hash = ?1", params![hash.to_hex()], 1)
            .map(|mut found| found.pop())
    }

    /// Receipts about the agent released as `manifest`, newest arrival first: at most `limit`,
    /// starting after `after` (a cursor from the previous page).
    pub fn receipts_page(
        &self,
        manifest: &Hash,
        after: Option<ReceiptCursor>,
        limit: usize,
    ) -> Result<ReceiptPage, Error> {
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let before = after.map_or(i64::MAX, |cursor| cursor.0);
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT rowid, signed FROM receipts INDEXED BY receipts_by_manifest_arrival
                     WHERE manifest_hash = ?1 AND rowid < ?2 ORDER BY rowid DESC LIMIT ?3",
                )
                .map_err(|e| self.db_error(e))?;
            let rows = stmt
                .query_map(params![manifest.to_hex(), before, limit], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
                })
                .map_err(|e| self.db_error(e))?;
            let mut receipts = Vec::new();
            let mut last = None;
            for row in rows {
                let (rowid, bytes) = row.map_err(|e| self.db_error(e))?;
                receipts.push(bytes);
                last = Some(ReceiptCursor(rowid));
            }
            let next = if receipts.len() as i64 == limit {
                last
            } else {
                None
            };
            Ok(ReceiptPage { receipts, next })
        })
    }

    /// All receipts, newest arrival first, at most `limit`.
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
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!("SELECT signed FROM receipts {filter} ORDER BY rowid DESC LIMIT {limit}");
        self.read(|conn| self.stored_records(conn, &sql, params))
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
        let request = request.clone();
        self.write(move |conn, path| {
            let body = request.body();
            let inserted = conn
                .execute(
                    "INSERT OR IGNORE INTO requests
                         (hash, caller, host, nonce, expires_at_ms, signed)
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
                .map_err(|e| db_error(path, e))?;
            if inserted == 0 {
                return Err(Error::Replayed {
                    caller: body.caller,
                    nonce: body.nonce.clone(),
                });
            }
            Ok(())
        })
    }

    /// The signed request with this hash, if stored.
    pub fn request(&self, hash: &Hash) -> Result<Option<SignedRequest>, Error> {
        self.read(|conn| {
            self.stored_records(
                conn,
                "SELECT signed FROM requests WHERE hash = ?1",
                params![hash.to_hex()],
            )
        })
        .map(|mut found| found.pop())
    }

    /// Stores a caller's feedback if it counts: the receipt is known, the rater is its caller
    /// and neither the agent's publisher nor the host, and it is the first feedback on that
    /// receipt.
    pub fn insert_feedback(&self, feedback: &SignedFeedback) -> Result<Inserted, Error> {
        self.insert_feedback_batch(vec![feedback.clone()])?
            .pop()
            .unwrap_or(Ok(Inserted::AlreadyPresent))
    }

    /// Stores many feedback records in one transaction. Each gets its own answer, as
    /// [`Registry::insert_feedback`] would give; the outer error is a database failure.
    pub fn insert_feedback_batch(
        &self,
        batch: Vec<SignedFeedback>,
    ) -> Result<Vec<Result<Inserted, Error>>, Error> {
        let mut checked = Vec::with_capacity(batch.len());
        for feedback in batch {
            checked.push(self.check_feedback(&feedback).map(|()| feedback));
        }
        self.write(move |conn, path| {
            let db = |e| db_error(path, e);
            let mut answers = Vec::with_capacity(checked.len());
            for feedback in checked {
                let feedback = match feedback {
                    Ok(feedback) => feedback,
                    Err(refused) => {
                        answers.push(Err(refused));
                        continue;
                    }
                };
                let body = feedback.body();
                let existing: Option<String> = conn
                    .prepare_cached("SELECT hash FROM feedback WHERE receipt_hash = ?1")
                    .and_then(|mut stmt| {
                        stmt.query_row(params![body.receipt.to_hex()], |row| row.get(0))
                            .optional()
                    })
                    .map_err(db)?;
                match existing {
                    Some(hash) if hash == feedback.hash().to_hex() => {
                        answers.push(Ok(Inserted::AlreadyPresent));
                        continue;
                    }
                    Some(_) => {
                        answers.push(Err(Error::DuplicateFeedback(body.receipt)));
                        continue;
                    }
                    None => {}
                }
                conn.prepare_cached(
                    "INSERT INTO feedback (receipt_hash, hash, rater, score, created_at_ms, signed)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        body.receipt.to_hex(),
                        feedback.hash().to_hex(),
                        body.rater.to_hex(),
                        i64::from(body.score),
                        body.created_at_ms as i64,
                        feedback.as_bytes(),
                    ])
                })
                .map_err(db)?;
                answers.push(Ok(Inserted::New));
            }
            Ok(answers)
        })
    }

    /// Whether `feedback` counts: its receipt and agent are known and it passes
    /// [`crate::Feedback::validate`].
    fn check_feedback(&self, feedback: &SignedFeedback) -> Result<(), Error> {
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
        Ok(())
    }

    /// The feedback on a receipt, if any.
    pub fn feedback(&self, receipt: &Hash) -> Result<Option<SignedFeedback>, Error> {
        self.read(|conn| {
            self.stored_records(
                conn,
                "SELECT signed FROM feedback WHERE receipt_hash = ?1",
                params![receipt.to_hex()],
            )
        })
        .map(|mut found| found.pop())
    }

    /// Everything in the registry that reputation is computed from, read from columns rather
    /// than by parsing each record, so that it stays fast with millions of receipts.
    pub fn evidence_set(&self) -> Result<EvidenceSet, Error> {
        let mut evidence = EvidenceSet::default();
        self.update_evidence(&mut evidence, EvidenceCursor::default())?;
        Ok(evidence)
    }

    /// Brings `evidence`, read up to `since`, up to date: adds the receipts and feedback stored
    /// after `since` and rereads the (few) manifests and forks. Returns the cursor it is now
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
            let cursor: EvidenceCursor = conn
                .query_row(
                    "SELECT (SELECT COALESCE(MAX(rowid), 0) FROM manifests),
                            (SELECT COALESCE(MAX(rowid), 0) FROM receipts),
                            (SELECT COALESCE(MAX(rowid), 0) FROM feedback)",
                    [],
                    |row| {
                        Ok(EvidenceCursor {
                            manifests: row.get(0)?,
                            receipts: row.get(1)?,
                            feedback: row.get(2)?,
                        })
                    },
                )
                .map_err(db)?;
            let mut keys = KeyInterner::new(&self.path);
            let mut agents = std::collections::BTreeMap::new();
            let mut stmt = conn
                .prepare_cached(
                    "SELECT hash, publisher, component_hash,
                            json_extract(CAST(signed AS TEXT), '$.body.limits.max_fuel')
                     FROM manifests",
                )
                .map_err(db)?;
            let mut rows = stmt.query([]).map_err(db)?;
            while let Some(row) = rows.next().map_err(db)? {
                let hash: String = row.get(0).map_err(db)?;
                let publisher: String = row.get(1).map_err(db)?;
                let component: String = row.get(2).map_err(db)?;
                agents.insert(
                    parse_stored(&self.path, &hash)?,
                    AgentFacts {
                        publisher: keys.get(&publisher)?,
                        component: parse_stored(&self.path, &component)?,
                        max_fuel: row.get::<_, i64>(3).map_err(db)? as u64,
                    },
                );
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
                let text = |i| {
                    row.get_ref(i)
                        .and_then(|v| v.as_str().map_err(Into::into))
                        .map_err(db)
                };
                ratings.push((
                    parse_stored(&self.path, text(0)?)?,
                    Rating {
                        rater: keys.get(text(1)?)?,
                        score: row.get::<_, i64>(2).map_err(db)?.clamp(0, 100) as u8,
                    },
                ));
            }
            let mut calls = Vec::new();
            let mut stmt = conn
                .prepare_cached(
                    "SELECT hash, host, caller, manifest_hash, component_hash, outcome,
                            fuel_limit, charge, timestamp_ms
                     FROM receipts WHERE rowid > ?1 AND rowid <= ?2",
                )
                .map_err(db)?;
            let mut rows = stmt
                .query(params![since.receipts, cursor.receipts])
                .map_err(db)?;
            while let Some(row) = rows.next().map_err(db)? {
                let text = |i| {
                    row.get_ref(i)
                        .and_then(|v| v.as_str().map_err(Into::into))
                        .map_err(db)
                };
                let optional = |i| {
                    row.get_ref(i)
                        .and_then(|v| v.as_str_or_null().map_err(Into::into))
                        .map_err(db)
                };
                let outcome = text(5)?;
                calls.push(Call {
                    receipt: parse_stored(&self.path, text(0)?)?,
                    host: keys.get(text(1)?)?,
                    caller: optional(2)?.map(|c| keys.get(c)).transpose()?,
                    manifest: parse_stored(&self.path, text(3)?)?,
                    component: parse_stored(&self.path, text(4)?)?,
                    outcome: CallOutcome::from_name(outcome).ok_or_else(|| Error::Corrupt {
                        path: self.path.clone(),
                        what: format!("unknown receipt outcome `{outcome}`"),
                    })?,
                    fuel_limit: row.get::<_, i64>(6).map_err(db)? as u64,
                    charge: row.get::<_, i64>(7).map_err(db)? as u64,
                    timestamp_ms: row.get::<_, i64>(8).map_err(db)? as u64,
                    rating: None,
                });
            }
            let mut forked_hosts = std::collections::BTreeSet::new();
            let mut stmt = conn
                .prepare_cached("SELECT DISTINCT host FROM forks")
                .map_err(db)?;
            let mut rows = stmt.query([]).map_err(db)?;
            while let Some(row) = rows.next().map_err(db)? {
                forked_hosts.insert(
                    keys.get(
                        row.get_ref(0)
                            .and_then(|v| v.as_str().map_err(Into::into))
                            .map_err(db)?,
                    )?,
                );
            }
            evidence.update(agents, calls, ratings, forked_hosts);
            Ok(cursor)
        })
    }

    /// Reads a key from an agent's memory.
    pub fn kv_get(&self, ns: &KvNamespace, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.read(|conn| {
            conn.query_row(
                "SELECT value FROM agent_kv WHERE publisher = ?1 AND agent = ?2 AND key = ?3",
                params![ns.publisher.to_hex(), ns.agent, key],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.db_error(e))
        })
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
        let (ns, key, value, max_total) = (
            ns.clone(),
            key.to_owned(),
            value.to_vec(),
            quota.max_total_bytes,
        );
        self.write(move |conn, path| {
            let db = |e| db_error(path, e);
            let used_by_others: i64 = conn
                .query_row(
                    "SELECT COALESCE(SUM(length(key) + length(value)), 0) FROM agent_kv
                     WHERE publisher = ?1 AND agent = ?2 AND key != ?3",
                    params![ns.publisher.to_hex(), ns.agent, key],
                    |row| row.get(0),
                )
                .map_err(db)?;
            let total = used_by_others as u64 + (key.len() + value.len()) as u64;
            if total > max_total {
                return Err(Error::KvQuota(format!(
                    "the agent's memory would hold {total} bytes; the quota is {max_total}"
                )));
            }
            conn.execute(
                "INSERT INTO agent_kv (publisher, agent, key, value) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (publisher, agent, key) DO UPDATE SET value = excluded.value",
                params![ns.publisher.to_hex(), ns.agent, key, value],
            )
            .map_err(db)?;
            Ok(())
        })
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and exit; waiting for it
        // means the database is closed when the registry is gone.
        drop(self.writer.take());
        if let Some(thread) = self.writer_thread.take() {
            let _ = thread.join();
        }
    }
}

fn db_error(path: &Path, source: rusqlite::Error) -> Error {
    Error::Database {
        path: path.to_owned(),
        source,
    }
}

/// Parses a hash or key this registry wrote.
fn parse_stored<T: std::str::FromStr>(path: &Path, text: &str) -> Result<T, Error>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e: T::Err| Error::Corrupt {
        path: path.to_owned(),
        what: e.to_string(),
    })
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

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), Error> {
    let db = |e| db_error(path, e);
    let applied: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(db)?;
    let applied = usize::try_from(applied).unwrap_or(usize::MAX);
    if applied > MIGRATIONS.len() {
        return Err(Error::SchemaTooNew {
            path: path.to_owned(),
            found: applied,
            supported: MIGRATIONS.len(),
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction().map_err(db)?;
        tx.execute_batch(sql).map_err(db)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)
            .map_err(db)?;
        tx.commit().map_err(db)?;
        tracing::debug!(migration = index + 1, "applied registry migration");
    }
    Ok(())
}

/// A write queued for the writer thread.
trait WriteJob: Send {
    /// Runs the write; returns whether it succeeded (and its changes are to be kept).
    fn run(&mut self, conn: &Connection, path: &Path) -> bool;
    /// Answers the caller once the transaction has committed or failed.
    fn finish(self: Box<Self>, path: &Path, committed: Result<(), &rusqlite::Error>);
}

struct Job<F, R> {
    work: Option<F>,
    outcome: Option<Result<R, Error>>,
    reply: mpsc::SyncSender<Result<R, Error>>,
}

impl<F, R> WriteJob for Job<F, R>
where
    F: FnOnce(&Connection, &Path) -> Result<R, Error> + Send,
    R: Send,
{
    fn run(&mut self, conn: &Connection, path: &Path) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| work(conn, path)))
            .unwrap_or_else(|_| {
                Err(Error::WriteFailed {
                    path: path.to_owned(),
                    reason: "the write panicked and was rolled back".into(),
                })
            });
        let succeeded = outcome.is_ok();
        self.outcome = Some(outcome);
        succeeded
    }

    fn finish(self: Box<Self>, path: &Path, committed: Result<(), &rusqlite::Error>) {
        let answer = match (self.outcome, committed) {
            (Some(Err(error)), _) => Err(error),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (_, Err(error)) => Err(Error::WriteFailed {
                path: path.to_owned(),
                reason: format!("the transaction did not commit: {error}"),
            }),
            (None, Ok(())) => Err(Error::WriteFailed {
                path: path.to_owned(),
                reason: "the write was never run".into(),
            }),
        };
        // The caller may have given up waiting; then nobody needs the answer.
        let _ = self.reply.send(answer);
    }
}

/// The writer thread: takes every write queued so far, commits them in one transaction, answers
/// each caller, and repeats until the registry is dropped.
fn write_loop(conn: Connection, path: &Path, jobs: mpsc::Receiver<Box<dyn WriteJob>>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_WRITE_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let committed = commit_batch(&conn, path, &mut batch);
        if let Err(error) = &committed {
            tracing::error!(%error, writes = batch.len(), "registry transaction failed");
            let _ = conn.execute_batch("ROLLBACK");
        }
        for job in batch {
            job.finish(path, committed.as_ref().map(|_| ()));
        }
    }
}

fn commit_batch(
    conn: &Connection,
    path: &Path,
    batch: &mut [Box<dyn WriteJob>],
) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    for job in batch.iter_mut() {
        conn.execute_batch("SAVEPOINT job")?;
        if !job.run(conn, path) {
            conn.execute_batch("ROLLBACK TO job")?;
        }
        conn.execute_batch("RELEASE job")?;
    }
    conn.execute_batch("COMMIT")
}

use crate::signed::Signed;

fn insert_receipt_row(conn: &Connection, receipt: &SignedReceipt) -> rusqlite::Result<usize> {
    let body = receipt.body();
    conn.prepare_cached(
        "INSERT OR IGNORE INTO receipts
             (hash, host, seq, prev, manifest_hash, component_hash, outcome, fuel_used,
              timestamp_ms, signed, request_hash, caller, fuel_limit, charge)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
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
        body.fuel_limit as i64,
        body.charge as i64,
    ])
}
