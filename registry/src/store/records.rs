//! Storing and reading signed records: manifests, receipts, requests and feedback.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Inserted, Registry, db_error, parse_stored};
use crate::evidence::{SignedFeedback, SignedRequest};
use crate::identity::PublicKey;
use crate::manifest::SignedManifest;
use crate::receipt::{Receipt, SignedReceipt};
use crate::signed::Signed;
use crate::{Error, Hash};

/// One page of receipts; see [`Registry::receipts_page`].
#[derive(Clone, Debug)]
pub struct ReceiptPage {
    /// The signed receipts as stored (canonical JSON envelopes), newest arrival first. Serving
    /// them needs no parsing; [`ReceiptPage::parse`] gives the records.
    pub receipts: Vec<Vec<u8>>,
    /// The caller's signed request each receipt answers, in the same order (`None` for a
    /// receipt that answers none), so a client can check who asked.
    pub requests: Vec<Option<Vec<u8>>>,
    /// Where the next (older) page starts, if there may be one.
    pub next: Option<ReceiptCursor>,
}

impl ReceiptPage {
    /// The page's receipts as records.
    pub fn parse(&self) -> Result<Vec<SignedReceipt>, Error> {
        self.receipts
            .iter()
            .map(|bytes| SignedReceipt::from_stored(bytes))
            .collect()
    }
}

/// A position in a list of receipts, opaque to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiptCursor(i64);

impl std::fmt::Display for ReceiptCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for ReceiptCursor {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        s.parse::<i64>()
            .ok()
            .filter(|row| *row > 0)
            .map(ReceiptCursor)
            .ok_or_else(|| Error::Malformed {
                kind: "cursor",
                reason: format!(
                    "`{}` is not a cursor this host returned",
                    s.chars().take(32).collect::<String>()
                ),
            })
    }
}

/// Whether `publisher`, a stranger, is at its quota of stored manifests: the refusal if so.
fn over_manifest_quota(
    conn: &Connection,
    path: &std::path::Path,
    strangers: &super::quota::Strangers,
    publisher: &PublicKey,
) -> Result<Option<Error>, Error> {
    if !strangers.is_stranger(publisher) {
        return Ok(None);
    }
    let stored: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM manifests WHERE publisher = ?1")
        .and_then(|mut stmt| stmt.query_row(params![publisher.to_hex()], |row| row.get(0)))
        .map_err(|e| db_error(path, e))?;
    let quota = strangers.quotas().manifests_per_key;
    Ok((stored >= quota).then(|| {
        strangers.refuse(
            publisher,
            format!("{quota} manifests from a publisher this host does not trust"),
        )
    }))
}

/// Stores a signed request unless one with its (caller, host, nonce) is stored; returns the
/// number of rows written.
pub(super) fn insert_request_row(
    conn: &Connection,
    request: &SignedRequest,
) -> rusqlite::Result<usize> {
    let body = request.body();
    conn.prepare_cached(
        "INSERT OR IGNORE INTO requests (hash, caller, host, nonce, expires_at_ms, signed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        request.hash().to_hex(),
        body.caller.to_hex(),
        body.host.to_hex(),
        body.nonce,
        body.expires_at_ms as i64,
        request.as_bytes(),
    ])
}

/// Stores a receipt row, and `request`, the caller's signed request it came with, for a receipt
/// from another host (this host's own requests are in the requests table). Returns the number
/// of receipt rows written.
pub(super) fn insert_receipt_row(
    conn: &Connection,
    receipt: &SignedReceipt,
    request: Option<&[u8]>,
) -> rusqlite::Result<usize> {
    let body = receipt.body();
    let written = insert_receipt_columns(conn, receipt, body)?;
    if written > 0
        && let Some(request) = request
    {
        conn.prepare_cached("INSERT INTO receipt_requests (receipt, signed) VALUES (?1, ?2)")?
            .execute(params![conn.last_insert_rowid(), request])?;
    }
    Ok(written)
}

