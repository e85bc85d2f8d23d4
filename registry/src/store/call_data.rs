//! The inputs and transcripts of this host's own receipts, kept so that anyone holding a receipt
//! can fetch what a re-execution needs from the host that signed it.
//!
//! They are written in the same transaction as their receipt, so a host holds the input and
//! transcript of every receipt it signed for [`CALL_DATA_RETENTION_MS`] after signing it; a host
//! that cannot produce them within that window has signed something it cannot back. Inputs are
//! stored under the receipt's `input_hash` ([`Input::hash`](crate::Input::hash)), transcripts
//! under BLAKE3 of their bytes ([`BlobRef::hash`](crate::BlobRef)).

use rusqlite::{Connection, OptionalExtension, params};

use super::Registry;
use crate::{Error, Hash};

/// How long a host keeps a receipt's input and transcript: seven days, in milliseconds. A
/// verifier has that long to fetch them; afterwards the receipt can be checked only by those who
/// kept them.
pub const CALL_DATA_RETENTION_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// A receipt's input and transcript bytes, stored with it (see [`Registry::append_receipt_with`]).
#[derive(Clone, Debug, Default)]
pub struct CallData {
    /// [`Input::to_bytes`](crate::Input::to_bytes) of the call's input.
    pub input: Vec<u8>,
    /// [`Transcript::to_bytes`](crate::Transcript::to_bytes) of its host calls.
    pub transcript: Vec<u8>,
}

impl Registry {
    /// The input or transcript stored under `hash` (an input hash, or a transcript's BLAKE3),
    /// if this host still keeps it.
    pub fn call_data(&self, hash: &Hash) -> Result<Option<Vec<u8>>, Error> {
        self.read(|conn| {
            conn.prepare_cached("SELECT bytes FROM call_data WHERE hash = ?1")
                .and_then(|mut stmt| {
                    stmt.query_row(params![hash.to_hex()], |row| row.get(0))
                        .optional()
                })
                .map_err(|e| self.db_error(e))
        })
    }
}

/// Stores a receipt's input and transcript until `signed_ms` plus the retention window; one
/// already stored (the same input asked again) is kept for the later of the two.
pub(super) fn insert(
    conn: &Connection,
    input_hash: &Hash,
    data: &CallData,
    signed_ms: u64,
) -> rusqlite::Result<()> {
    let kept_until =
        i64::try_from(signed_ms.saturating_add(CALL_DATA_RETENTION_MS)).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(
        "INSERT INTO call_data (hash, kind, bytes, kept_until_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (hash) DO UPDATE SET kept_until_ms = max(kept_until_ms, excluded.kept_until_ms)",
    )?;
    stmt.execute(params![
        input_hash.to_hex(),
        "input",
        data.input,
        kept_until
    ])?;
    stmt.execute(params![
        Hash::of(&data.transcript).to_hex(),
        "transcript",
        data.transcript,
        kept_until
    ])?;
    Ok(())
}

/// Forgets inputs and transcripts kept past their window.
pub(super) fn expire(conn: &Connection, now_ms: u64) -> rusqlite::Result<usize> {
    conn.prepare_cached("DELETE FROM call_data WHERE kept_until_ms < ?1")?
        .execute(params![i64::try_from(now_ms).unwrap_or(i64::MAX)])
}
