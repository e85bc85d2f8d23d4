//! Evidence from other keys: receipts with the requests they answer, and feedback.
//!
//! Every receipt and feedback record from a peer or an HTTP client goes through here, whichever
//! way it came, and is checked against the records it refers to before it counts:
//!
//! - a receipt's request (caller-signed, kept in the receipt's row) must name the same caller, host, agent and input, and
//!   allow at least the receipt's fuel limit; its manifest must name the component that ran,
//!   allow the fuel limit, and give exactly the receipt's charge for its own fuel plus its
//!   nested receipts' charges; its nested receipts must be the same host's; and its chain link
//!   (`prev`) must match the host's receipt before it, and the one after it;
//! - feedback must rate a known receipt as that receipt's caller (see
//!   [`Feedback::validate`](crate::Feedback::validate)).
//!
//! A receipt that contradicts records signed by someone else (its request, its manifest) or by
//! its own host (its nested receipts, its chain) is proof that its host lied. The proof is kept
//! as [`Misbehaviour`](super::Misbehaviour) and the receipt is refused. A second feedback record
//! on one receipt, or a second manifest for one release, is kept the same way against its
//! signer. Records that refer to something not yet here (feedback before its receipt, a receipt
//! before its manifest or nested receipts) wait in a bounded pending table and are checked
//! again when that arrives, so the order records arrive in does not change what is stored.

use rusqlite::{Connection, OptionalExtension, params};

use super::chain::record_misbehaviour;
use super::pending::{retry_pending, wait};
use super::quota::{Evidence, Strangers};
use super::records::insert_receipt_row;
use super::{Inserted, Registry, db_error, parse_stored};
use crate::evidence::{SignedFeedback, SignedRequest};
use crate::identity::PublicKey;
use crate::receipt::SignedReceipt;
use crate::rules::{MAX_WALL_MS, charge_for, now_ms};
use crate::{Error, Hash};

/// A manifest's component hash, max fuel, price, signed bytes and max memory (the numbers are
/// NULL in rows stored before they were bounded).
type ManifestRow = (String, Option<i64>, Option<i64>, Vec<u8>, Option<i64>);

/// A receipt's hash, `prev` and signed bytes.
type ChainRow = (String, Option<String>, Vec<u8>);

/// What became of one record in a write.
enum Stored {
    Done(Inserted),
    /// It waits for the record with this hash.
    Waiting(Hash),
}

impl Registry {
    /// Stores a verified receipt from any host, with the signed request it answers (needed when
    /// the receipt names one and this registry does not hold it). See
    /// [`Registry::insert_receipts`].
    pub fn insert_receipt(
        &self,
        receipt: &SignedReceipt,
        request: Option<&SignedRequest>,
    ) -> Result<Inserted, Error> {
        let batch = vec![(receipt.clone(), request.cloned())];
        self.insert_receipts(batch)?
            .pop()
            .unwrap_or(Ok(Inserted::AlreadyPresent))
    }

    /// Stores many verified receipts, each with the request it answers, in one transaction.
    /// Each gets its own answer: stored, already present, waiting for its manifest or nested
    /// receipts ([`Inserted::Pending`]), or refused with the reason. A refusal that proves its
    /// host lied is also recorded against the host. The outer error is a database failure.
    ///
    /// A receipt whose host already signed a different receipt with the same sequence number is
    /// stored too, and the pair is recorded as a [`Fork`](super::Fork).
    pub fn insert_receipts(
        &self,
        batch: Vec<(SignedReceipt, Option<SignedRequest>)>,
    ) -> Result<Vec<Result<Inserted, Error>>, Error> {
        let now = now_ms();
        let strangers = self.strangers();
        self.write(move |conn, path| {
            let mut arrived = Vec::new();
            let mut answers = Vec::with_capacity(batch.len());
            for (receipt, request) in &batch {
                if let Err(refused) = crate::check_pair(receipt, request.as_ref()) {
                    answers.push(Err(refused));
                    continue;
                }
                if let Some(request) = request
                    && let Err(refused) = request.body().check_form()
                {
                    answers.push(Err(refused));
                    continue;
                }
                let answer = admit_receipt(
                    conn,
                    path,
                    &strangers,
                    receipt,
                    request.as_ref(),
                    now,
                    &mut arrived,
                )?;
                answers.push(answer);
            }
            retry_pending(conn, path, &strangers, now, arrived)?;
            Ok(answers)
        })
    }