fn insert_receipt_columns(
    conn: &Connection,
    receipt: &SignedReceipt,
    body: &Receipt,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO receipts
             (hash, host, seq, prev, manifest_hash, component_hash, outcome, fuel_used,
              timestamp_ms, signed, request_hash, caller, fuel_limit, charge, memory_limit)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        receipt.hash().to_hex(),
        body.host.to_hex(),
        body.seq as i64,
        body.prev.map(|h| h.to_hex()),
        body.agent.manifest.to_hex(),
        body.agent.component.to_hex(),
        body.outcome.name(),
        body.fuel_used as i64,
        body.timestamp_ms as i64,
        receipt.as_bytes(),
        body.request.map(|h| h.to_hex()),
        body.caller.map(|c| c.to_hex()),
        body.fuel_limit as i64,
        body.charge as i64,
        body.limits.map(|l| l.memory_bytes as i64),
    ])
}

impl Registry {
    /// Stores a verified manifest.
    ///
    /// Releases are immutable: if the publisher already signed a different manifest for the
    /// same name and version, the first one stored stands, the pair is recorded as
    /// [`Misbehaviour`](super::Misbehaviour) (`double-release`) against the publisher, and this
    /// fails with [`Error::ReleaseConflict`]. (A host re-publishing its own release finds it with
    /// [`Registry::release`] before signing anything.)
    ///
    /// The manifest must pass [`Manifest::check`](crate::Manifest::check) first, whichever way
    /// it arrived. Receipts that were waiting for it are checked again.
    pub fn insert_manifest(&self, manifest: &SignedManifest) -> Result<Inserted, Error> {
        let now = crate::rules::now_ms();
        manifest.body().check(now)?;
        let strangers = self.strangers();
        let manifest = manifest.clone();
        self.write(move |conn, path| {
            let db = |e| db_error(path, e);
            let body = manifest.body();
            let existing: Option<(String, Vec<u8>)> = conn
                .query_row(
                    "SELECT hash, signed FROM manifests
                     WHERE publisher = ?1 AND name = ?2 AND version = ?3",
                    params![body.publisher.to_hex(), body.name, body.version],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(db)?;
            if let Some((existing_hash, existing_bytes)) = existing {
                if existing_hash == manifest.hash().to_hex() {
                    return Ok(Ok(Inserted::AlreadyPresent));
                }
                if let Some(refused) = over_manifest_quota(conn, path, &strangers, &body.publisher)?
                {
                    return Ok(Err(refused));
                }
                let existing: Hash = parse_stored(path, &existing_hash)?;
                super::chain::record_misbehaviour(
                    conn,
                    path,
                    &body.publisher,
                    "double-release",
                    &existing,
                    &format!(
                        "manifests {existing} and {} are both {}@{}",
                        manifest.hash(),
                        body.name,
                        body.version
                    ),
                    &[&existing_bytes, manifest.as_bytes()],
                )?;
                return Ok(Err(Error::ReleaseConflict {
                    name: body.name.clone(),
                    version: body.version.clone(),
                    publisher: body.publisher,
                    existing: existing_hash,
                }));
            }
            if let Some(refused) = over_manifest_quota(conn, path, &strangers, &body.publisher)? {
                return Ok(Err(refused));
            }
            conn.execute(
                "INSERT OR IGNORE INTO publishers (key, first_seen) VALUES (?1, ?2)",
                params![body.publisher.to_hex(), body.created_at as i64],
            )
            .map_err(db)?;
            conn.execute(
                "INSERT INTO manifests
                     (hash, name, version, publisher, component_hash, component_size, created_at,
                      signed, max_fuel, price_per_mfuel, max_memory_bytes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    manifest.hash().to_hex(),
                    body.name,
                    body.version,
                    body.publisher.to_hex(),
                    body.component.hash.to_hex(),
                    body.component.size as i64,
                    body.created_at as i64,
                    manifest.as_bytes(),
                    body.limits.max_fuel as i64,
                    body.price_per_mfuel as i64,
                    body.limits.max_memory_bytes as i64,
                ],
            )
            .map_err(db)?;
            super::pending::retry_pending(conn, path, &strangers, now, vec![manifest.hash()])?;
            Ok(Ok(Inserted::New))
        })?
    }

    /// The manifest with this hash, if stored.
    pub fn manifest(&self, hash: &Hash) -> Result<Option<SignedManifest>, Error> {
        self.query_manifests("WHERE hash = ?1", params![hash.to_hex()])
            .map(|mut found| found.pop())
    }

    /// The manifest `publisher` released as `name` `version`, if stored.
    pub fn release(
        &self,
        publisher: &PublicKey,
        name: &str,
        version: &str,
    ) -> Result<Option<SignedManifest>, Error> {
        self.query_manifests(
            "WHERE publisher = ?1 AND name = ?2 AND version = ?3",
            params![publisher.to_hex(), name, version],
        )
        .map(|mut found| found.pop())
    }

    /// The manifests whose name contains `name`, that list `action`, and that `publisher`
    /// released (each filter optional), as (manifest hash, publisher, component hash): what a
    /// listing ranks before it reads the few manifests it shows. Reads columns only (and a
    /// manifest's actions when filtering by action).
    pub fn manifest_index(
        &self,
        name: Option<&str>,
        action: Option<&str>,
        publisher: Option<&PublicKey>,
    ) -> Result<Vec<(Hash, PublicKey, Hash)>, Error> {
        self.read(|conn| {
            let db = |e| self.db_error(e);
            let mut stmt = conn
                .prepare_cached(
                    "SELECT hash, publisher, component_hash FROM manifests
                     WHERE (?1 IS NULL OR instr(name, ?1) > 0)
                       AND (?2 IS NULL OR publisher = ?2)
                       AND (?3 IS NULL OR EXISTS (
                             SELECT 1 FROM json_each(CAST(signed AS TEXT), '$.body.actions')
                             WHERE value = ?3))",
                )
                .map_err(db)?;
            let mut rows = stmt
                .query(params![name, publisher.map(PublicKey::to_hex), action])
                .map_err(db)?;
            let mut found = Vec::new();
            while let Some(row) = rows.next().map_err(db)? {
                let text = |i| super::text(row, i).map_err(db);
                found.push((
                    parse_stored(&self.path, text(0)?)?,
                    parse_stored(&self.path, text(1)?)?,
                    parse_stored(&self.path, text(2)?)?,
                ));
            }
            Ok(found)
        })
    }

    /// Every stored manifest, newest (last stored) first.
    pub fn manifests(&self) -> Result<Vec<SignedManifest>, Error> {
        self.query_manifests("", params![])
    }

    /// Every manifest `publisher` released, newest (last stored) first.
    pub fn manifests_by(&self, publisher: &PublicKey) -> Result<Vec<SignedManifest>, Error> {
        self.query_manifests("WHERE publisher = ?1", params![publisher.to_hex()])
    }

    /// Finds the manifest an agent reference names, for a host that trusts the publishers in
    /// `trusted` (its own key first, then any its operator trusts). A reference is:
    ///
    /// - a manifest hash: that release, whoever published it;
    /// - `<publisher key>/<name>[@<version>]`: that publisher's release;
    /// - a bare `<name>[@<version>]` or a component hash: a release by one of the `trusted`
    ///   publishers only, so a stranger's manifest with the same name or component can neither
    ///   hijack nor break it. Two trusted publishers using one name make it ambiguous.
    ///
    /// Without a version, the newest release is the one this registry stored last: nothing is
    /// ordered by a timestamp the network supplied.
    pub fn resolve(&self, reference: &str, trusted: &[PublicKey]) -> Result<SignedManifest, Error> {
        let unknown = || Error::UnknownAgent {
            reference: reference.chars().take(200).collect(),
        };
        if let Ok(hash) = reference.parse::<Hash>() {
            if let Some(manifest) = self.manifest(&hash)? {
                return Ok(manifest);
            }
            let by_component =
                self.query_manifests("WHERE component_hash = ?1", params![hash.to_hex()])?;
            return pick(reference, by_component, trusted).ok_or_else(unknown)?;
        }
        let (scope, rest) = match reference.split_once('/') {
            Some((publisher, rest)) => (Some(publisher.parse::<PublicKey>()?), rest),
            None => (None, reference),
        };
        let (name, version) = match rest.split_once('@') {
            Some((name, version)) => (name, Some(version)),
            None => (rest, None),
        };
        let found = match (scope, version) {
            (Some(publisher), Some(version)) => self.query_manifests(
                "WHERE publisher = ?1 AND name = ?2 AND version = ?3",
                params![publisher.to_hex(), name, version],
            )?,
            (Some(publisher), None) => self.query_manifests(
                "WHERE publisher = ?1 AND name = ?2",
                params![publisher.to_hex(), name],
            )?,
            (None, Some(version)) => {
                self.query_manifests("WHERE name = ?1 AND version = ?2", params![name, version])?
            }
            (None, None) => self.query_manifests("WHERE name = ?1", params![name])?,
        };
        match scope {
            Some(_) => found.into_iter().next().ok_or_else(unknown),
            None => pick(reference, found, trusted).ok_or_else(unknown)?,
        }
    }

    fn query_manifests(
        &self,
        filter: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<SignedManifest>, Error> {
        let sql = format!("SELECT signed FROM manifests {filter} ORDER BY rowid DESC");
        self.read(|conn| self.stored_records(conn, &sql, params))
    }

    /// Parses the records in the first column of `sql`'s rows.
    fn stored_records<T: crate::Record>(
        &self,
        conn: &Connection,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Signed<T>>, Error> {
        let mut stmt = conn.prepare_cached(sql).map_err(|e| self.db_error(e))?;
        let rows = stmt
            .query_map(params, |row| row.get::<_, Vec<u8>>(0))
            .map_err(|e| self.db_error(e))?;
        let mut records = Vec::new();
        for bytes in rows {
            let bytes = bytes.map_err(|e| self.db_error(e))?;
            records.push(Signed::from_stored(&bytes)?);
        }
        Ok(records)
    }

    /// The receipt with this hash, if stored.
    pub fn receipt(&self, hash: &Hash) -> Result<Option<SignedReceipt>, Error> {
        self.query_receipts("WHERE hash = ?1", params![hash.to_hex()], 1)
            .map(|mut found| found.pop())
    }

    /// Receipts about the agent released as `manifest`, newest arrival first: at most `limit`,
    /// starting after `after` (a cursor from the previous page).
    pub fn receipts_page(
        &self,
        manifest: &Hash,
        after: Option<ReceiptCursor>,
        limit: usize,
    ) -> Result<ReceiptPage, Error> {
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let before = after.map_or(i64::MAX, |cursor| cursor.0);
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT r.rowid, r.signed, COALESCE(rr.signed, q.signed)
                     FROM receipts AS r INDEXED BY receipts_by_manifest_arrival
                     LEFT JOIN receipt_requests rr ON rr.receipt = r.rowid
                     LEFT JOIN requests q ON rr.signed IS NULL AND q.hash = r.request_hash
                     WHERE r.manifest_hash = ?1 AND r.rowid < ?2 ORDER BY r.rowid DESC LIMIT ?3",
                )
                .map_err(|e| self.db_error(e))?;
            let rows = stmt
                .query_map(params![manifest.to_hex(), before, limit], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, Vec<u8>>(1)?,
                        row.get::<_, Option<Vec<u8>>>(2)?,
                    ))
                })
                .map_err(|e| self.db_error(e))?;
            let mut receipts = Vec::new();
            let mut requests = Vec::new();
            let mut last = None;
            for row in rows {
                let (rowid, bytes, request) = row.map_err(|e| self.db_error(e))?;
                receipts.push(bytes);
                requests.push(request);
                last = Some(ReceiptCursor(rowid));
            }
            let next = if receipts.len() as i64 == limit {
                last
            } else {
                None
            };
            Ok(ReceiptPage {
                receipts,
                requests,
                next,
            })
        })
    }

    /// All receipts, newest arrival first, at most `limit`.
    pub fn receipts(&self, limit: usize) -> Result<Vec<SignedReceipt>, Error> {
        self.query_receipts("", params![], limit)
    }

    /// One host's receipts in chain order (oldest first).
    pub fn receipt_chain(&self, host: &PublicKey) -> Result<Vec<SignedReceipt>, Error> {
        let mut chain =
            self.query_receipts("WHERE host = ?1", params![host.to_hex()], usize::MAX)?;
        chain.sort_by_key(|r| r.body().seq);
        Ok(chain)
    }

    fn query_receipts(
        &self,
        filter: &str,
        params: impl rusqlite::Params,
        limit: usize,
    ) -> Result<Vec<SignedReceipt>, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!("SELECT signed FROM receipts {filter} ORDER BY rowid DESC LIMIT {limit}");
        self.read(|conn| self.stored_records(conn, &sql, params))
    }

    /// Accepts a caller-signed request for `host` to run, at time `now_ms`, or says why not:
    /// anything [`CallRequest::check_admissible`](crate::CallRequest::check_admissible) refuses,
    /// or a replay of a request already accepted. Accepted requests are kept as evidence.
    pub fn admit_request(
        &self,
        request: &SignedRequest,
        host: &PublicKey,
        now_ms: u64,
    ) -> Result<(), Error> {
        request.body().check_admissible(host, now_ms)?;
        self.write(admit(request.clone()))
    }

    /// [`Registry::admit_request`] for async callers, without a thread blocked on the commit.
    pub fn admit_request_async(
        &self,
        request: &SignedRequest,
        host: &PublicKey,
        now_ms: u64,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let checked = request.body().check_admissible(host, now_ms);
        let admitted = checked.map(|()| self.write_async(admit(request.clone())));
        async move { admitted?.await }
    }

    /// Forgets requests this host admitted, never answered with a receipt, and that expired
    /// more than the clock skew before `now_ms`: they can no longer be replayed, and no receipt
    /// needs them as evidence. Returns how many were removed.
    pub fn prune_requests(&self, now_ms: u64) -> Result<usize, Error> {
        let before = now_ms.saturating_sub(crate::rules::MAX_CLOCK_SKEW_MS) as i64;
        self.write(move |conn, path| {
            conn.execute(
                "DELETE FROM requests WHERE answered = 0 AND expires_at_ms < ?1",
                params![before],
            )
            .map_err(|e| db_error(path, e))
        })
    }

    /// The signed request with this hash, if stored.
    pub fn request(&self, hash: &Hash) -> Result<Option<SignedRequest>, Error> {
        self.read(|conn| {
            self.stored_records(
                conn,
                "SELECT signed FROM requests WHERE hash = ?1",
                params![hash.to_hex()],
            )
        })
        .map(|mut found| found.pop())
    }

    /// The feedback on a receipt, if any.
    pub fn feedback(&self, receipt: &Hash) -> Result<Option<SignedFeedback>, Error> {
        self.read(|conn| {
            self.stored_records(
                conn,
                "SELECT signed FROM feedback WHERE receipt_hash = ?1",
                params![receipt.to_hex()],
            )
        })
        .map(|mut found| found.pop())
    }
}

