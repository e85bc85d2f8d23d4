//! The page cache agora installs under SQLite (`store/page_cache.rs`) answers exactly as
//! SQLite's own: a database rebalanced through thousands of page swaps, with a cache small
//! enough to evict pages meanwhile, holds every row and passes `integrity_check`.
//!
//! A test binary of its own: the cache is installed once per process, before SQLite
//! initialises, which another test opening a connection first would prevent.

use std::collections::BTreeSet;

use agora_registry::Registry;
use rusqlite::{Connection, params};

#[test]
fn a_database_rebalanced_through_the_page_cache_keeps_every_row_intact() {
    let dir = tempfile::tempdir().unwrap();
    // Opening a registry installs the cache for the process.
    let _registry = Registry::open(&dir.path().join("registry.db")).unwrap();
    assert!(Registry::page_cache().0, "the page cache is installed");
    let swaps_before = Registry::page_cache().1;

    let conn = Connection::open(dir.path().join("churn.db")).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA cache_size = 16;
         CREATE TABLE rows (key TEXT PRIMARY KEY, value BLOB NOT NULL);",
    )
    .unwrap();
    let mut kept = BTreeSet::new();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..100 {
        conn.execute_batch("BEGIN").unwrap();
        for _ in 0..200 {
            let key = format!("{:016x}{:016x}", next(), next());
            conn.execute(
                "INSERT INTO rows (key, value) VALUES (?1, zeroblob(?2))",
                params![key, (next() % 300) as i64],
            )
            .unwrap();
            kept.insert(key);
        }
        // Deleting frees pages that later splits take back, out of order: the swaps.
        if round % 3 == 2 {
            let gone: Vec<String> = kept.iter().step_by(4).cloned().collect();
            for key in gone {
                conn.execute("DELETE FROM rows WHERE key = ?1", params![key])
                    .unwrap();
                kept.remove(&key);
            }
        }
        conn.execute_batch("COMMIT").unwrap();
    }

    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let mut stmt = conn.prepare("SELECT key FROM rows ORDER BY key").unwrap();
    let stored: BTreeSet<String> = stmt
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(stored, kept, "every row and only those");
    assert!(
        Registry::page_cache().1 > swaps_before,
        "the churn swapped pages through the cache"
    );
}
