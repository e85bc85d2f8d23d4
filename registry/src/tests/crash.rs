//! What a caller can rely on when the host process is killed: every receipt it was handed is
//! there when the registry reopens (unless receipts are pipelined), the database is intact, and
//! the chain continues without reusing a sequence number (a declared skip that scoring follows).

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;
use crate::reputation::{EvidenceSet, contiguous};

/// Set in the child process: the directory of the registry it writes to until it is killed.
const CHILD_DIR: &str = "AGORA_TEST_CRASH_CHILD_DIR";
const CHILD_TEST: &str = "tests::crash::child_appends_receipts_and_memory_until_killed";
const PIPELINED_CHILD_TEST: &str = "tests::crash::child_appends_pipelined_receipts_until_killed";

#[test]
#[ignore = "a child process of a_killed_pipelined_host_never_reuses_a_sequence_number"]
fn child_appends_pipelined_receipts_until_killed() {
    let Some(dir) = std::env::var_os(CHILD_DIR).map(std::path::PathBuf::from) else {
        panic!("run only as the child of the crash test ({CHILD_DIR} unset)");
    };
    let key = SecretKey::load(&dir.join("host.key")).unwrap();
    let registry = Registry::open(&dir.join("registry.db")).unwrap();
    registry
        .set_receipt_durability(&key, ReceiptDurability::Pipelined)
        .unwrap();
    let mut out = std::io::stdout().lock();
    for _ in 0u64.. {
        let signed = registry
            .append_receipt(&key, receipt(&key, 0, None))
            .unwrap();
        // Printed as soon as it is handed out, before its commit.
        writeln!(out, "acked {} {} 0", signed.body().seq, signed.hash()).unwrap();
        out.flush().unwrap();
    }
}

#[test]
#[ignore = "a child process of a_killed_host_loses_nothing_it_acknowledged_and_never_reuses_a_sequence_number"]
fn child_appends_receipts_and_memory_until_killed() {
    let Some(dir) = std::env::var_os(CHILD_DIR).map(std::path::PathBuf::from) else {
        panic!("run only as the child of the crash test ({CHILD_DIR} unset)");
    };
    let key = SecretKey::load(&dir.join("host.key")).unwrap();
    let registry = Registry::open(&dir.join("registry.db")).unwrap();
    let ns = KvNamespace {
        publisher: key.public(),
        agent: "counter".into(),
    };
    let mut out = std::io::stdout().lock();
    for n in 0u64.. {
        let signed = registry
            .append_receipt(&key, receipt(&key, 0, None))
            .unwrap();
        registry
            .kv_set(&ns, "count", &n.to_le_bytes(), &KvQuota::default())
            .unwrap();
        // Printed only once both writes were acknowledged: what a caller was handed.
        writeln!(out, "acked {} {} {n}", signed.body().seq, signed.hash()).unwrap();
        out.flush().unwrap();
    }
}

/// What 20 runs of a child killed at different points left behind.
struct Killed {
    dir: tempfile::TempDir,
    key: SecretKey,
    /// The receipts the child handed out: sequence number and hash.
    handed_out: Vec<(u64, Hash)>,
    /// The last memory count it acknowledged.
    last_count: Option<u64>,
    /// The sequence number each run started at.
    restarts: Vec<u64>,
}

impl Killed {
    /// The registry, once its database passed `integrity_check`.
    fn intact_registry(&self) -> Registry {
        let path = self.dir.path().join("registry.db");
        let integrity: String = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(integrity, "ok");
        Registry::open(&path).unwrap()
    }

    /// Each run continued past everything the one before reserved, the stored chain links,
    /// and scoring follows its declared skips to the end.
    fn assert_chain_continues(&self, chain: &[SignedReceipt]) {
        for pair in self.restarts.windows(2) {
            assert!(pair[1] > pair[0]);
            assert_eq!(pair[1] % RECEIPT_SEQ_BLOCK, 0, "run started at {}", pair[1]);
        }
        for pair in chain.windows(2) {
            assert_eq!(pair[1].body().prev, Some(pair[0].hash()), "the chain links");
        }
        let evidence = EvidenceSet::from_records(&[], chain, &[], Default::default());
        assert_eq!(
            contiguous(&evidence).get(&self.key.public()).copied(),
            Some(chain.last().unwrap().body().seq + 1),
            "scoring follows the declared skips"
        );
    }
}

