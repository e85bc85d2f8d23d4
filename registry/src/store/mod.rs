//! The SQLite registry: one database file per host.
//!
//! Rows that came from signed records keep the exact signed bytes. Every record is verified
//! before it is written, so reads parse the stored bytes without checking signatures again: the
//! database is the host's own, as trusted as the key file beside it.
//!
//! **Concurrency.** SQLite runs in WAL mode, where readers never wait for a writer. All writes go
//! to one writer thread, which commits whatever has queued up in one transaction (group commit),
//! each write inside its own savepoint so that one failing write does not undo the others. Reads
//! take a connection from a pool of read-only connections.
//!
//! **Durability.** A write is acknowledged once its transaction is committed to the WAL
//! (`synchronous = NORMAL`): it survives the host process being killed at any point. The WAL is
//! flushed to the disk at most [`WAL_SYNC_INTERVAL`] after a write, so an operating-system crash
//! or power cut loses at most that much of the latest receipts, feedback and agent memory, and
//! never corrupts the database. Receipt sequence numbers are the exception that cannot be lost:
//! they are reserved in blocks of [`RECEIPT_SEQ_BLOCK`](crate::RECEIPT_SEQ_BLOCK), each
//! reservation flushed before the receipt that takes it is handed out, and a registry opened
//! after an unclean shutdown continues its host's chain past the reservation (a declared skip),
//! so a host never signs two receipts with one sequence number, whatever it lost.

//!
//! The parts: [`schema`] (migrations), [`records`] (storing and reading signed records),
//! [`ingest`] (checking evidence from other keys against what it refers to), [`chain`]
//! (hosts' receipt chains and the evidence against keys), [`evidence`] (reading
//! evidence back for peers and for scores) and [`kv`] (agents' memory).

mod chain;
mod evidence;
mod ingest;
mod kv;
mod records;
mod schema;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::Error;

pub use chain::{Fork, HostRecord, Misbehaviour};
pub use evidence::{Evidence, EvidenceCursor};
pub use ingest::MAX_PENDING_PER_KEY;
pub use kv::{KvNamespace, KvQuota};
pub use records::MAX_MANIFESTS_PER_STRANGER;
pub use records::{ReceiptCursor, ReceiptPage};

/// Most writes committed in one transaction.
const MAX_WRITE_BATCH: usize = 1024;
/// Idle read connections kept open.
const MAX_IDLE_READERS: usize = 16;
/// How long a connection waits for a lock held by another process before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a committed write waits to be flushed to the disk: what a power cut can lose.
pub const WAL_SYNC_INTERVAL: Duration = Duration::from_millis(200);

thread_local! {
    /// Set by a write on the writer thread that must be on the disk, not just committed,
    /// before it is answered (a receipt sequence reservation).
    static SYNC_BEFORE_ANSWERING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Asks the writer thread to flush the WAL to the disk before answering the current batch.
fn sync_before_answering() {
    SYNC_BEFORE_ANSWERING.set(true);
}

/// Whether an insert stored something new.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// The record was new and is now stored.
    New,
    /// The same record was already stored; nothing changed.
    AlreadyPresent,
    /// The record refers to one not yet here (feedback before its receipt, a receipt before
    /// its manifest); it is kept, bounded, and stored once that arrives.
    Pending,
}

