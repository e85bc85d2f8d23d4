//! The writer thread: every write to the registry runs here, batched into shared transactions
//! (group commit), and the WAL is flushed on a schedule rather than at every commit; and the
//! checkpointer thread, which copies the WAL into the database file off the writer's path.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::MAX_WRITE_BATCH;
use crate::Error;

/// Longest a committed write waits to be flushed to the disk: what a power cut can lose.
pub const WAL_SYNC_INTERVAL: Duration = Duration::from_millis(200);

thread_local! {
    /// Set by a write on the writer thread that must be on the disk, not just committed,
    /// before it is answered (a receipt sequence reservation).
    static SYNC_BEFORE_ANSWERING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Asks the writer thread to flush the WAL to the disk before answering the current batch.
pub(super) fn sync_before_answering() {
    SYNC_BEFORE_ANSWERING.set(true);
}

/// Where a job's answer goes: a thread blocked on a channel, or an async task.
pub(super) enum Reply<R> {
    Blocking(mpsc::SyncSender<Result<R, Error>>),
    Async(OneshotSender<Result<R, Error>>),
}

/// A write queued for the writer thread.
pub(super) trait WriteJob: Send {
    /// Runs the write; returns whether it succeeded (and its changes are to be kept).
    fn run(&mut self, conn: &Connection, path: &Path) -> bool;
    /// Answers the caller once the transaction has committed or failed.
    fn finish(self: Box<Self>, path: &Path, committed: Result<(), &rusqlite::Error>);
}

pub(super) struct Job<F, R> {
    work: Option<F>,
    outcome: Option<Result<R, Error>>,
    reply: Reply<R>,
}

impl<F, R> Job<F, R> {
    pub(super) fn new(work: F, reply: Reply<R>) -> Self {
        Job {
            work: Some(work),
            outcome: None,
            reply,
        }
    }
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
        match self.reply {
            Reply::Blocking(reply) => {
                let _ = reply.send(answer);
            }
            Reply::Async(reply) => reply.send(answer),
        }
    }
}

/// The writer thread: takes every write queued so far, commits them in one transaction, answers
/// each caller, and repeats until the registry is dropped; then releases its receipt sequence
/// reservations (a clean shutdown, so the next open continues without a skip).
pub(super) fn write_loop(
    conn: Connection,
    path: &Path,
    jobs: mpsc::Receiver<Box<dyn WriteJob>>,
    flushes: &std::sync::atomic::AtomicU64,
) {
    let wal = wal_path(path);
    let sync_wal = |wal: &Path| {
        let synced = sync_wal(wal);
        if synced.is_ok() {
            flushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        synced
    };
    // When the oldest commit not yet flushed to the disk was made: it is flushed at most
    // `WAL_SYNC_INTERVAL` later, however busy the writer is.
    let mut unsynced_since: Option<Instant> = None;
    loop {
        let wait = unsynced_since.map_or(Duration::from_secs(3600), |since| {
            WAL_SYNC_INTERVAL.saturating_sub(since.elapsed())
        });
        let first = match jobs.recv_timeout(wait) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if unsynced_since.is_some() && sync_wal(&wal).is_ok() {
                    unsynced_since = None;
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
            if committed.is_ok() {
                unsynced_since = None;
            }
        } else {
            unsynced_since.get_or_insert_with(Instant::now);
        }
        for job in batch {
            job.finish(path, committed.as_ref().map(|_| ()));
        }
        // A writer that never idles still flushes on schedule (after answering, so the flush
        // delays nobody).
        if unsynced_since.is_some_and(|since| since.elapsed() >= WAL_SYNC_INTERVAL)
            && sync_wal(&wal).is_ok()
        {
            unsynced_since = None;
        }
    }
    let released = conn
        .execute_batch(
            "UPDATE receipt_seq SET reserved_until = MAX(resume_at, 1 + COALESCE(
                 (SELECT MAX(seq) FROM receipts WHERE receipts.host = receipt_seq.host), -1))",
        )
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
    // Prepared once and reused: parsing these four statements anew for every batch was a
    // measurable share of a small write.
    let run = |sql: &str| conn.prepare_cached(sql)?.execute([]).map(|_| ());
    run("BEGIN IMMEDIATE")?;
    for job in batch.iter_mut() {
        run("SAVEPOINT job")?;
        if !job.run(conn, path) {
            run("ROLLBACK TO job")?;
        }
        run("RELEASE job")?;
    }
    run("COMMIT")
}

/// A one-shot channel whose receiver is a future: the writer thread completes it and wakes the
/// waiting task directly.
pub(super) fn oneshot<T>() -> (OneshotSender<T>, OneshotReceiver<T>) {
    let slot = Arc::new(Mutex::new(Slot {
        value: None,
        waker: None,
        closed: false,
    }));
    (OneshotSender(slot.clone()), OneshotReceiver(slot))
}

struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
    /// The sender is gone; with no value, there never will be one.
    closed: bool,
}

pub(super) struct OneshotSender<T>(Arc<Mutex<Slot<T>>>);

impl<T> OneshotSender<T> {
    fn send(self, value: T) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.value = Some(value);
    }
}

impl<T> Drop for OneshotSender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
            slot.closed = true;
            slot.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Resolves to the value sent, or `None` if the sender was dropped without sending.
pub(super) struct OneshotReceiver<T>(Arc<Mutex<Slot<T>>>);

impl<T> Future for OneshotReceiver<T> {
    type Output = Option<T>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Option<T>> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(value) = slot.value.take() {
            return Poll::Ready(Some(value));
        }
        if slot.closed {
            return Poll::Ready(None);
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Size of the WAL past which the checkpointer copies it into the database file: about
/// SQLite's own default of 1,000 pages.
const CHECKPOINT_WAL_BYTES: u64 = 4 << 20;

/// How often the checkpointer looks at the WAL's size.
const CHECKPOINT_POLL: Duration = Duration::from_millis(50);

/// The checkpointer thread: copies the WAL into the database file once it has grown past
/// [`CHECKPOINT_WAL_BYTES`], on a connection of its own, until `stop` closes.
///
/// SQLite would otherwise checkpoint inside the commit that crosses its threshold, on the
/// writer thread, with an fsync of the database file: every few hundred receipts, one caller
/// waited a millisecond or more for other callers' pages. A passive checkpoint here never
/// blocks the writer (WAL mode lets the two run at once); the WAL restarts from its beginning
/// at the first commit after a checkpoint that copied everything.
pub(super) fn checkpoint_loop(conn: Connection, path: &Path, stop: mpsc::Receiver<()>) {
    let wal = wal_path(path);
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_POLL) {
        let grown = std::fs::metadata(&wal).is_ok_and(|m| m.len() >= CHECKPOINT_WAL_BYTES);
        if !grown {
            continue;
        }
        let checkpointed = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
        });
        match checkpointed {
            Ok((frames, copied)) => {
                tracing::trace!(frames, copied, "checkpointed the registry's WAL")
            }
            Err(error) => tracing::warn!(%error, "checkpointing the registry's WAL"),
        }
    }
}
