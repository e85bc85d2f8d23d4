//! Committing writes: batched into shared transactions (group commit) on the caller's own
//! thread when the connection is free, by the writer thread when writes pile up; the WAL
//! flushed on a schedule rather than at every commit; and the checkpointer thread, which
//! copies the WAL into the database file off the writers' path.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::MAX_WRITE_BATCH;
use crate::Error;

/// Longest a committed write waits to be flushed to the disk: what a power cut can lose.
pub const WAL_SYNC_INTERVAL: Duration = Duration::from_millis(200);

thread_local! {
    /// Set by a write, on the thread committing it, that must be on the disk, not just committed,
    /// before it is answered (a receipt sequence reservation).
    static SYNC_BEFORE_ANSWERING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Asks the writer thread to flush the WAL to the disk before answering the current batch.
pub(super) fn sync_before_answering() {
    SYNC_BEFORE_ANSWERING.set(true);
}

/// Where a job's answer goes: a thread blocked on a channel, an async task, or nobody (a
/// write whose caller went on without waiting: a receipt signed ahead of its commit).
pub(super) enum Reply<R> {
    Blocking(mpsc::SyncSender<Result<R, Error>>),
    Async(OneshotSender<Result<R, Error>>),
    Detached(&'static str),
}

/// A write queued for the writer thread.
trait WriteJob: Send {
    /// Runs the write; returns whether it succeeded (and its changes are to be kept).
    fn run(&mut self, conn: &Connection, path: &Path) -> bool;
    /// Nobody waits for this write's answer (see [`Writer::queue_detached`]).
    fn detached(&self) -> bool;
    /// Answers the caller once the transaction has committed or failed; returns whether a
    /// detached write was lost.
    fn finish(self: Box<Self>, path: &Path, committed: Result<(), &rusqlite::Error>) -> bool;
}

struct Job<F, R> {
    work: Option<F>,
    outcome: Option<Result<R, Error>>,
    reply: Reply<R>,
}

impl<F, R> Job<F, R> {
    fn new(work: F, reply: Reply<R>) -> Self {
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

    fn detached(&self) -> bool {
        matches!(self.reply, Reply::Detached(_))
    }

    fn finish(self: Box<Self>, path: &Path, committed: Result<(), &rusqlite::Error>) -> bool {
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
            // Its caller was answered before the commit; a failure is all that is left to say.
            Reply::Detached(what) => {
                if let Err(error) = answer {
                    tracing::error!(%error, what, "a write answered ahead of its commit was lost");
                    return true;
                }
            }
        }
        false
    }
}

/// Writes queued in this process, and the one connection that commits them.
///
/// Whichever thread finds the connection free commits what is queued, in one transaction
/// (group commit). That is usually the writing caller itself: a write nobody competes with is
/// committed on its caller's thread, with no hand-off to another thread and back, which on a
/// virtual machine cost more than the write. A caller that finds the connection taken leaves
/// its write queued; whoever holds the connection looks at the queue again after letting go,
/// and wakes the writer thread ([`write_loop`]) to commit the rest. So a caller commits at most
/// one batch of [`INLINE_BATCH`] writes, and nothing queued is ever left behind.
pub(super) struct Writer {
    queue: Mutex<VecDeque<Box<dyn WriteJob>>>,
    committer: Mutex<Option<Committer>>,
    /// Wakes the writer thread: writes are left queued, or a commit is waiting to be flushed.
    kicks: mpsc::Sender<()>,
    closing: AtomicBool,
    path: PathBuf,
    wal: PathBuf,
    flushes: AtomicU64,
    /// Detached writes queued so far, and those committed (or failed) so far: a read waits
    /// until the second reaches what the first was when it started (see
    /// [`Writer::wait_for_detached`]).
    detached_queued: AtomicU64,
    detached_done: AtomicU64,
    detached_wait: (Mutex<()>, std::sync::Condvar),
    /// A detached write failed: a receipt may have been handed out that the database lacks,
    /// so the sequence reservation is not released at close (the next open skips past it).
    detached_lost: AtomicBool,
}

/// The write connection, and when the oldest commit not yet flushed to the disk was made.
struct Committer {
    conn: Connection,
    unsynced_since: Option<Instant>,
}

/// Most writes a caller commits on its own thread; the writer thread commits the rest.
const INLINE_BATCH: usize = 64;

/// What a committed batch leaves to do once the connection is free again.
struct Committed {
    batch: Vec<Box<dyn WriteJob>>,
    result: rusqlite::Result<()>,
    /// The batch left the first commit waiting to be flushed: the writer thread must know when
    /// to flush it.
    first_unsynced: bool,
}

impl Writer {
    /// A writer committing on `conn`, and the receiver the writer thread waits on.
    pub(super) fn new(conn: Connection, path: &Path) -> (Arc<Self>, mpsc::Receiver<()>) {
        let (kicks, woken) = mpsc::channel();
        let writer = Writer {
            queue: Mutex::new(VecDeque::new()),
            committer: Mutex::new(Some(Committer {
                conn,
                unsynced_since: None,
            })),
            kicks,
            closing: AtomicBool::new(false),
            path: path.to_owned(),
            wal: wal_path(path),
            flushes: AtomicU64::new(0),
            detached_queued: AtomicU64::new(0),
            detached_done: AtomicU64::new(0),
            detached_wait: (Mutex::new(()), std::sync::Condvar::new()),
            detached_lost: AtomicBool::new(false),
        };
        (Arc::new(writer), woken)
    }

    /// Times the WAL was flushed to the disk.
    pub(super) fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Queues `work`, answered through `reply`; it is committed by [`Writer::commit_inline`] or
    /// the writer thread.
    pub(super) fn queue<F, R>(&self, work: F, reply: Reply<R>)
    where
        F: FnOnce(&Connection, &Path) -> Result<R, Error> + Send + 'static,
        R: Send + 'static,
    {
        lock(&self.queue).push_back(Box::new(Job::new(work, reply)));
    }

    /// Queues `work` with nobody waiting for its answer, and wakes the writer thread to commit
    /// it: `what` names it in the log if it fails. Call it in the order the writes must be
    /// committed in; reads wait for it ([`Writer::wait_for_detached`]).
    pub(super) fn queue_detached<F>(&self, work: F, what: &'static str)
    where
        F: FnOnce(&Connection, &Path) -> Result<(), Error> + Send + 'static,
    {
        lock(&self.queue).push_back(Box::new(Job::new(work, Reply::Detached(what))));
        self.detached_queued.fetch_add(1, Ordering::SeqCst);
        let _ = self.kicks.send(());
    }

    /// Detached writes queued and not yet committed (or failed).
    pub(super) fn detached_backlog(&self) -> u64 {
        let done = self.detached_done.load(Ordering::SeqCst);
        self.detached_queued
            .load(Ordering::SeqCst)
            .saturating_sub(done)
    }

    /// Returns once every detached write queued before the call is committed (or has failed),
    /// so that a read sees what this process answered before it. Immediate when none is
    /// pending; otherwise at most as long as the writer takes to commit them.
    pub(super) fn wait_for_detached(&self) {
        let target = self.detached_queued.load(Ordering::SeqCst);
        if self.detached_done.load(Ordering::SeqCst) >= target {
            return;
        }
        let (mutex, done) = &self.detached_wait;
        let mut guard = lock(mutex);
        while self.detached_done.load(Ordering::SeqCst) < target {
            if lock(&self.committer).is_none() {
                // Closed: what was queued has been committed or never will be.
                return;
            }
            let _ = self.kicks.send(());
            guard = done
                .wait_timeout(guard, Duration::from_millis(50))
                .map_or_else(|p| p.into_inner().0, |(guard, _)| guard);
        }
    }

    /// Commits one batch of queued writes on this thread, unless another thread is committing
    /// (which then sees them); wakes the writer thread for whatever is still queued after.
    pub(super) fn commit_inline(&self) {
        let committed = match self.committer.try_lock() {
            Ok(mut committer) => self.commit(&mut committer, INLINE_BATCH),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                self.commit(&mut poisoned.into_inner(), INLINE_BATCH)
            }
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        let first_unsynced = committed.as_ref().is_some_and(|c| c.first_unsynced);
        if let Some(committed) = committed {
            self.answer(committed);
        }
        // Looked at after letting go of the connection: a write queued while it was held, by
        // a caller that found it taken, is seen here.
        if first_unsynced || !lock(&self.queue).is_empty() {
            let _ = self.kicks.send(());
        }
    }

    /// Asks the writer thread to commit what is left and stop.
    pub(super) fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let _ = self.kicks.send(());
    }

    /// Commits up to `max` queued writes in one transaction, flushing the WAL first if a write
    /// asked for it. `None` if the connection is closed.
    fn commit(&self, committer: &mut Option<Committer>, max: usize) -> Option<Committed> {
        let committer = committer.as_mut()?;
        let mut batch: Vec<_> = {
            let mut queue = lock(&self.queue);
            let n = queue.len().min(max);
            queue.drain(..n).collect()
        };
        if batch.is_empty() {
            return None;
        }
        SYNC_BEFORE_ANSWERING.set(false);
        let mut result = commit_batch(&committer.conn, &self.path, &mut batch);
        let mut first_unsynced = false;
        if let Err(error) = &result {
            tracing::error!(%error, writes = batch.len(), "registry transaction failed");
            let _ = committer.conn.execute_batch("ROLLBACK");
        } else if SYNC_BEFORE_ANSWERING.replace(false) {
            result = self.sync_wal().map_err(|e| {
                tracing::error!(error = %e, "cannot flush the registry's WAL");
                rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_FSYNC),
                    Some(format!("flushing {}: {e}", self.wal.display())),
                )
            });
            if result.is_ok() {
                committer.unsynced_since = None;
            }
        } else if committer.unsynced_since.is_none() {
            committer.unsynced_since = Some(Instant::now());
            first_unsynced = true;
        }
        Some(Committed {
            batch,
            result,
            first_unsynced,
        })
    }

    /// Answers each write of a committed batch (after the connection is let go, so that the
    /// next batch need not wait for the answers).
    fn answer(&self, committed: Committed) {
        let mut detached = 0;
        for job in committed.batch {
            detached += u64::from(job.detached());
            if job.finish(&self.path, committed.result.as_ref().map(|_| ())) {
                self.detached_lost.store(true, Ordering::SeqCst);
            }
        }
        if detached > 0 {
            self.detached_done.fetch_add(detached, Ordering::SeqCst);
            let _guard = lock(&self.detached_wait.0);
            self.detached_wait.1.notify_all();
        }
    }

    /// Commits everything queued, batch after batch, until the queue is empty.
    fn commit_all(&self) {
        loop {
            let committed = self.commit(&mut lock(&self.committer), MAX_WRITE_BATCH);
            match committed {
                Some(committed) => self.answer(committed),
                None => break,
            }
        }
    }

    /// Flushes the WAL if a commit has waited [`WAL_SYNC_INTERVAL`] for it; returns how long
    /// until the next flush is due, if one is pending.
    fn flush_when_due(&self) -> Option<Duration> {
        let since = {
            let mut committer = lock(&self.committer);
            let committer = committer.as_mut()?;
            let since = committer.unsynced_since?;
            if since.elapsed() < WAL_SYNC_INTERVAL {
                return Some(WAL_SYNC_INTERVAL - since.elapsed());
            }
            committer.unsynced_since = None;
            since
        };
        // Flushed without holding the connection: commits go on meanwhile, and one made after
        // the mark was taken marks itself again.
        if self.sync_wal().is_err() {
            let mut committer = lock(&self.committer);
            if let Some(committer) = committer.as_mut() {
                committer.unsynced_since.get_or_insert(since);
            }
            return Some(WAL_SYNC_INTERVAL);
        }
        None
    }

    /// Flushes the WAL file to the disk: every transaction committed so far becomes durable.
    fn sync_wal(&self) -> std::io::Result<()> {
        let synced = match std::fs::File::open(&self.wal) {
            Ok(file) => file.sync_data(),
            // Checkpointed away and deleted: everything is already in the database file, which
            // SQLite syncs when it checkpoints.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        if synced.is_ok() {
            self.flushes.fetch_add(1, Ordering::Relaxed);
        }
        synced
    }
}

