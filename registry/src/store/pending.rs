//! Records that refer to something not yet here: feedback before its receipt, a receipt before
//! its manifest or its nested receipts. They wait in `pending_receipts` and `pending_feedback`,
//! bounded per signer, and are checked again, through the same admission as any record, when
//! what they wait for is stored; so the order records arrive in does not change what is stored.

use rusqlite::{Connection, params};

use super::ingest::{admit_feedback, admit_receipt};
use super::quota::Strangers;
use super::{Inserted, db_error};
use crate::evidence::{SignedFeedback, SignedRequest};
use crate::identity::PublicKey;
use crate::receipt::SignedReceipt;
use crate::signed::Signed;
use crate::{Error, Hash};

/// A waiting record's signed bytes, and the request a waiting receipt came with.
type WaitingRow = (Vec<u8>, Option<Vec<u8>>);

/// Keeps `record` until the record `on` arrives, within the quota of waiting records per
/// signer ([`MAX_PENDING_PER_KEY`](super::MAX_PENDING_PER_KEY) by default).
#[allow(clippy::too_many_arguments)]
pub(super) fn wait<T: crate::Record>(
    conn: &Connection,
    path: &std::path::Path,
    strangers: &Strangers,
    table: &str,
    signer: &PublicKey,
    on: Hash,
    record: &Signed<T>,
    request: Option<&[u8]>,
) -> Result<Result<Inserted, Error>, Error> {
    let db = |e| db_error(path, e);
    let waiting: i64 = conn
        .prepare_cached(&format!("SELECT COUNT(*) FROM {table} WHERE signer = ?1"))
        .and_then(|mut stmt| stmt.query_row(params![signer.to_hex()], |row| row.get(0)))
        .map_err(db)?;
    let quota = strangers.quotas().pending_per_key;
    if waiting >= quota {
        return Ok(Err(strangers.refuse(
            signer,
            format!("{quota} {} records waiting for what they refer to", T::KIND),
        )));
    }
    let stored = match request {
        // Only a waiting receipt has a request with it.
        Some(request) => conn
            .prepare_cached(&format!(
                "INSERT OR IGNORE INTO {table} (hash, signer, waiting_for, signed, request)
                 VALUES (?1, ?2, ?3, ?4, ?5)"
            ))
            .and_then(|mut stmt| {
                stmt.execute(params![
                    record.hash().to_hex(),
                    signer.to_hex(),
                    on.to_hex(),
                    record.as_bytes(),
                    request
                ])
            }),
        None => conn
            .prepare_cached(&format!(
                "INSERT OR IGNORE INTO {table} (hash, signer, waiting_for, signed)
                 VALUES (?1, ?2, ?3, ?4)"
            ))
            .and_then(|mut stmt| {
                stmt.execute(params![
                    record.hash().to_hex(),
                    signer.to_hex(),
                    on.to_hex(),
                    record.as_bytes()
                ])
            }),
    };
    stored.map_err(db)?;
    Ok(Ok(Inserted::Pending))
}

/// Checks again the records waiting for any of `arrived` (and for what they in turn bring).
pub(super) fn retry_pending(
    conn: &Connection,
    path: &std::path::Path,
    strangers: &Strangers,
    now: u64,
    mut arrived: Vec<Hash>,
) -> Result<(), Error> {
    let db = |e| db_error(path, e);
    while let Some(hash) = arrived.pop() {
        let take = |sql: &str| -> Result<Vec<WaitingRow>, Error> {
            let mut stmt = conn.prepare_cached(sql).map_err(db)?;
            let rows = stmt
                .query_map(params![hash.to_hex()], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)
        };
        for (bytes, request) in
            take("DELETE FROM pending_receipts WHERE waiting_for = ?1 RETURNING signed, request")?
        {
            let receipt = SignedReceipt::from_stored(&bytes)?;
            let request = request
                .map(|r| SignedRequest::from_stored(&r))
                .transpose()?;
            if let Err(refused) = admit_receipt(
                conn,
                path,
                strangers,
                &receipt,
                request.as_ref(),
                now,
                &mut arrived,
            )? {
                tracing::debug!(receipt = %receipt.hash(), %refused, "a waiting receipt was refused");
            }
        }
        for (bytes, _) in
            take("DELETE FROM pending_feedback WHERE waiting_for = ?1 RETURNING signed, NULL")?
        {
            let feedback = SignedFeedback::from_stored(&bytes)?;
            if let Err(refused) = admit_feedback(conn, path, strangers, &feedback, now)? {
                tracing::debug!(feedback = %feedback.hash(), %refused, "waiting feedback was refused");
            }
        }
    }
    Ok(())
}