/// Runs `child` on one registry 20 times, killing it at a different point each time.
fn kill_repeatedly(child: &str) -> Killed {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate();
    key.write_new(&dir.path().join("host.key")).unwrap();
    let mut handed_out: Vec<(u64, Hash)> = Vec::new();
    let mut last_count = None;
    let mut restarts = Vec::new();
    for run in 0..20u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                child,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Kill at a different point each run: after some acknowledged writes, and at varying
        // moments in the writes that follow.
        let wait_for = 1 + (run * 37) % 60;
        let mut first_seq = None;
        let mut seen = 0;
        for line in lines.by_ref() {
            let line = line.unwrap();
            // The test harness may print on the same line before the child's first write.
            let Some((_, acked)) = line.split_once("acked ") else {
                continue;
            };
            let Some((seq, rest)) = acked.split_once(' ') else {
                continue;
            };
            let Some((hash, count)) = rest.split_once(' ') else {
                continue;
            };
            let seq: u64 = seq.parse().unwrap();
            first_seq.get_or_insert(seq);
            handed_out.push((seq, hash.parse().unwrap()));
            last_count = Some(count.parse::<u64>().unwrap());
            seen += 1;
            if seen >= wait_for {
                break;
            }
        }
        std::thread::sleep(Duration::from_micros(run * 250));
        child.kill().unwrap();
        child.wait().unwrap();
        restarts.push(first_seq.expect("the child wrote"));
    }

    Killed {
        dir,
        key,
        handed_out,
        last_count,
        restarts,
    }
}

#[test]
fn a_killed_host_loses_nothing_it_acknowledged_and_never_reuses_a_sequence_number() {
    let killed = kill_repeatedly(CHILD_TEST);
    let (key, registry) = (&killed.key, killed.intact_registry());
    for (seq, hash) in &killed.handed_out {
        let stored = registry.receipt(hash).unwrap();
        assert_eq!(
            stored.map(|r| r.body().seq),
            Some(*seq),
            "receipt {seq} was handed out but is gone"
        );
    }
    let ns = KvNamespace {
        publisher: key.public(),
        agent: "counter".into(),
    };
    let count = registry.kv_get(&ns, "count").unwrap().unwrap();
    assert!(
        u64::from_le_bytes(count.try_into().unwrap()) >= killed.last_count.unwrap(),
        "an acknowledged kv-set is gone"
    );

    let chain = registry.receipt_chain(&key.public()).unwrap();
    let mut seqs: Vec<u64> = chain.iter().map(|r| r.body().seq).collect();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        chain.len(),
        "a sequence number was signed twice"
    );
    killed.assert_chain_continues(&chain);
}

#[test]
fn a_killed_pipelined_host_never_reuses_a_sequence_number() {
    let killed = kill_repeatedly(PIPELINED_CHILD_TEST);
    let registry = killed.intact_registry();
    let chain = registry.receipt_chain(&killed.key.public()).unwrap();
    // What was handed out and what is stored never give one sequence number two receipts.
    let mut signed = std::collections::BTreeMap::<u64, Hash>::new();
    for (seq, hash) in killed
        .handed_out
        .iter()
        .copied()
        .chain(chain.iter().map(|r| (r.body().seq, r.hash())))
    {
        let first = *signed.entry(seq).or_insert(hash);
        assert_eq!(first, hash, "sequence number {seq} was signed twice");
    }
    killed.assert_chain_continues(&chain);
}