/// The writer thread: commits the writes callers left queued, flushes the WAL on schedule, and
/// when the registry closes, commits what is left, releases its receipt sequence reservations
/// (a clean shutdown, so the next open continues without a skip) and closes the connection.
pub(super) fn write_loop(writer: &Writer, woken: mpsc::Receiver<()>) {
    loop {
        // However busy the callers keep the connection, a commit is flushed at most
        // `WAL_SYNC_INTERVAL` after it was made.
        let wait = writer.flush_when_due().unwrap_or(Duration::from_secs(3600));
        // The writer holds the sender, so this only ever wakes or times out.
        let _ = woken.recv_timeout(wait);
        while woken.try_recv().is_ok() {}
        writer.commit_all();
        if writer.closing.load(Ordering::SeqCst) {
            break;
        }
    }
    let Some(committer) = lock(&writer.committer).take() else {
        return;
    };
    if writer.detached_lost.load(Ordering::SeqCst) {
        tracing::warn!(
            "a receipt was lost before its commit; the next open skips its sequence numbers"
        );
        return;
    }
    let released = committer
        .conn
        .execute_batch(
            "UPDATE receipt_seq SET reserved_until = MAX(resume_at, 1 + COALESCE(
                 (SELECT MAX(seq) FROM receipts WHERE receipts.host = receipt_seq.host), -1))",
        )
        .map_err(|e| e.to_string())
        .and_then(|()| writer.sync_wal().map_err(|e| e.to_string()));
    if let Err(error) = released {
        // The next open skips ahead; nothing is lost.
        tracing::warn!(%error, "cannot release receipt sequence reservations");
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

fn commit_batch(
    conn: &Connection,
    path: &Path,
    batch: &mut [Box<dyn WriteJob>],
) -> rusqlite::Result<()> {
    // Prepared once and reused: parsing these statements anew for every batch was a
    // measurable share of a small write.
    let run = |sql: &str| conn.prepare_cached(sql)?.execute([]).map(|_| ());
    run("BEGIN IMMEDIATE")?;
    if let [job] = batch {
        // Alone in its transaction, a write needs no savepoint (which copies every page it
        // touches first): if it fails, the whole transaction is rolled back.
        return if job.run(conn, path) {
            run("COMMIT")
        } else {
            run("ROLLBACK")
        };
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer on a fresh database, its writer thread running.
    fn writer(dir: &tempfile::TempDir) -> (Arc<Writer>, std::thread::JoinHandle<()>) {
        let path = dir.path().join("registry.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (thread TEXT);")
            .unwrap();
        let (writer, woken) = Writer::new(conn, &path);
        let thread = {
            let writer = writer.clone();
            std::thread::spawn(move || write_loop(&writer, woken))
        };
        (writer, thread)
    }

    /// Queues a write recording the thread that commits it; the receiver gets that thread's name.
    fn queue_recording_thread(writer: &Writer) -> mpsc::Receiver<Result<String, Error>> {
        let (reply, answer) = mpsc::sync_channel(1);
        let work = |conn: &Connection, _: &Path| {
            let name = std::thread::current()
                .name()
                .unwrap_or("unnamed")
                .to_owned();
            conn.execute("INSERT INTO t (thread) VALUES (?1)", [&name])
                .map_err(|e| Error::WriteFailed {
                    path: PathBuf::new(),
                    reason: e.to_string(),
                })?;
            Ok(name)
        };
        writer.queue(work, Reply::Blocking(reply));
        answer
    }

    #[test]
    fn a_write_nobody_competes_with_is_committed_on_its_callers_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, thread) = writer(&dir);
        let caller = std::thread::Builder::new()
            .name("caller".into())
            .spawn({
                let writer = writer.clone();
                move || {
                    let answer = queue_recording_thread(&writer);
                    writer.commit_inline();
                    answer.recv().unwrap().unwrap()
                }
            })
            .unwrap();
        assert_eq!(caller.join().unwrap(), "caller");
        writer.close();
        thread.join().unwrap();
    }

    #[test]
    fn a_failed_write_alone_in_its_transaction_leaves_nothing_and_the_next_commits() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, thread) = writer(&dir);
        let (reply, answer) = mpsc::sync_channel(1);
        let half_done = |conn: &Connection, _: &Path| -> Result<(), Error> {
            conn.execute("INSERT INTO t (thread) VALUES ('half done')", [])
                .unwrap();
            Err(Error::WriteFailed {
                path: PathBuf::new(),
                reason: "refused after writing".into(),
            })
        };
        writer.queue(half_done, Reply::Blocking(reply));
        writer.commit_inline();
        assert!(answer.recv().unwrap().is_err());
        let next = queue_recording_thread(&writer);
        writer.commit_inline();
        next.recv().unwrap().unwrap();
        let rows: Vec<String> = {
            let committer = lock(&writer.committer);
            let conn = &committer.as_ref().unwrap().conn;
            let mut stmt = conn.prepare("SELECT thread FROM t").unwrap();
            stmt.query_map([], |row| row.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_ne!(rows[0], "half done");
        writer.close();
        thread.join().unwrap();
    }

    #[test]
    fn a_write_queued_while_another_thread_commits_is_committed_once_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, thread) = writer(&dir);
        // Another thread holds the connection: the caller cannot commit, and must not wait.
        let held = lock(&writer.committer);
        let answer = queue_recording_thread(&writer);
        writer.commit_inline();
        assert!(
            answer.try_recv().is_err(),
            "committed while the connection was held"
        );
        drop(held);
        let committed_by = answer
            .recv_timeout(Duration::from_secs(10))
            .expect("the queued write was left behind")
            .unwrap();
        assert_ne!(committed_by, std::thread::current().name().unwrap_or(""));
        writer.close();
        thread.join().unwrap();
    }
}
