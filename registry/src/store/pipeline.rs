//! Receipts signed ahead of their commit ([`ReceiptDurability::Pipelined`]), and the lock that
//! keeps two processes from signing one host's chain in ways that would fork it.
//!
//! A pipelined registry keeps its host's chain head in memory: the next sequence number, the
//! last receipt's hash and how far the sequence numbers are reserved on the disk. A receipt is
//! signed from it and handed out at once; the insert is queued for the writer, which commits it
//! with whatever else is queued, usually within a millisecond. Reads in this process wait for
//! those inserts ([`Writer::wait_for_detached`]), so the process always reads its own receipts.
//!
//! Because the head is in one process's memory, that process must be the only one signing for
//! the database. Every signer holds a lock on `<database>.signer`: exclusive for a pipelined
//! one, for as long as it is open; shared for those signing the committed way, which read the
//! head from the database inside each write and so may sign side by side.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use super::call_data::{self, CallData};
use super::records::insert_receipt_row;
use super::writer::{self, Reply, Writer, lock};
use super::{db_error, parse_stored, sync_before_answering};
use crate::identity::{PublicKey, SecretKey};
use crate::nonces::NoncePool;
use crate::receipt::{RECEIPT_SEQ_BLOCK, Receipt, SignedReceipt};
use crate::signed::Signed;
use crate::{Error, Hash};

/// When a host hands a receipt to its caller, relative to storing it.
///
/// Either way a sequence number is never signed twice: numbers are reserved on the disk a
/// block of [`RECEIPT_SEQ_BLOCK`] at a time, each reservation flushed before a receipt takes a
/// number from it, and a registry reopened after a crash continues past the reservation (a
/// declared skip, which scoring follows).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReceiptDurability {
    /// Once the receipt is committed to the write-ahead log (the default). A receipt its
    /// caller holds survives the host process being killed at any point; an operating-system
    /// crash or power cut loses at most [`WAL_SYNC_INTERVAL`](super::WAL_SYNC_INTERVAL) of
    /// them. A call waits for the commit: tens of microseconds, shared with concurrent calls.
    #[default]
    Committed,
    /// As soon as the receipt is signed; it is committed in the writer's next group commit,
    /// usually within a millisecond. A crash of the process (or of the machine) loses the
    /// host's copy of receipts handed out in that window, and their inputs and transcripts:
    /// their callers still hold the signed receipts, which stay valid evidence, but this host
    /// can no longer back them for verifiers. Reads in this process wait for those commits, so
    /// it sees its own receipts. The process must be the only one signing for the database
    /// (see [`Error::SignerBusy`]).
    Pipelined,
}

/// The in-memory head of a pipelined host's chain, and the lock that makes it the only one.
pub(super) struct Pipeline {
    host: PublicKey,
    head: Mutex<Head>,
    /// Held exclusively for as long as the registry is open.
    _lock: File,
}

struct Head {
    next_seq: u64,
    prev: Option<Hash>,
    /// Numbers below this are reserved on the disk.
    reserved_until: u64,
}

impl Pipeline {
    /// A pipeline for `host`'s chain, whose next receipt is `next_seq` after `prev`, with
    /// numbers reserved up to `reserved_until`; `lock` is the exclusive signer lock.
    pub(super) fn new(
        host: PublicKey,
        lock: File,
        (next_seq, prev, reserved_until): (u64, Option<Hash>, u64),
    ) -> Self {
        Pipeline {
            host,
            head: Mutex::new(Head {
                next_seq,
                prev,
                reserved_until,
            }),
            _lock: lock,
        }
    }