    /// Stores a caller's feedback if it counts: the receipt is known, the rater is its caller
    /// and neither the agent's publisher nor the host, and it is the first feedback on that
    /// receipt. Feedback on a receipt not yet known waits for it ([`Inserted::Pending`]).
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
        let now = now_ms();
        let strangers = self.strangers();
        self.write(move |conn, path| {
            let mut answers = Vec::with_capacity(batch.len());
            for feedback in &batch {
                answers.push(admit_feedback(conn, path, &strangers, feedback, now)?);
            }
            Ok(answers)
        })
    }
}

/// Checks and stores one receipt; the outer error is a database failure, the inner one the
/// receipt's refusal. Hashes of receipts stored are pushed on `arrived`.
pub(super) fn admit_receipt(
    conn: &Connection,
    path: &std::path::Path,
    strangers: &Strangers,
    receipt: &SignedReceipt,
    request: Option<&SignedRequest>,
    now: u64,
    arrived: &mut Vec<Hash>,
) -> Result<Result<Inserted, Error>, Error> {
    match check_and_store(conn, path, strangers, receipt, request, now)? {
        Ok(Stored::Done(Inserted::New)) => {
            arrived.push(receipt.hash());
            Ok(Ok(Inserted::New))
        }
        Ok(Stored::Done(done)) => Ok(Ok(done)),
        Ok(Stored::Waiting(on)) => wait(
            conn,
            path,
            strangers,
            "pending_receipts",
            &receipt.body().host,
            on,
            receipt,
            request.map(|r| r.as_bytes()),
        ),
        Err(refused) => Ok(Err(refused)),
    }
}

