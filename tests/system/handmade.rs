//! Agents written as core WebAssembly by hand and wrapped into components with `wit-component`:
//! behaviour a compiler will not emit, such as a list of a million strings that all alias one
//! 64 KiB buffer, or a table grown by ten million entries.

use agora_host::{CheckError, PublishError, PublishOptions};
use agora_registry::Outcome;
use agora_tests::{TestHost, handmade_component as component};

/// A core module whose `info` returns `actions`' (pointer, length) array at 0x20000 with
/// `count` entries, each naming the same `size` bytes (`a`s) at 0x10000, and whose `handle` runs
/// `handle_body` and then returns `ok([])`.
fn agent(count: u32, size: u32, handle_body: &str) -> String {
    format!(
        r#"(module
  (memory (export "memory") 256)
  (table $t 1 funcref)
  (global $heap (mut i32) (i32.const 0x00900000))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                           (i32.xor (i32.sub (local.get 2) (i32.const 1)) (i32.const -1))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (block $fits
      (br_if $fits (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
      (drop (memory.grow (i32.add (i32.shr_u (i32.sub (global.get $heap)
                                                      (i32.mul (memory.size) (i32.const 65536)))
                                             (i32.const 16))
                                  (i32.const 1)))))
    (local.get $p))
  (data (i32.const 16) "handmade")
  (data (i32.const 32) "0.1.0")
  (func (export "agora:agent/handler@0.1.0#info") (result i32)
    (local $i i32)
    (memory.fill (i32.const 0x10000) (i32.const 97) (i32.const 65536))
    (block $done
      (loop $fill
        (br_if $done (i32.ge_u (local.get $i) (i32.const {count})))
        (i32.store (i32.add (i32.const 0x20000) (i32.shl (local.get $i) (i32.const 3)))
                   (i32.const 0x10000))
        (i32.store (i32.add (i32.const 0x20004) (i32.shl (local.get $i) (i32.const 3)))
                   (i32.const {size}))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $fill)))
    (i32.store (i32.const 64) (i32.const 16)) (i32.store (i32.const 68) (i32.const 8))
    (i32.store (i32.const 72) (i32.const 32)) (i32.store (i32.const 76) (i32.const 5))
    (i32.store (i32.const 80) (i32.const 16)) (i32.store (i32.const 84) (i32.const 8))
    (i32.store (i32.const 88) (i32.const 0x20000)) (i32.store (i32.const 92) (i32.const {count}))
    (i32.const 64))
  (func (export "agora:agent/handler@0.1.0#handle") (param i32 i32 i32 i32) (result i32)
    {handle_body}
    (i32.store8 (i32.const 96) (i32.const 0))
    (i32.store (i32.const 100) (i32.const 0))
    (i32.store (i32.const 104) (i32.const 0))
    (i32.const 96)))"#
    )
}

#[tokio::test]
async fn a_million_aliases_of_one_string_in_info_are_refused_without_being_copied() {
    let host = TestHost::new().await;
    // 1,000,000 × 64 KiB would be 64 GB if the host copied each alias.
    let aliases = component(&agent(1_000_000, 65_536, ""));
    let started = std::time::Instant::now();
    let err = host
        .node
        .publish(&aliases, PublishOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PublishError::Check(CheckError::Info(_))),
        "{err}"
    );
    assert!(err.to_string().contains("too much data"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // A thousand aliases (64 MB) are within wasmtime's own per-crossing default (128 MiB): it is
    // the host's transfer limit that refuses them.
    let err = host
        .node
        .publish(
            &component(&agent(1_000, 65_536, "")),
            PublishOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("too much data"), "{err}");
    // The same agent with two short actions publishes: the refusal was the aliases.
    host.publish(&component(&agent(2, 1, ""))).await;
}

#[tokio::test]
async fn growing_a_table_by_ten_million_entries_hits_the_memory_limit() {
    let host = TestHost::new().await;
    let grower = component(&agent(
        1,
        1,
        "(drop (table.grow $t (ref.null func) (i32.const 10000000)))",
    ));
    let manifest = host.publish(&grower).await.hash().to_hex();
    let execution = host
        .node
        .run(&manifest, "x", b"", None)
        .await
        .expect("the call starts");
    assert_eq!(execution.outcome, Outcome::MemoryLimit);
    // Without the grow, the same agent answers.
    let plain = host
        .publish_as(&component(&agent(1, 2, "")), "plain")
        .await
        .hash()
        .to_hex();
    assert_eq!(
        host.node.run(&plain, "x", b"", None).await.unwrap().outcome,
        Outcome::Ok
    );
}