    /// Signs `receipt` as the host's next and queues it (with the call's input and transcript)
    /// for the writer; resolves to it at once, unless its number starts a block not yet
    /// reserved, in which case the reservation is committed and flushed first.
    pub(super) async fn append(
        self: Arc<Self>,
        writer: Arc<Writer>,
        stopped: Error,
        key: SecretKey,
        nonces: Option<Arc<NoncePool>>,
        receipt: Receipt,
        data: Option<CallData>,
    ) -> Result<SignedReceipt, Error> {
        if key.public() != self.host {
            return Err(Error::Invalid {
                kind: "receipt",
                reason: format!(
                    "this registry signs receipts ahead of their commit for host {} only, not {}",
                    self.host,
                    key.public()
                ),
            });
        }
        let mut pending = (receipt, data);
        loop {
            let block_end = match self.sign_next(&writer, &key, nonces.as_deref(), pending)? {
                Step::Handed(signed) => return Ok(signed),
                Step::Commit(signed, answer) => {
                    writer.commit_inline();
                    return match answer.await {
                        Some(stored) => stored.map(|()| signed),
                        None => Err(stopped),
                    };
                }
                Step::Reserve(block_end, unsigned) => {
                    pending = unsigned;
                    block_end
                }
            };
            // Once per block: every caller arriving meanwhile asks for the same end, and
            // the first commit serves them all.
            let (reply, answer) = writer::oneshot();
            writer.queue(
                reserve_until(self.host.to_hex(), block_end),
                Reply::Async(reply),
            );
            writer.commit_inline();
            match answer.await {
                Some(reserved) => reserved?,
                None => return Err(stopped),
            }
            let mut head = lock(&self.head);
            head.reserved_until = head.reserved_until.max(block_end);
        }
    }

    /// Signs the receipt as the next in the chain and queues its insert, unless its number is
    /// not reserved yet.
    fn sign_next(
        &self,
        writer: &Writer,
        key: &SecretKey,
        nonces: Option<&NoncePool>,
        (mut receipt, data): (Receipt, Option<CallData>),
    ) -> Result<Step, Error> {
        let mut head = lock(&self.head);
        if head.next_seq >= head.reserved_until {
            let block_end = (head.next_seq / RECEIPT_SEQ_BLOCK + 1) * RECEIPT_SEQ_BLOCK;
            return Ok(Step::Reserve(block_end, (receipt, data)));
        }
        receipt.seq = head.next_seq;
        receipt.prev = head.prev;
        let signed = match nonces {
            Some(pool) => Signed::sign_with_pool(receipt, pool)?,
            None => Signed::sign(receipt, key)?,
        };
        let genesis = head.prev.is_none();
        head.next_seq += 1;
        head.prev = Some(signed.hash());
        // Queued while the head is held, so inserts reach the writer in chain order.
        let stored = signed.clone();
        let store =
            move |conn: &Connection, path: &Path| store_own_receipt(conn, path, &stored, data);
        if !genesis && writer.detached_backlog() < MAX_BACKLOG {
            writer.queue_detached(store, "a receipt handed out before its commit");
            return Ok(Step::Handed(signed));
        }
        // The chain's first receipt is committed before it is handed out: a skip after a crash
        // must start from a receipt the host holds, or scoring could not follow it (see
        // `reputation::contiguous`). So is a receipt that finds the writer behind: callers
        // then wait for it, as with committed receipts, rather than pile up work in memory.
        let (reply, answer) = writer::oneshot();
        writer.queue(store, Reply::Async(reply));
        Ok(Step::Commit(signed, answer))
    }
}

/// Most receipts handed out and not yet committed. Beyond it, calls wait for their commit: the
/// writer is behind, and what a crash could lose stays bounded.
const MAX_BACKLOG: u64 = 256;

/// What an append does once it has let go of the head.
enum Step {
    /// Hand this receipt out now; its insert is queued.
    Handed(SignedReceipt),
    /// Wait for this receipt's commit, then hand it out.
    Commit(SignedReceipt, writer::OneshotReceiver<Result<(), Error>>),
    /// Reserve the numbers up to this one, then sign the receipt.
    Reserve(u64, (Receipt, Option<CallData>)),
}

/// The write that extends `host`'s reservation to at least `end`, flushed before it is answered.
fn reserve_until(
    host: String,
    end: u64,
) -> impl FnOnce(&Connection, &Path) -> Result<(), Error> + Send + 'static {
    move |conn, path| {
        conn.prepare_cached(
            "INSERT INTO receipt_seq (host, resume_at, reserved_until) VALUES (?1, 0, ?2)
             ON CONFLICT (host) DO UPDATE
             SET reserved_until = MAX(reserved_until, excluded.reserved_until)",
        )
        .and_then(|mut stmt| stmt.execute(params![host, end as i64]))
        .map_err(|e| db_error(path, e))?;
        sync_before_answering();
        Ok(())
    }
}