/// The first (newest) of `found` by a trusted publisher, if any; an error if two trusted
/// publishers released it.
fn pick(
    reference: &str,
    found: Vec<SignedManifest>,
    trusted: &[PublicKey],
) -> Option<Result<SignedManifest, Error>> {
    let mut publishers: Vec<PublicKey> = found
        .iter()
        .map(|m| m.body().publisher)
        .filter(|p| trusted.contains(p))
        .collect();
    publishers.sort();
    publishers.dedup();
    if publishers.len() > 1 {
        return Some(Err(Error::AmbiguousAgent {
            reference: reference.to_owned(),
            publishers,
        }));
    }
    found
        .into_iter()
        .find(|m| trusted.contains(&m.body().publisher))
        .map(Ok)
}

/// The write that records `request` in the replay cache, refusing one seen before.
fn admit(
    request: SignedRequest,
) -> impl FnOnce(&Connection, &std::path::Path) -> Result<(), Error> + Send + 'static {
    move |conn, path| {
        let body = request.body();
        let inserted = insert_request_row(conn, &request).map_err(|e| db_error(path, e))?;
        if inserted == 0 {
            return Err(Error::Replayed {
                caller: body.caller,
                nonce: body.nonce.clone(),
            });
        }
        // Answered once its receipt is appended; until then only a replay cache entry.
        conn.prepare_cached("UPDATE requests SET answered = 0 WHERE hash = ?1")
            .and_then(|mut stmt| stmt.execute(params![request.hash().to_hex()]))
            .map_err(|e| db_error(path, e))?;
        Ok(())
    }
}
