//! Hosts' receipt chains: appending to this host's own (sequence numbers, reservations, the
//! declared skip after a crash), what a registry knows about every host's chain (heads,
//! activity, forks) and the evidence it holds against any key.

use rusqlite::{Connection, OptionalExtension, params};

use super::call_data::CallData;
use super::pipeline::{
    Lock, NextInChain, Pipeline, ReceiptDurability, next_in_chain, signer_lock, store_own_receipt,
};
use super::{Registry, db_error, parse_stored};
use std::sync::Arc;

use crate::identity::{PublicKey, SecretKey};
use crate::nonces::NoncePool;
use crate::receipt::{RECEIPT_SEQ_BLOCK, Receipt, SignedReceipt};
use crate::signed::Signed;
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
    /// `foreign-nested`, `broken-link`, `double-feedback`, `double-release` or `fraud` (a
    /// re-execution proved the receipt wrong, see [`FraudProof`](crate::FraudProof)).
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
    /// Records a fraud proof against the receipt's host, once the caller has re-executed the
    /// call and reached the proof's finding: the host then counts as dishonest in every score
    /// this registry computes, like a host that forked its chain. The proof is kept whole, so
    /// it can be shown to anyone.
    pub fn record_fraud(&self, proof: &crate::FraudProof, reason: &str) -> Result<(), Error> {
        let host = proof.receipt.body().host;
        let subject = proof.receipt.hash();
        let (reason, bytes) = (reason.to_owned(), proof.to_bytes());
        self.write(move |conn, path| {
            record_misbehaviour(conn, path, &host, "fraud", &subject, &reason, &[&bytes])
        })
    }

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

impl Registry {
    /// Signs and stores this host's next receipt: `receipt` with its `seq` and `prev` set to
    /// follow the host's last receipt. Appends are serialised, so the chain never forks on one
    /// host. Returns once the receipt is stored as the registry's [`ReceiptDurability`] says
    /// (see the durability contract on [`Registry`]).
    pub fn append_receipt(
        &self,
        host_key: &SecretKey,
        receipt: Receipt,
    ) -> Result<SignedReceipt, Error> {
        if let Some(pipeline) = self.pipeline.get() {
            // Ready at the first poll, but when it takes a new block: then it waits for the
            // reservation's commit, parked.
            return block_on(pipeline.clone().append(
                self.writer.clone(),
                self.writer_stopped(),
                host_key.clone(),
                self.nonce_pool(host_key),
                receipt,
                None,
            ));
        }
        self.sign_committed()?;
        self.write(append(
            host_key.clone(),
            self.nonce_pool(host_key),
            receipt,
            None,
        ))
    }