/// Where `host`'s chain goes on, as the database has it.
pub(super) struct NextInChain {
    /// After its last stored receipt, or where the registry resumed after an unclean shutdown.
    pub seq: u64,
    /// The last stored receipt.
    pub prev: Option<Hash>,
    /// Where the registry resumed after an unclean shutdown.
    pub resume_at: i64,
    /// Numbers below this are reserved on the disk.
    pub reserved_until: u64,
}

/// Reads where `host`'s chain goes on.
pub(super) fn next_in_chain(
    conn: &Connection,
    path: &Path,
    host: &str,
) -> Result<NextInChain, Error> {
    let db = |e| db_error(path, e);
    // `CAST(?1 AS TEXT)`, not `?1`: SQLite marks a bare parameter compared with an indexed
    // column as worth re-planning for, and then prepares the statement again at every run
    // (rusqlite clears a cached statement's bindings): a tenth of a warm call.
    let last: Option<(i64, String)> = conn
        .prepare_cached(
            "SELECT seq, hash FROM receipts WHERE host = CAST(?1 AS TEXT)
             ORDER BY seq DESC LIMIT 1",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![host], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()
        })
        .map_err(db)?;
    let after_last = last.as_ref().map_or(0, |(seq, _)| *seq + 1);
    let (resume_at, reserved_until): (i64, i64) = conn
        .prepare_cached("SELECT resume_at, reserved_until FROM receipt_seq WHERE host = ?1")
        .and_then(|mut stmt| {
            stmt.query_row(params![host], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()
        })
        .map_err(db)?
        .unwrap_or((0, 0));
    let negative = || Error::Corrupt {
        path: path.to_owned(),
        what: "a negative receipt sequence number".into(),
    };
    let seq = u64::try_from(after_last.max(resume_at)).map_err(|_| negative())?;
    let prev = match last {
        Some((_, hash)) => Some(parse_stored(path, &hash)?),
        None => None,
    };
    let reserved_until = u64::try_from(reserved_until).map_err(|_| negative())?;
    Ok(NextInChain {
        seq,
        prev,
        resume_at,
        reserved_until,
    })
}

/// Stores a receipt this host signed, with its call's input and transcript, and marks the
/// request it answers as answered.
pub(super) fn store_own_receipt(
    conn: &Connection,
    path: &Path,
    receipt: &SignedReceipt,
    data: Option<CallData>,
) -> Result<(), Error> {
    let db = |e| db_error(path, e);
    insert_receipt_row(conn, receipt, None).map_err(db)?;
    let body = receipt.body();
    if let Some(data) = &data {
        call_data::insert(conn, &body.input_hash, data, body.timestamp_ms).map_err(db)?;
        // Now and then, not on every receipt: the expired rows are few and indexed.
        if body.seq.is_multiple_of(256) {
            call_data::expire(conn, body.timestamp_ms).map_err(db)?;
        }
    }
    if let Some(request) = body.request {
        conn.prepare_cached("UPDATE requests SET answered = 1 WHERE hash = ?1")
            .and_then(|mut stmt| stmt.execute(params![request.to_hex()]))
            .map_err(db)?;
    }
    Ok(())
}

/// How a process holds the signer lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lock {
    /// Signing the committed way, beside others doing the same.
    Shared,
    /// Signing ahead of the commit, alone.
    Exclusive,
}

/// Takes the signer lock of the database at `db` without waiting: refused with
/// [`Error::SignerBusy`] if another process holds it in a way that conflicts.
pub(super) fn signer_lock(db: &Path, how: Lock) -> Result<File, Error> {
    let path = lock_path(db);
    let failed = |reason: String| Error::WriteFailed {
        path: db.to_owned(),
        reason,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| {
            failed(format!(
                "cannot open the signer lock {}: {e}",
                path.display()
            ))
        })?;
    let taken = match how {
        Lock::Shared => file.try_lock_shared(),
        Lock::Exclusive => file.try_lock(),
    };
    match taken {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::SignerBusy {
            path: db.to_owned(),
            holder: match how {
                Lock::Shared => "a host signing receipts ahead of committing them",
                Lock::Exclusive => "a process signing receipts",
            },
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(failed(format!(
            "cannot lock the signer lock {}: {e}",
            path.display()
        ))),
    }
}

fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".signer");
    PathBuf::from(name)
}
