//! The SQLite registry: one database file per host.
//!
//! Rows that came from signed records keep the exact signed bytes. Every record is verified
//! before it is written, so reads parse the stored bytes without checking signatures again: the
//! database is the host's own, as trusted as the key file beside it.
//!
//! **Concurrency.** SQLite runs in WAL mode, where readers never wait for a writer. Writes queue
//! for one write connection, and whoever holds it commits whatever has queued up in one
//! transaction (group commit), each write inside its own savepoint so that one failing write does
//! not undo the others: the writing caller itself when the connection is free (no hand-off to
//! another thread), the writer thread when writes pile up (see [`writer`]). Reads
//! take a connection from a pool of read-only connections. A third thread copies the WAL into
//! the database file once it has grown (a checkpoint), so no commit waits for one.
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
//! A host may instead hand its receipts out as soon as they are signed
//! ([`ReceiptDurability::Pipelined`], see [`pipeline`]): the commit follows in the writer's next
//! group commit, so a crash of the process can also lose the host's copy of the receipts it
//! handed out in the last moments (never a sequence number: the same reservations hold). Such a
//! process is the only one signing for the database, and reads in it wait for those commits.

//!
//! The parts: [`schema`] (migrations), [`records`] (storing and reading signed records),
//! [`ingest`] (checking evidence from other keys against what it refers to), [`pending`]
//! (evidence waiting for what it refers to), [`quota`] (bounds on keys this host does not
//! trust), [`chain`]
//! (appending to this host's receipt chain; every host's chain and the evidence against keys),
//! [`evidence`] (reading evidence back for peers and for scores), [`kv`] (agents' memory) and
//! [`writer`] (group commit, the writer thread and the WAL flush schedule), [`call_data`] (the
//! inputs and transcripts of this host's receipts, kept for verifiers), [`audit`] (what checking
//! other hosts' receipts found: validations, fraud proofs to hand on, unbacked receipts),
//! [`pipeline`] (receipts signed ahead of their commit, and the signer lock).

mod audit;
mod call_data;
mod chain;
mod evidence;
mod ingest;
mod kv;
mod page_cache;
mod pending;
mod pipeline;
mod quota;
mod records;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::Error;

pub use call_data::{CALL_DATA_RETENTION_MS, CallData};
pub use chain::{Fork, HostRecord, Misbehaviour};
pub use evidence::{Evidence, EvidenceCursor};
pub use kv::{KvNamespace, KvQuota};
pub use pipeline::ReceiptDurability;
pub use quota::{
    MAX_FEEDBACK_PER_STRANGER, MAX_MANIFESTS_PER_STRANGER, MAX_PENDING_PER_KEY,
    MAX_RECEIPTS_PER_STRANGER, MAX_STRANGER_FEEDBACK, MAX_STRANGER_RECEIPTS, StrangerQuotas,
    StrangerUsage,
};
pub use records::{ReceiptCursor, ReceiptPage};

