//! The registry's schema and its numbered migrations.

use std::path::Path;

use rusqlite::Connection;

use super::db_error;
use crate::Error;

/// Schema migrations, applied in order. `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: manifests, publishers, receipts, agent memory.
    "CREATE TABLE publishers (
         key        TEXT PRIMARY KEY,
         first_seen INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE manifests (
         hash           TEXT PRIMARY KEY,
         name           TEXT NOT NULL,
         version        TEXT NOT NULL,
         publisher      TEXT NOT NULL REFERENCES publishers(key),
         component_hash TEXT NOT NULL,
         component_size INTEGER NOT NULL,
         created_at     INTEGER NOT NULL,
         signed         BLOB NOT NULL,
         UNIQUE (publisher, name, version)
     ) STRICT;
     CREATE INDEX manifests_by_name ON manifests(name);
     CREATE INDEX manifests_by_component ON manifests(component_hash);
     -- (host, seq) is deliberately not unique: two receipts with one sequence number are
     -- evidence that a host forked its chain, and must be kept, not refused.
     CREATE TABLE receipts (
         hash           TEXT PRIMARY KEY,
         host           TEXT NOT NULL,
         seq            INTEGER NOT NULL,
         prev           TEXT,
         manifest_hash  TEXT NOT NULL,
         component_hash TEXT NOT NULL,
         outcome        TEXT NOT NULL,
         fuel_used      INTEGER NOT NULL,
         timestamp_ms   INTEGER NOT NULL,
         signed         BLOB NOT NULL
     ) STRICT;
     CREATE INDEX receipts_by_host ON receipts(host, seq);
     CREATE INDEX receipts_by_manifest ON receipts(manifest_hash, timestamp_ms);
     CREATE INDEX receipts_by_component ON receipts(component_hash, timestamp_ms);
     CREATE TABLE agent_kv (
         publisher TEXT NOT NULL,
         agent     TEXT NOT NULL,
         key       TEXT NOT NULL,
         value     BLOB NOT NULL,
         PRIMARY KEY (publisher, agent, key)
     ) STRICT, WITHOUT ROWID;",
    // 2: caller evidence. A signed request is kept for good: it is the evidence behind its
    // receipt, and its (caller, host, nonce) can never be used again, which is a stricter
    // replay cache than remembering nonces until expiry.
    "CREATE TABLE requests (
         hash          TEXT PRIMARY KEY,
         caller        TEXT NOT NULL,
         host          TEXT NOT NULL,
         nonce         TEXT NOT NULL,
         expires_at_ms INTEGER NOT NULL,
         signed        BLOB NOT NULL,
         UNIQUE (caller, host, nonce)
     ) STRICT;
     CREATE TABLE feedback (
         receipt_hash  TEXT PRIMARY KEY,
         hash          TEXT NOT NULL UNIQUE,
         rater         TEXT NOT NULL,
         score         INTEGER NOT NULL,
         created_at_ms INTEGER NOT NULL,
         signed        BLOB NOT NULL
     ) STRICT;
     ALTER TABLE receipts ADD COLUMN request_hash TEXT;
     ALTER TABLE receipts ADD COLUMN caller TEXT;",
    // 3: evidence that a host forked its receipt chain: two signed receipts, one sequence number.
    "CREATE TABLE forks (
         host      TEXT NOT NULL,
         seq       INTEGER NOT NULL,
         receipt_a TEXT NOT NULL,
         receipt_b TEXT NOT NULL,
         PRIMARY KEY (host, seq, receipt_a, receipt_b)
     ) STRICT;",
    // 4: the receipt fields scores are computed from, as columns, so that a million receipts can
    // be scored without parsing their JSON; and paging of an agent's receipts by arrival.
    "ALTER TABLE receipts ADD COLUMN fuel_limit INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE receipts ADD COLUMN charge INTEGER NOT NULL DEFAULT 0;
     UPDATE receipts SET
         fuel_limit = json_extract(CAST(signed AS TEXT), '$.body.fuel_limit'),
         charge = json_extract(CAST(signed AS TEXT), '$.body.charge');
     CREATE INDEX receipts_by_manifest_arrival ON receipts(manifest_hash);",
    // 5: indexes no query uses any more; each one slowed every receipt insert.
    "DROP INDEX receipts_by_manifest;
     DROP INDEX receipts_by_component;",
    // 6: the manifest fields scores and receipt checks need, as columns written at insert.
    // Older registries may hold manifests from before fields were bounded; a value that is not
    // a 63-bit integer stays NULL, and evidence reads skip (and count) that manifest.
    "ALTER TABLE manifests ADD COLUMN max_fuel INTEGER;
     ALTER TABLE manifests ADD COLUMN price_per_mfuel INTEGER;
     UPDATE manifests SET
         max_fuel = CASE json_type(CAST(signed AS TEXT), '$.body.limits.max_fuel')
             WHEN 'integer' THEN json_extract(CAST(signed AS TEXT), '$.body.limits.max_fuel') END,
         price_per_mfuel = CASE json_type(CAST(signed AS TEXT), '$.body.price_per_mfuel')
             WHEN 'integer' THEN json_extract(CAST(signed AS TEXT), '$.body.price_per_mfuel') END;",
    // 7: evidence against a key other than a fork (a receipt contradicting its request,
    // manifest or chain; double-signed feedback or releases), with the signed records that
    // prove it; and records waiting for what they refer to.
    "CREATE TABLE misbehaviour (
         key     TEXT NOT NULL,
         kind    TEXT NOT NULL,
         subject TEXT NOT NULL,
         reason  TEXT NOT NULL,
         proof   BLOB NOT NULL,
         PRIMARY KEY (key, kind, subject)
     ) STRICT;
     CREATE TABLE pending_receipts (
         hash        TEXT PRIMARY KEY,
         signer      TEXT NOT NULL,
         waiting_for TEXT NOT NULL,
         signed      BLOB NOT NULL
     ) STRICT;
     CREATE INDEX pending_receipts_by_wait ON pending_receipts(waiting_for);
     CREATE INDEX pending_receipts_by_signer ON pending_receipts(signer);
     CREATE TABLE pending_feedback (
         hash        TEXT PRIMARY KEY,
         signer      TEXT NOT NULL,
         waiting_for TEXT NOT NULL,
         signed      BLOB NOT NULL
     ) STRICT;
     CREATE INDEX pending_feedback_by_wait ON pending_feedback(waiting_for);
     CREATE INDEX pending_feedback_by_signer ON pending_feedback(signer);",
    // 8: requests this host admitted but never answered with a receipt (the call failed before
    // it ran) serve only as a replay cache, so they can go once they expire.
    "ALTER TABLE requests ADD COLUMN answered INTEGER NOT NULL DEFAULT 1;
     CREATE INDEX requests_unanswered ON requests(expires_at_ms) WHERE answered = 0;",
    // 9: the caller's signed request a receipt from another host came with, keyed by the
    // receipt's row: an append, where the requests table would take two random-key index
    // inserts per receipt, and a table of its own, so that reading the evidence for scores
    // does not page through request bytes.
    "CREATE TABLE receipt_requests (
         receipt INTEGER PRIMARY KEY,
         signed  BLOB NOT NULL
     ) STRICT;
     ALTER TABLE pending_receipts ADD COLUMN request BLOB;",
    // 10: the memory limits failure attribution compares: the manifest's, and the one a call
    // ran under (NULL where a receipt does not record it).
    "ALTER TABLE manifests ADD COLUMN max_memory_bytes INTEGER;
     UPDATE manifests SET max_memory_bytes =
         CASE json_type(CAST(signed AS TEXT), '$.body.limits.max_memory_bytes')
             WHEN 'integer' THEN json_extract(CAST(signed AS TEXT), '$.body.limits.max_memory_bytes') END;
     ALTER TABLE receipts ADD COLUMN memory_limit INTEGER;",
    // 11: the sequence numbers a host may have signed, reserved durably a block at a time, so
    // receipts commit without an fsync each and a restart never reuses one (see `Registry`).
    "CREATE TABLE receipt_seq (
         host           TEXT PRIMARY KEY,
         resume_at      INTEGER NOT NULL,
         reserved_until INTEGER NOT NULL
     ) STRICT;",
    // 12: how many receipts and feedback records each key has stored here, kept as they are
    // inserted so the quotas on strangers need no count over the evidence (see `quota`). The
    // row with the empty key holds the strangers' totals, which start at zero.
    "CREATE TABLE key_usage (
         key      TEXT PRIMARY KEY,
         receipts INTEGER NOT NULL DEFAULT 0,
         feedback INTEGER NOT NULL DEFAULT 0
     ) STRICT, WITHOUT ROWID;
     INSERT INTO key_usage (key, receipts) SELECT host, COUNT(*) FROM receipts GROUP BY host;
     INSERT INTO key_usage (key, feedback) SELECT rater, COUNT(*) FROM feedback WHERE true GROUP BY rater
         ON CONFLICT (key) DO UPDATE SET feedback = excluded.feedback;",
    // 13: the inputs and transcripts of this host's receipts, which verifiers fetch to run a
    // call again, each kept until `kept_until_ms` (see `Registry::call_data`).
    "CREATE TABLE call_data (
         hash          TEXT PRIMARY KEY,
         kind          TEXT NOT NULL,
         bytes         BLOB NOT NULL,
         kept_until_ms INTEGER NOT NULL
     ) STRICT;
     CREATE INDEX call_data_expiry ON call_data (kept_until_ms);",
    // 14: what checking other hosts' receipts found (see `audit`): validations signed by any
    // verifier, this host's own and those passed on to it, and receipts whose host could not
    // produce the input or transcript a re-execution needs, which no longer count in scores.
    "CREATE TABLE validations (
         hash      TEXT PRIMARY KEY,
         receipt   TEXT NOT NULL,
         host      TEXT NOT NULL,
         validator TEXT NOT NULL,
         fraud     INTEGER NOT NULL,
         signed    BLOB NOT NULL
     ) STRICT;
     CREATE INDEX validations_by_receipt ON validations (receipt);
     CREATE TABLE unbacked_receipts (
         receipt TEXT PRIMARY KEY,
         host    TEXT NOT NULL,
         reason  TEXT NOT NULL,
         at_ms   INTEGER NOT NULL
     ) STRICT;",
];

pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), Error> {
    let db = |e| db_error(path, e);
    let applied: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(db)?;
    let applied = usize::try_from(applied).unwrap_or(usize::MAX);
    if applied > MIGRATIONS.len() {
        return Err(Error::SchemaTooNew {
            path: path.to_owned(),
            found: applied,
            supported: MIGRATIONS.len(),
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction().map_err(db)?;
        tx.execute_batch(sql).map_err(db)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)
            .map_err(db)?;
        tx.commit().map_err(db)?;
        tracing::debug!(migration = index + 1, "applied registry migration");
    }
    Ok(())
}
