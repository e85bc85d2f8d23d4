//! Receipts signed ahead of their commit ([`ReceiptDurability::Pipelined`]): the process reads
//! what it handed out, the chain is the same as committed signing makes, and no other signer
//! can sign beside it.

use super::*;

fn pipelined(dir: &std::path::Path, key: &SecretKey) -> Registry {
    let registry = Registry::open(&dir.join("registry.db")).unwrap();
    registry
        .set_receipt_durability(key, ReceiptDurability::Pipelined)
        .unwrap();
    registry
}

#[test]
fn a_receipt_handed_out_before_its_commit_is_read_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate();
    let registry = pipelined(dir.path(), &key);
    for _ in 0..200 {
        let signed = registry
            .append_receipt(&key, receipt(&key, 0, None))
            .unwrap();
        // No wait in between: the read waits for the writer instead.
        let stored = registry.receipt(&signed.hash()).unwrap();
        assert_eq!(stored.map(|r| r.hash()), Some(signed.hash()));
    }
}

#[test]
fn a_pipelined_chain_links_and_runs_on_across_blocks_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate();
    let total = RECEIPT_SEQ_BLOCK + 10;
    {
        let registry = pipelined(dir.path(), &key);
        for _ in 0..total {
            registry
                .append_receipt(&key, receipt(&key, 0, None))
                .unwrap();
        }
    }
    // Closed cleanly: the next process continues without a skip.
    let registry = pipelined(dir.path(), &key);
    let next = registry
        .append_receipt(&key, receipt(&key, 0, None))
        .unwrap();
    assert_eq!(next.body().seq, total);
    let chain = registry.receipt_chain(&key.public()).unwrap();
    assert_eq!(chain.len() as u64, total + 1);
    for (seq, pair) in chain.windows(2).enumerate() {
        assert_eq!(pair[0].body().seq, seq as u64);
        assert_eq!(pair[1].body().prev, Some(pair[0].hash()), "the chain links");
    }
}

#[test]
fn no_process_signs_beside_one_that_pipelines() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate();
    let path = dir.path().join("registry.db");
    let first = pipelined(dir.path(), &key);
    first.append_receipt(&key, receipt(&key, 0, None)).unwrap();

    // Another registry on the same file (the lock is per open file, as for another process).
    let second = Registry::open(&path).unwrap();
    let refused = second.append_receipt(&key, receipt(&key, 0, None));
    assert!(
        matches!(refused, Err(Error::SignerBusy { .. })),
        "signed beside a pipelining registry: {refused:?}"
    );
    let refused = second.set_receipt_durability(&key, ReceiptDurability::Pipelined);
    assert!(
        matches!(refused, Err(Error::SignerBusy { .. })),
        "{refused:?}"
    );

    // Gone, it leaves the lock to others.
    drop(first);
    second.append_receipt(&key, receipt(&key, 0, None)).unwrap();
    // And one signing the committed way keeps a pipelining one out.
    let third = Registry::open(&path).unwrap();
    let refused = third.set_receipt_durability(&key, ReceiptDurability::Pipelined);
    assert!(
        matches!(refused, Err(Error::SignerBusy { .. })),
        "{refused:?}"
    );
}