/// Most writes committed in one transaction.
const MAX_WRITE_BATCH: usize = 1024;
/// Idle read connections kept open.
const MAX_IDLE_READERS: usize = 16;
/// Prepared statements each connection keeps. The registry prepares about sixty distinct
/// ones; with rusqlite's default of 16, a receipt's statements were evicted by ingest's and
/// parsed again, a sixth of the commit's time.
const STATEMENT_CACHE: usize = 128;
/// How long a connection waits for a lock held by another process before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
pub use writer::WAL_SYNC_INTERVAL;
use writer::sync_before_answering;

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
/// Writes are serialised on one connection and committed in batches; an acknowledged write
/// survives the process being killed, and a power cut loses at most [`WAL_SYNC_INTERVAL`] of
/// writes (see the module docs for the contract, and [`ReceiptDurability`] for receipts handed
/// out before their commit). Reads come from a pool of read-only
/// connections and never wait for writes.
pub struct Registry {
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    writer: std::sync::Arc<writer::Writer>,
    writer_thread: Option<JoinHandle<()>>,
    /// Stops the checkpointer thread when dropped, and the thread to wait for.
    checkpointer: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    /// Keys whose records are not held to the quotas on strangers, and those quotas.
    trust: std::sync::RwLock<quota::Trust>,
    /// Records refused because their signer was over a quota.
    over_quota: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Precomputed signing nonces for the key this registry's host signs receipts with, and
    /// how many receipts it signed before the pool started.
    nonces: Mutex<(Option<std::sync::Arc<crate::nonces::NoncePool>>, u64)>,
    /// This host's chain head, when receipts are signed ahead of their commit.
    pipeline: std::sync::OnceLock<std::sync::Arc<pipeline::Pipeline>>,
    /// The signer lock, held shared once this registry has signed a receipt the committed way.
    signer: std::sync::OnceLock<std::fs::File>,
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
        // Before the first connection of the process initialises SQLite.
        page_cache::install();
        let db_error = |source| Error::Database {
            path: path.to_owned(),
            source,
        };
        // Created readable by its owner only: it holds agents' private memory, and SQLite gives
        // its WAL and shared-memory files the same mode.
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path);
            if let Err(source) = created {
                return Err(Error::WriteFailed {
                    path: path.to_owned(),
                    reason: format!("cannot create the database file: {source}"),
                });
            }
        }
        let mut conn = Connection::open(path).map_err(db_error)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db_error)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
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
        // Checkpoints run on a thread of their own (see `writer::checkpoint_loop`), not inside
        // the writer's commits.
        let checkpoints = Connection::open(path).map_err(db_error)?;
        checkpoints.busy_timeout(BUSY_TIMEOUT).map_err(db_error)?;
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0;")
            .map_err(db_error)?;
        schema::migrate(&mut conn, path)?;
        // If the last process did not close cleanly it may have signed receipts it lost: its
        // chain continues past everything it reserved.
        conn.execute_batch("UPDATE receipt_seq SET resume_at = reserved_until")
            .map_err(db_error)?;
        let (writer, woken) = writer::Writer::new(conn, path);
        let thread_writer = writer.clone();
        let writer_thread = std::thread::Builder::new()
            .name("agora-registry-writer".into())
            .spawn(move || writer::write_loop(&thread_writer, woken))
            .map_err(|e| Error::WriteFailed {
                path: path.to_owned(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        let (stop_checkpoints, stop) = mpsc::channel();
        let thread_path = path.to_owned();
        let checkpointer = std::thread::Builder::new()
            .name("agora-registry-checkpointer".into())
            .spawn(move || writer::checkpoint_loop(checkpoints, &thread_path, stop))
            .map_err(|e| Error::WriteFailed {
                path: path.to_owned(),
                reason: format!("cannot start the checkpoint thread: {e}"),
            })?;
        Ok(Registry {
            path: path.to_owned(),
            readers: Mutex::new(Vec::new()),
            writer,
            writer_thread: Some(writer_thread),
            checkpointer: Some((stop_checkpoints, checkpointer)),
            trust: std::sync::RwLock::default(),
            over_quota: std::sync::Arc::default(),
            nonces: Mutex::new((None, 0)),
            pipeline: std::sync::OnceLock::new(),
            signer: std::sync::OnceLock::new(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Exempts these keys (this host's own, its operator's trusted publishers and anchors) from
    /// the quotas on strangers, as well as any exempted before.
    pub fn trust(&self, keys: impl IntoIterator<Item = crate::PublicKey>) {
        self.trust
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .add_operator(keys);
    }

    /// Exempts these keys, which earned trust in the latest score computation, from the quotas
    /// on strangers, in place of the ones that had earned it before.
    pub fn set_earned_trust(&self, keys: impl IntoIterator<Item = crate::PublicKey>) {
        self.trust
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .set_earned(keys);
    }

    /// Replaces the quotas on strangers (by default [`StrangerQuotas::default`]).
    pub fn set_stranger_quotas(&self, quotas: StrangerQuotas) {
        self.trust
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .set_quotas(quotas);
    }

    /// The trusted keys and quotas for a write about to be queued.
    fn strangers(&self) -> quota::Strangers {
        self.trust
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .strangers(&self.over_quota)
    }

    /// How many records were refused since the registry opened because their signer was over
    /// a quota on strangers (see [`StrangerQuotas`]).
    pub fn refused_over_quota(&self) -> u64 {
        self.over_quota.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many times the writer flushed the WAL to the disk since the registry opened: on
    /// schedule (see [`WAL_SYNC_INTERVAL`]) and for receipt sequence reservations.
    pub fn wal_flushes(&self) -> u64 {
        self.writer.flushes()
    }

    /// Bytes of memory SQLite holds in this process, over every registry and connection: page
    /// caches (bounded per connection), prepared statements, the WAL index. It grows with the
    /// database up to those bounds, so it is reported beside resident memory.
    pub fn sqlite_memory_bytes() -> u64 {
        // SAFETY: a read of SQLite's global memory counter (memory statistics are on in the
        // bundled build); it takes no pointers and is safe from any thread.
        let used = unsafe { rusqlite::ffi::sqlite3_memory_used() };
        u64::try_from(used).unwrap_or(0)
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

    /// Runs `read` on a pooled read-only connection. Readers see the last committed state, and
    /// wait for the writer only for the receipts this process handed out ahead of their commit
    /// (see [`pipeline`]), so that it reads them like any other.
    fn read<R>(&self, read: impl FnOnce(&Connection) -> Result<R, Error>) -> Result<R, Error> {
        self.writer.wait_for_detached();
        self.read_committed(read)
    }

    /// [`Registry::read`] without waiting for receipts handed out ahead of their commit: for
    /// what only acknowledged writes change (agents' memory), so that an agent's `kv-get` does
    /// not wait for the receipt of the call before.
    fn read_committed<R>(
        &self,
        read: impl FnOnce(&Connection) -> Result<R, Error>,
    ) -> Result<R, Error> {
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
                conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
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

    /// Runs `write` inside a transaction shared with whatever other writes are queued, and
    /// returns once that transaction is committed: on this thread if no other is committing
    /// (see [`writer::Writer`]). If `write` fails, its changes are rolled back and the others
    /// still commit.
    fn write<R: Send + 'static>(
        &self,
        write: impl FnOnce(&Connection, &Path) -> Result<R, Error> + Send + 'static,
    ) -> Result<R, Error> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.writer.queue(write, writer::Reply::Blocking(reply));
        self.writer.commit_inline();
        answer.recv().map_err(|_| self.writer_stopped())?
    }

    /// Like [`Registry::write`], for async callers: committed when the returned future is first
    /// polled, on its thread, if no other is committing; otherwise whoever commits it wakes the
    /// caller's task itself, so no thread waits in between.
    fn write_async<R: Send + 'static>(
        &self,
        write: impl FnOnce(&Connection, &Path) -> Result<R, Error> + Send + 'static,
    ) -> impl Future<Output = Result<R, Error>> + Send + 'static {
        let (reply, answer) = writer::oneshot();
        self.writer.queue(write, writer::Reply::Async(reply));
        let (writer, stopped) = (self.writer.clone(), self.writer_stopped());
        async move {
            writer.commit_inline();
            answer.await.unwrap_or(Err(stopped))
        }
    }

    /// Whether SQLite in this process uses agora's page cache (see `store/page_cache.rs`),
    /// which [`Registry::open`] installs unless SQLite was initialised before, and how many
    /// B-tree page swaps it has kept from making a commit scan the whole cache.
    pub fn page_cache() -> (bool, u64) {
        (page_cache::installed(), page_cache::swaps())
    }

    fn writer_stopped(&self) -> Error {
        Error::WriteFailed {
            path: self.path.clone(),
            reason: "the writer thread has stopped".into(),
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.checkpointer.take() {
            drop(stop);
            let _ = thread.join();
        }
        // The writer thread commits what is queued and exits; waiting for it means the
        // database is closed when the registry is gone.
        self.writer.close();
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