fn check_and_store(
    conn: &Connection,
    path: &std::path::Path,
    strangers: &Strangers,
    receipt: &SignedReceipt,
    came_with: Option<&SignedRequest>,
    now: u64,
) -> Result<Result<Stored, Error>, Error> {
    let db = |e| db_error(path, e);
    let hash = receipt.hash().to_hex();
    let body = receipt.body();
    let known: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM receipts WHERE hash = ?1)
                 OR EXISTS (SELECT 1 FROM pending_receipts WHERE hash = ?1)",
        )
        .and_then(|mut stmt| stmt.query_row(params![hash], |row| row.get(0)))
        .map_err(db)?;
    if known {
        return Ok(Ok(Stored::Done(Inserted::AlreadyPresent)));
    }
    if let Err(refused) = body.check(now) {
        return Ok(Err(refused));
    }
    let lied = |kind: &'static str,
                reason: String,
                proof: Vec<&[u8]>|
     -> Result<Result<Stored, Error>, Error> {
        record_misbehaviour(
            conn,
            path,
            &body.host,
            kind,
            &receipt.hash(),
            &reason,
            &proof,
        )?;
        Ok(Err(Error::Invalid {
            kind: "receipt",
            reason: format!("{reason}; recorded as evidence against host {}", body.host),
        }))
    };

    if let Some(request_hash) = body.request {
        // The request it came with, or one this host admitted itself.
        let stored: Option<Vec<u8>> = match came_with {
            Some(request) => Some(request.as_bytes().to_vec()),
            None => conn
                .prepare_cached("SELECT signed FROM requests WHERE hash = ?1")
                .and_then(|mut stmt| {
                    stmt.query_row(params![request_hash.to_hex()], |row| row.get(0))
                        .optional()
                })
                .map_err(db)?,
        };
        let Some(bytes) = stored else {
            return Ok(Err(Error::Invalid {
                kind: "receipt",
                reason: format!(
                    "it answers request {request_hash}, which did not come with it; a receipt travels with its caller's signed request"
                ),
            }));
        };
        let request = SignedRequest::from_stored(&bytes)?;
        let asked = request.body();
        let mismatch = if Some(asked.caller) != body.caller {
            Some("caller")
        } else if asked.host != body.host {
            Some("host")
        } else if asked.agent != body.agent.manifest {
            Some("agent")
        } else if asked.input_hash != body.input_hash {
            Some("input hash")
        } else if body.fuel_limit > asked.fuel_limit {
            Some("fuel limit")
        } else if body.timestamp_ms > asked.expires_at_ms.saturating_add(MAX_WALL_MS)
            || body.timestamp_ms
                < asked
                    .expires_at_ms
                    .saturating_sub(crate::MAX_REQUEST_TTL_MS)
        {
            Some("time")
        } else {
            None
        };
        if let Some(field) = mismatch {
            return lied(
                "request-mismatch",
                format!("its {field} differs from the caller's signed request {request_hash}"),
                vec![receipt.as_bytes(), request.as_bytes()],
            );
        }
    }

    let manifest: Option<ManifestRow> = conn
        .prepare_cached(
            "SELECT component_hash, max_fuel, price_per_mfuel, signed, max_memory_bytes
             FROM manifests WHERE hash = ?1",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![body.agent.manifest.to_hex()], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            })
            .optional()
        })
        .map_err(db)?;
    let Some((component, max_fuel, price, manifest_bytes, max_memory)) = manifest else {
        return Ok(Ok(Stored::Waiting(body.agent.manifest)));
    };
    let (Some(max_fuel), Some(price)) = (max_fuel, price) else {
        return Ok(Err(Error::Invalid {
            kind: "receipt",
            reason: format!(
                "its manifest {} breaks the manifest rules",
                body.agent.manifest
            ),
        }));
    };
    if component != body.agent.component.to_hex() {
        return lied(
            "wrong-component",
            format!(
                "it names component {}, but its manifest names {component}",
                body.agent.component
            ),
            vec![receipt.as_bytes(), &manifest_bytes],
        );
    }
    if let (Some(limits), Some(max_memory)) = (body.limits, max_memory)
        && limits.memory_bytes > max_memory as u64
    {
        return lied(
            "over-limit",
            format!(
                "its memory limit {} is above its manifest's max_memory_bytes {max_memory}",
                limits.memory_bytes
            ),
            vec![receipt.as_bytes(), &manifest_bytes],
        );
    }
    if body.fuel_limit > max_fuel as u64 {
        return lied(
            "over-limit",
            format!(
                "its fuel limit {} is above its manifest's max_fuel {max_fuel}",
                body.fuel_limit
            ),
            vec![receipt.as_bytes(), &manifest_bytes],
        );
    }

    let mut nested_fuel = 0u64;
    let mut nested_charge = 0u64;
    let mut proof: Vec<Vec<u8>> = Vec::new();
    for nested in &body.nested {
        let row: Option<(String, i64, i64, Vec<u8>)> = conn
            .prepare_cached("SELECT host, fuel_used, charge, signed FROM receipts WHERE hash = ?1")
            .and_then(|mut stmt| {
                stmt.query_row(params![nested.to_hex()], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })
                .optional()
            })
            .map_err(db)?;
        let Some((host, fuel, charge, bytes)) = row else {
            return Ok(Ok(Stored::Waiting(*nested)));
        };
        if host != body.host.to_hex() {
            return lied(
                "foreign-nested",
                format!("its nested receipt {nested} was signed by another host"),
                vec![receipt.as_bytes(), &bytes],
            );
        }
        nested_fuel = nested_fuel.saturating_add(fuel as u64);
        nested_charge = nested_charge.saturating_add(charge as u64);
        proof.push(bytes);
    }
    let mut proof: Vec<&[u8]> = proof.iter().map(Vec::as_slice).collect();
    proof.insert(0, &manifest_bytes);
    proof.insert(0, receipt.as_bytes());
    let Some(own_fuel) = body.fuel_used.checked_sub(nested_fuel) else {
        return lied(
            "fuel",
            format!(
                "its fuel used {} is less than its nested calls' {nested_fuel}",
                body.fuel_used
            ),
            proof,
        );
    };
    let model_charge = (body.model_usage.iter()).fold(0u64, |sum, u| sum.saturating_add(u.charge));
    let egress_charge = body.egress.map_or(0, |e| e.charge);
    let expected = charge_for(own_fuel, price as u64)
        .saturating_add(nested_charge)
        .saturating_add(model_charge)
        .saturating_add(egress_charge);
    if body.charge != expected {
        return lied(
            "charge",
            format!(
                "its charge {} is not {expected}, what its manifest's price, its fuel, its \
                 model usage and its outbound HTTP give",
                body.charge
            ),
            proof,
        );
    }

    if let Some(broken) = chain_break(conn, path, receipt)? {
        let (reason, other) = broken;
        record_misbehaviour(
            conn,
            path,
            &body.host,
            "broken-link",
            &receipt.hash(),
            &reason,
            &[receipt.as_bytes(), &other],
        )?;
        tracing::warn!(host = %body.host, seq = body.seq, "host broke its receipt chain");
    }
    if let Err(refused) = strangers.count(conn, path, Evidence::Receipt, &body.host)? {
        return Ok(Err(refused));
    }
    if insert_receipt_row(conn, receipt, came_with.map(|r| r.as_bytes())).map_err(db)? == 0 {
        return Ok(Ok(Stored::Done(Inserted::AlreadyPresent)));
    }
    let first: Option<String> = conn
        .prepare_cached(
            "SELECT hash FROM receipts WHERE host = ?1 AND seq = ?2 AND hash != ?3
             ORDER BY rowid LIMIT 1",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![body.host.to_hex(), body.seq as i64, hash], |row| {
                row.get(0)
            })
            .optional()
        })
        .map_err(db)?;
    if let Some(first) = first {
        tracing::warn!(host = %body.host, seq = body.seq, "host forked its receipt chain");
        conn.execute(
            "INSERT OR IGNORE INTO forks (host, seq, receipt_a, receipt_b) VALUES (?1, ?2, ?3, ?4)",
            params![body.host.to_hex(), body.seq as i64, first, hash],
        )
        .map_err(db)?;
    }
    Ok(Ok(Stored::Done(Inserted::New)))
}

