//! Agents' private key-value memory, bounded by a quota.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Registry, db_error};
use crate::Error;
use crate::identity::PublicKey;

/// Bounds on an agent's persistent memory on one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvQuota {
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// All keys and values of one agent together, in bytes.
    pub max_total_bytes: u64,
}

impl Default for KvQuota {
    fn default() -> Self {
        KvQuota {
            max_key_bytes: 256,
            max_value_bytes: 64 * 1024,
            max_total_bytes: 1024 * 1024,
        }
    }
}

/// Whose memory a kv operation touches: one agent name under one publisher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvNamespace {
    /// The agent's publisher.
    pub publisher: PublicKey,
    /// The agent's name.
    pub agent: String,
}

impl Registry {
    /// Reads a key from an agent's memory.
    pub fn kv_get(&self, ns: &KvNamespace, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.read_committed(|conn| {
            conn.prepare_cached(
                "SELECT value FROM agent_kv WHERE publisher = ?1 AND agent = ?2 AND key = ?3",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![ns.publisher.to_hex(), ns.agent, key], |row| {
                    row.get(0)
                })
                .optional()
            })
            .map_err(|e| self.db_error(e))
        })
    }

    /// Writes a key in an agent's memory, within `quota`.
    pub fn kv_set(
        &self,
        ns: &KvNamespace,
        key: &str,
        value: &[u8],
        quota: &KvQuota,
    ) -> Result<(), Error> {
        self.write(kv_write(ns, key, value, quota)?)
    }

    /// [`Registry::kv_set`] for async callers, without a thread blocked on the commit.
    pub fn kv_set_async(
        &self,
        ns: &KvNamespace,
        key: &str,
        value: &[u8],
        quota: &KvQuota,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let write = kv_write(ns, key, value, quota).map(|write| self.write_async(write));
        async move { write?.await }
    }
}

/// The write that sets `key` in `ns`, once its sizes are checked against `quota`.
fn kv_write(
    ns: &KvNamespace,
    key: &str,
    value: &[u8],
    quota: &KvQuota,
) -> Result<impl FnOnce(&Connection, &Path) -> Result<(), Error> + Send + 'static, Error> {
    if key.len() > quota.max_key_bytes {
        return Err(Error::KvQuota(format!(
            "key is {} bytes; the limit is {}",
            key.len(),
            quota.max_key_bytes
        )));
    }
    if value.len() > quota.max_value_bytes {
        return Err(Error::KvQuota(format!(
            "value is {} bytes; the limit is {}",
            value.len(),
            quota.max_value_bytes
        )));
    }
    let (ns, key, value, max_total) = (
        ns.clone(),
        key.to_owned(),
        value.to_vec(),
        quota.max_total_bytes,
    );
    Ok(move |conn: &Connection, path: &Path| {
        let db = |e| db_error(path, e);
        let used_by_others: i64 = conn
            .prepare_cached(
                // Bytes, not characters: length() of TEXT stops at the first NUL, so keys
                // starting with one would cost nothing.
                "SELECT COALESCE(SUM(length(CAST(key AS BLOB)) + length(value)), 0) FROM agent_kv
                 WHERE publisher = ?1 AND agent = ?2 AND key != ?3",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![ns.publisher.to_hex(), ns.agent, key], |row| {
                    row.get(0)
                })
            })
            .map_err(db)?;
        let total = used_by_others as u64 + (key.len() + value.len()) as u64;
        if total > max_total {
            return Err(Error::KvQuota(format!(
                "the agent's memory would hold {total} bytes; the quota is {max_total}"
            )));
        }
        conn.prepare_cached(
            "INSERT INTO agent_kv (publisher, agent, key, value) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (publisher, agent, key) DO UPDATE SET value = excluded.value",
        )
        .and_then(|mut stmt| stmt.execute(params![ns.publisher.to_hex(), ns.agent, key, value]))
        .map_err(db)?;
        Ok(())
    })
}