#[test]
fn scoring_follows_a_skip_only_onto_a_block_boundary_from_a_receipt_it_holds() {
    let host = SecretKey::generate();
    let sign = |seq, prev| Signed::sign(receipt(&host, seq, prev), &host).unwrap();
    let first = sign(0, None);
    let second = sign(1, Some(first.hash()));
    let held_after = |tail: &[SignedReceipt]| {
        let mut chain = vec![first.clone(), second.clone()];
        chain.extend_from_slice(tail);
        let evidence = EvidenceSet::from_records(&[], &chain, &[], Default::default());
        contiguous(&evidence)[&host.public()]
    };
    let block = RECEIPT_SEQ_BLOCK;
    let skip = sign(block, Some(second.hash()));
    assert_eq!(
        held_after(std::slice::from_ref(&skip)),
        block + 1,
        "a declared skip"
    );
    assert_eq!(
        held_after(&[skip.clone(), sign(block + 1, Some(skip.hash()))]),
        block + 2
    );
    assert_eq!(
        held_after(&[sign(block - 1, Some(second.hash()))]),
        2,
        "not onto a block boundary"
    );
    assert_eq!(
        held_after(&[sign(block, Some(Hash::of(b"a receipt nobody holds")))]),
        2,
        "from a receipt not held"
    );
    // A receipt from the skipped range that turns up later still counts.
    let lost = sign(2, Some(second.hash()));
    assert_eq!(held_after(&[lost, skip]), block + 1);
}

#[test]
fn a_peer_accepts_a_declared_skip() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
    let mut chain = super::Chain::new();
    let publisher = SecretKey::generate();
    let agent = Signed::sign(manifest(&publisher, "1.0.0", b"code"), &publisher).unwrap();
    registry.insert_manifest(&agent).unwrap();
    let caller = SecretKey::generate();
    let (receipt, request) = chain.call(&agent, &caller, Outcome::Ok);
    registry.insert_receipt(&receipt, Some(&request)).unwrap();
    let (skip, request) = chain.sign(
        &agent,
        &caller,
        Outcome::Ok,
        RECEIPT_SEQ_BLOCK,
        Some(receipt.hash()),
        |_| {},
    );
    assert_eq!(
        registry.insert_receipt(&skip, Some(&request)).unwrap(),
        Inserted::New
    );
    assert!(
        registry
            .misbehaviour(&chain.key.public())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_busy_writer_still_flushes_on_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
    let ns = KvNamespace {
        publisher: SecretKey::generate().public(),
        agent: "busy".into(),
    };
    // Writes back to back for five flush intervals: the writer never idles.
    let started = std::time::Instant::now();
    let mut n = 0u64;
    while started.elapsed() < crate::WAL_SYNC_INTERVAL * 5 {
        registry
            .kv_set(&ns, "n", &n.to_le_bytes(), &KvQuota::default())
            .unwrap();
        n += 1;
    }
    let flushes = registry.wal_flushes();
    assert!(
        flushes >= 3,
        "{flushes} flushes in {n} writes over five intervals"
    );
}

#[test]
fn checkpoints_keep_the_wal_bounded_without_a_commit_waiting_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let registry = Registry::open(&path).unwrap();
    let ns = KvNamespace {
        publisher: SecretKey::generate().public(),
        agent: "writer".into(),
    };
    // Each round writes other bytes: SQLite does not rewrite a page whose bytes are unchanged.
    let value = |round: u8| vec![round; 60 << 10];
    let mut wal = std::path::PathBuf::from(&path).into_os_string();
    wal.push("-wal");
    let mut largest = 0;
    // 32 MiB of agent memory written over about 1.5 s, eight values at a time: eight times
    // the size at which the checkpointer copies the WAL into the database.
    for round in 0..64 {
        for key in 0..8 {
            registry
                .kv_set(&ns, &format!("k{key}"), &value(round), &KvQuota::default())
                .unwrap();
        }
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        largest < 16 << 20,
        "the WAL grew to {largest} bytes for 32 MiB written"
    );
    // Nothing written was lost to a checkpoint.
    drop(registry);
    let registry = Registry::open(&path).unwrap();
    assert_eq!(registry.kv_get(&ns, "k7").unwrap(), Some(value(63)));
}
