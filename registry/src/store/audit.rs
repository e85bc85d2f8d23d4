//! What checking other hosts' receipts leaves in the registry: the validations verifiers signed,
//! the receipts to check next, the fraud proofs to hand on, and the receipts whose host could
//! not back them.
//!
//! A host re-executes a sample of the receipts it receives (the host crate's auditor). What it
//! finds is a [`SignedValidation`], kept here with those other verifiers passed on. A
//! validation that finds fraud is acted on only once this host has re-executed the call itself
//! ([`Registry::record_fraud`]); the proof is then kept whole and served to whoever asks
//! ([`Registry::fraud_proof`]). A host that cannot produce the input or transcript of a receipt
//! it signed has that receipt marked unbacked ([`Registry::mark_unbacked`]): it keeps its place
//! in its host's chain but counts for nothing in scores.

use rusqlite::{OptionalExtension, params};

use super::{Inserted, Registry, parse_stored};
use crate::{Error, FraudProof, Hash, PublicKey, Signed, SignedReceipt, SignedValidation};

/// Most receipts one [`Registry::receipts_to_audit`] returns.
const AUDIT_BATCH: i64 = 256;

impl Registry {
    /// Stores a verifier's validation, checked against the rules every validation meets.
    /// Whether its finding is right is not checked here: a finding of fraud is acted on only
    /// through [`Registry::record_fraud`], after this host ran the call itself.
    pub fn insert_validation(&self, validation: &SignedValidation) -> Result<Inserted, Error> {
        validation.body().check(crate::rules::now_ms())?;
        let body = validation.body();
        let row = (
            validation.hash().to_hex(),
            body.receipt.to_hex(),
            body.host.to_hex(),
            body.validator.to_hex(),
            body.finding.is_fraud(),
            validation.as_bytes().to_vec(),
        );
        self.write(move |conn, path| {
            let inserted = conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO validations (hash, receipt, host, validator, fraud, signed)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![row.0, row.1, row.2, row.3, row.4, row.5])
                })
                .map_err(|e| super::db_error(path, e))?;
            Ok(if inserted == 1 {
                Inserted::New
            } else {
                Inserted::AlreadyPresent
            })
        })
    }

    /// The validations of `receipt` stored here, by any verifier.
    pub fn validations_of(&self, receipt: &Hash) -> Result<Vec<SignedValidation>, Error> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT signed FROM validations WHERE receipt = ?1 ORDER BY hash")
                .map_err(|e| self.db_error(e))?;
            let rows = stmt
                .query_map(params![receipt.to_hex()], |row| row.get::<_, Vec<u8>>(0))
                .map_err(|e| self.db_error(e))?;
            let mut found = Vec::new();
            for row in rows {
                found.push(Signed::from_stored(&row.map_err(|e| self.db_error(e))?)?);
            }
            Ok(found)
        })
    }

    /// Whether this host has recorded (proven) fraud by `host` in `receipt`: one key lookup,
    /// for deciding whether a reported fraud still needs checking.
    pub fn fraud_proven(&self, host: &PublicKey, receipt: &Hash) -> Result<bool, Error> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT 1 FROM misbehaviour WHERE key = ?1 AND kind = 'fraud' AND subject = ?2",
            )
            .and_then(|mut stmt| stmt.exists(params![host.to_hex(), receipt.to_hex()]))
            .map_err(|e| self.db_error(e))
        })
    }

    /// The fraud proof this host recorded against `receipt`, if any: what it hands to a host
    /// that heard of the fraud and wants to check it.
    pub fn fraud_proof(&self, receipt: &Hash) -> Result<Option<FraudProof>, Error> {
        let bytes: Option<Vec<u8>> = self.read(|conn| {
            conn.prepare_cached(
                "SELECT proof FROM misbehaviour WHERE kind = 'fraud' AND subject = ?1 LIMIT 1",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![receipt.to_hex()], |row| row.get(0))
                    .optional()
            })
            .map_err(|e| self.db_error(e))
        })?;
        bytes
            .map(|bytes| FraudProof::from_bytes(&bytes))
            .transpose()
    }

    /// Receipts signed by hosts other than `own`, stored after row `after`, at most 256, with
    /// the row to continue from: what an auditor has not yet looked at. Receipts `own` has
    /// validated, unbacked receipts and receipts of hosts already proven to lie are left out:
    /// there is nothing more to learn from them.
    pub fn receipts_to_audit(
        &self,
        own: &PublicKey,
        after: i64,
    ) -> Result<(Vec<SignedReceipt>, i64), Error> {
        self.read(|conn| {
            // Every row after the cursor is read, so the cursor moves past the rows left out.
            let mut stmt = conn
                .prepare_cached(
                    "SELECT rowid,
                            CASE WHEN host != ?2
                                  AND hash NOT IN (SELECT receipt FROM unbacked_receipts)
                                  AND hash NOT IN (SELECT receipt FROM validations WHERE validator = ?2)
                                  AND host NOT IN (SELECT key FROM misbehaviour WHERE kind = 'fraud')
                                 THEN signed END
                     FROM receipts WHERE rowid > ?1 ORDER BY rowid LIMIT ?3",
                )
                .map_err(|e| self.db_error(e))?;
            let rows = stmt
                .query_map(params![after, own.to_hex(), AUDIT_BATCH], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, Option<Vec<u8>>>(1)?))
                })
                .map_err(|e| self.db_error(e))?;
            let mut cursor = after;
            let mut receipts = Vec::new();
            for row in rows {
                let (rowid, bytes) = row.map_err(|e| self.db_error(e))?;
                if let Some(bytes) = bytes {
                    receipts.push(Signed::from_stored(&bytes)?);
                }
                cursor = rowid;
            }
            Ok((receipts, cursor))
        })
    }

    /// How many receipts signed by `host` this registry holds: how much history this host has
    /// with it.
    pub fn receipts_held_from(&self, host: &PublicKey) -> Result<u64, Error> {
        self.read(|conn| {
            conn.prepare_cached("SELECT receipts FROM key_usage WHERE key = ?1")
                .and_then(|mut stmt| {
                    stmt.query_row(params![host.to_hex()], |row| row.get::<_, i64>(0))
                        .optional()
                })
                .map(|n| n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
                .map_err(|e| self.db_error(e))
        })
    }

    /// Marks `receipt` unbacked: its host could not produce the input or transcript it names
    /// within the deadline (`reason` says how it failed). It keeps its place in its host's
    /// chain but counts for nothing in scores from the next computation on.
    pub fn mark_unbacked(&self, receipt: &SignedReceipt, reason: &str) -> Result<(), Error> {
        let (hash, host) = (receipt.hash(), receipt.body().host);
        let reason = reason.to_owned();
        let now = i64::try_from(crate::rules::now_ms()).unwrap_or(i64::MAX);
        self.write(move |conn, path| {
            conn.prepare_cached(
                "INSERT OR IGNORE INTO unbacked_receipts (receipt, host, reason, at_ms)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut stmt| stmt.execute(params![hash.to_hex(), host.to_hex(), reason, now]))
            .map_err(|e| super::db_error(path, e))?;
            tracing::warn!(%host, receipt = %hash, reason, "receipt unbacked by its host");
            Ok(())
        })
    }

    /// The receipts of `host` marked unbacked, with why.
    pub fn unbacked_receipts(&self, host: &PublicKey) -> Result<Vec<(Hash, String)>, Error> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT receipt, reason FROM unbacked_receipts WHERE host = ?1 ORDER BY receipt",
                )
                .map_err(|e| self.db_error(e))?;
            let rows = stmt
                .query_map(params![host.to_hex()], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })
                .map_err(|e| self.db_error(e))?;
            let mut found = Vec::new();
            for row in rows {
                let (receipt, reason) = row.map_err(|e| self.db_error(e))?;
                found.push((parse_stored(&self.path, &receipt)?, reason));
            }
            Ok(found)
        })
    }
}