/// Whether `receipt` breaks its host's chain where it meets the receipts stored before and
/// after it: the reason, and the other receipt.
fn chain_break(
    conn: &Connection,
    path: &std::path::Path,
    receipt: &SignedReceipt,
) -> Result<Option<(String, Vec<u8>)>, Error> {
    let body = receipt.body();
    let db = |e| db_error(path, e);
    let neighbours = |seq: u64| -> Result<Vec<ChainRow>, Error> {
        let mut stmt = conn
            .prepare_cached("SELECT hash, prev, signed FROM receipts WHERE host = ?1 AND seq = ?2")
            .map_err(db)?;
        let rows = stmt
            .query_map(params![body.host.to_hex(), seq as i64], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    };
    if let (Some(prev), Some(before)) = (body.prev, body.seq.checked_sub(1)) {
        for (hash, _, bytes) in neighbours(before)? {
            if hash != prev.to_hex() {
                return Ok(Some((
                    format!(
                        "receipt {} names prev {prev}, but seq {before} is {hash}",
                        body.seq
                    ),
                    bytes,
                )));
            }
        }
    }
    let this = receipt.hash().to_hex();
    for (hash, prev, bytes) in neighbours(body.seq + 1)? {
        if prev.as_deref() != Some(this.as_str()) {
            return Ok(Some((
                format!(
                    "receipt {} ({hash}) does not follow receipt {} ({this})",
                    body.seq + 1,
                    body.seq
                ),
                bytes,
            )));
        }
    }
    Ok(None)
}

pub(super) fn admit_feedback(
    conn: &Connection,
    path: &std::path::Path,
    strangers: &Strangers,
    feedback: &SignedFeedback,
    now: u64,
) -> Result<Result<Inserted, Error>, Error> {
    let db = |e| db_error(path, e);
    let body = feedback.body();
    if body.created_at_ms > now.saturating_add(crate::rules::MAX_CLOCK_SKEW_MS) {
        return Ok(Err(Error::Invalid {
            kind: "feedback",
            reason: "created_at_ms is in the future".into(),
        }));
    }
    let existing: Option<(String, Vec<u8>)> = conn
        .prepare_cached("SELECT hash, signed FROM feedback WHERE receipt_hash = ?1")
        .and_then(|mut stmt| {
            stmt.query_row(params![body.receipt.to_hex()], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()
        })
        .map_err(db)?;
    let receipt: Option<Vec<u8>> = conn
        .prepare_cached("SELECT signed FROM receipts WHERE hash = ?1")
        .and_then(|mut stmt| {
            stmt.query_row(params![body.receipt.to_hex()], |row| row.get(0))
                .optional()
        })
        .map_err(db)?;
    let Some(receipt) = receipt else {
        return wait(
            conn,
            path,
            strangers,
            "pending_feedback",
            &body.rater,
            body.receipt,
            feedback,
            None,
        );
    };
    let receipt = SignedReceipt::from_stored(&receipt)?;
    let publisher: String = conn
        .prepare_cached("SELECT publisher FROM manifests WHERE hash = ?1")
        .and_then(|mut stmt| {
            stmt.query_row(params![receipt.body().agent.manifest.to_hex()], |row| {
                row.get(0)
            })
        })
        .map_err(db)?;
    let publisher: PublicKey = parse_stored(path, &publisher)?;
    if let Err(refused) = body.validate(&receipt, &publisher) {
        return Ok(Err(refused.into()));
    }
    match existing {
        Some((hash, _)) if hash == feedback.hash().to_hex() => {
            return Ok(Ok(Inserted::AlreadyPresent));
        }
        Some((first, first_bytes)) => {
            // The same rater signed two ratings of one call: the pair is evidence against it,
            // and every host that sees both records it, in whichever order they came.
            record_misbehaviour(
                conn,
                path,
                &body.rater,
                "double-feedback",
                &body.receipt,
                &format!("feedback {first} and {} rate one receipt", feedback.hash()),
                &[&first_bytes, feedback.as_bytes()],
            )?;
            return Ok(Err(Error::DuplicateFeedback(body.receipt)));
        }
        None => {}
    }
    if let Err(refused) = strangers.count(conn, path, Evidence::Feedback, &body.rater)? {
        return Ok(Err(refused));
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
    Ok(Ok(Inserted::New))
}