    /// [`Registry::append_receipt`] for async callers, without a thread blocked on the commit.
    pub fn append_receipt_async(
        &self,
        host_key: &SecretKey,
        receipt: Receipt,
    ) -> impl Future<Output = Result<SignedReceipt, Error>> + Send + 'static {
        self.append_async(host_key, receipt, None)
    }

    /// [`Registry::append_receipt_async`], storing the call's input and transcript in the same
    /// transaction (see [`CallData`]).
    pub fn append_receipt_with(
        &self,
        host_key: &SecretKey,
        receipt: Receipt,
        data: CallData,
    ) -> impl Future<Output = Result<SignedReceipt, Error>> + Send + 'static {
        self.append_async(host_key, receipt, Some(data))
    }

    /// Makes this registry hand out `host_key`'s receipts as `durability` says. Call it before
    /// signing any receipt: [`ReceiptDurability::Pipelined`] takes the database's signer lock
    /// exclusively, and is refused with [`Error::SignerBusy`] while another process (or this
    /// one, having signed the committed way) holds it.
    pub fn set_receipt_durability(
        &self,
        host_key: &SecretKey,
        durability: ReceiptDurability,
    ) -> Result<(), Error> {
        match durability {
            ReceiptDurability::Committed if self.pipeline.get().is_some() => Err(Error::Invalid {
                kind: "receipt durability",
                reason: "this registry already signs receipts ahead of their commit".into(),
            }),
            ReceiptDurability::Committed => Ok(()),
            ReceiptDurability::Pipelined => {
                if self.pipeline.get().is_some() {
                    return Ok(());
                }
                let lock = signer_lock(&self.path, Lock::Exclusive)?;
                let host = host_key.public().to_hex();
                let head = self.write(move |conn, path| {
                    let next = next_in_chain(conn, path, &host)?;
                    Ok((next.seq, next.prev, next.reserved_until))
                })?;
                let _ = self
                    .pipeline
                    .set(Arc::new(Pipeline::new(host_key.public(), lock, head)));
                Ok(())
            }
        }
    }

    /// How this registry hands out receipts.
    pub fn receipt_durability(&self) -> ReceiptDurability {
        match self.pipeline.get() {
            Some(_) => ReceiptDurability::Pipelined,
            None => ReceiptDurability::Committed,
        }
    }

    fn append_async(
        &self,
        host_key: &SecretKey,
        receipt: Receipt,
        data: Option<CallData>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<SignedReceipt, Error>> + Send + 'static>>
    {
        let nonces = self.nonce_pool(host_key);
        if let Some(pipeline) = self.pipeline.get() {
            return Box::pin(pipeline.clone().append(
                self.writer.clone(),
                self.writer_stopped(),
                host_key.clone(),
                nonces,
                receipt,
                data,
            ));
        }
        if let Err(busy) = self.sign_committed() {
            return Box::pin(std::future::ready(Err(busy)));
        }
        Box::pin(self.write_async(append(host_key.clone(), nonces, receipt, data)))
    }

    /// Takes the signer lock shared, once: signing the committed way beside a process that
    /// signs ahead of its commits would fork the chain.
    fn sign_committed(&self) -> Result<(), Error> {
        if self.signer.get().is_none() {
            let lock = signer_lock(&self.path, Lock::Shared)?;
            let _ = self.signer.set(lock);
        }
        Ok(())
    }

    /// The nonce pool for `key`, started once this registry has signed
    /// [`NONCE_POOL_AFTER`] receipts: a host that signs many gains, a command that signs one and
    /// exits would only pay for filling it. `None` before, or if its thread cannot be started:
    /// receipts are then signed the RFC 8032 way, only slower.
    fn nonce_pool(&self, key: &SecretKey) -> Option<Arc<NoncePool>> {
        let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        let (pool, signed_without) = &mut *nonces;
        if let Some(pool) = pool.as_ref().filter(|pool| pool.public() == key.public()) {
            return Some(pool.clone());
        }
        if *signed_without < NONCE_POOL_AFTER {
            *signed_without += 1;
            return None;
        }
        match NoncePool::start(key) {
            Ok(started) => Some(pool.insert(Arc::new(started)).clone()),
            Err(error) => {
                tracing::warn!(%error, "cannot start the receipt signer's nonce thread");
                None
            }
        }
    }
}

/// Receipts a registry signs the RFC 8032 way before it starts a nonce pool.
const NONCE_POOL_AFTER: u64 = 32;

/// The write that signs `receipt` as `host_key`'s next receipt and stores it.
///
/// The sequence number follows the host's last stored receipt, or jumps to where the registry
/// resumed after an unclean shutdown (`receipt_seq.resume_at`, see `Registry::open`). Numbers
/// are reserved a block at a time (`reserved_until`), and a reservation is flushed to the disk
/// before the receipt that takes it is answered, so a number is never used twice.
fn append(
    host_key: SecretKey,
    nonces: Option<Arc<NoncePool>>,
    mut receipt: Receipt,
    data: Option<CallData>,
) -> impl FnOnce(&Connection, &std::path::Path) -> Result<SignedReceipt, Error> + Send + 'static {
    move |conn, path| {
        let db = |e| db_error(path, e);
        let host = host_key.public().to_hex();
        let NextInChain {
            seq,
            prev,
            resume_at,
            reserved_until,
        } = next_in_chain(conn, path, &host)?;
        if seq >= reserved_until {
            let block = RECEIPT_SEQ_BLOCK;
            conn.prepare_cached(
                "INSERT INTO receipt_seq (host, resume_at, reserved_until) VALUES (?1, ?2, ?3)
                 ON CONFLICT (host) DO UPDATE SET reserved_until = excluded.reserved_until",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![host, resume_at, ((seq / block + 1) * block) as i64])
            })
            .map_err(db)?;
            super::sync_before_answering();
        }
        receipt.seq = seq;
        receipt.prev = prev;
        let receipt = match &nonces {
            Some(pool) => Signed::sign_with_pool(receipt, pool)?,
            None => Signed::sign(receipt, &host_key)?,
        };
        store_own_receipt(conn, path, &receipt, data)?;
        Ok(receipt)
    }
}

/// Polls a future to completion on this thread, parking between polls.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}