/// A host's registry of manifests, receipts and agent memory.
///
/// Writes are serialised on a writer thread and committed in batches; an acknowledged write
/// survives the process being killed, and a power cut loses at most [`WAL_SYNC_INTERVAL`] of
/// writes (see the module docs for the contract). Reads come from a pool of read-only
/// connections and never wait for writes.
pub struct Registry {
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    writer: Option<mpsc::Sender<Box<dyn WriteJob>>>,
    writer_thread: Option<JoinHandle<()>>,
    /// Keys whose records are not held to the quotas on strangers: this host's own and those
    /// its operator trusts.
    trusted: std::sync::RwLock<Vec<crate::PublicKey>>,
    /// Records refused because their signer was over a quota.
    over_quota: std::sync::atomic::AtomicU64,
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
        // larger page cache (256 MiB) than SQLite's 2 MiB default keeps ingest from slowing to the speed
        // of the disk as the registry grows.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = ON;
             PRAGMA cache_size = -262144;",
        )
        .map_err(db_error)?;
        schema::migrate(&mut conn, path)?;
        // If the last process did not close cleanly it may have signed receipts it lost: its
        // chain continues past everything it reserved.
        conn.execute_batch("UPDATE receipt_seq SET next = MAX(next, reserved_until)")
            .map_err(db_error)?;
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
            trusted: std::sync::RwLock::new(Vec::new()),
            over_quota: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Exempts these keys (this host's own, its operator's trusted publishers and anchors) from
    /// the quotas on strangers, as well as any exempted before.
    pub fn trust(&self, keys: impl IntoIterator<Item = crate::PublicKey>) {
        let mut trusted = self.trusted.write().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            if !trusted.contains(&key) {
                trusted.push(key);
            }
        }
    }

    fn is_trusted(&self, key: &crate::PublicKey) -> bool {
        self.trusted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }

    /// How many records were refused since the registry opened because their signer was over
    /// a quota ([`MAX_MANIFESTS_PER_STRANGER`], [`MAX_PENDING_PER_KEY`]).
    pub fn refused_over_quota(&self) -> u64 {
        self.over_quota.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn counted<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        if let Err(Error::Quota { .. }) = &result {
            self.over_quota
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    fn count_quota<T>(&self, answers: Vec<Result<T, Error>>) -> Vec<Result<T, Error>> {
        answers.into_iter().map(|a| self.counted(a)).collect()
    }

    fn db_error(&self, source: rusqlite::Error) -> Error {
        db_error(&self.path, source)
    }

    fn corrupt(&self, what: &str) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            what: format!("{what} out of range"),
        }
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

/// Column `i` of `row` as text.
fn text<'r>(row: &'r rusqlite::Row<'_>, i: usize) -> rusqlite::Result<&'r str> {
    row.get_ref(i)?.as_str().map_err(Into::into)
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
/// each caller, and repeats until the registry is dropped; then releases its receipt sequence
/// reservations (a clean shutdown, so the next open continues without a skip).
fn write_loop(conn: Connection, path: &Path, jobs: mpsc::Receiver<Box<dyn WriteJob>>) {
    let wal = wal_path(path);
    let mut unsynced = false;
    loop {
        let first = match jobs.recv_timeout(WAL_SYNC_INTERVAL) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if unsynced {
                    unsynced = sync_wal(&wal).is_err();
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_WRITE_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        SYNC_BEFORE_ANSWERING.set(false);
        let mut committed = commit_batch(&conn, path, &mut batch);
        if let Err(error) = &committed {
            tracing::error!(%error, writes = batch.len(), "registry transaction failed");
            let _ = conn.execute_batch("ROLLBACK");
        } else if SYNC_BEFORE_ANSWERING.replace(false) {
            committed = sync_wal(&wal).map_err(|e| {
                tracing::error!(error = %e, "cannot flush the registry's WAL");
                rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_FSYNC),
                    Some(format!("flushing {}: {e}", wal.display())),
                )
            });
            unsynced = committed.is_err();
        } else {
            unsynced = true;
        }
        for job in batch {
            job.finish(path, committed.as_ref().map(|_| ()));
        }
    }
    let released = conn
        .execute_batch("UPDATE receipt_seq SET reserved_until = next")
        .map_err(|e| e.to_string())
        .and_then(|()| sync_wal(&wal).map_err(|e| e.to_string()));
    if let Err(error) = released {
        // The next open skips ahead; nothing is lost.
        tracing::warn!(%error, "cannot release receipt sequence reservations");
    }
}

fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Flushes the WAL file to the disk: every transaction committed so far becomes durable.
fn sync_wal(wal: &Path) -> std::io::Result<()> {
    match std::fs::File::open(wal) {
        Ok(file) => file.sync_data(),
        // Checkpointed away and deleted: everything is already in the database file, which
        // SQLite syncs when it checkpoints.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
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
