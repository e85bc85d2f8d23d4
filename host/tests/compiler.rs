//! Compiling in a child process: what the `agora` command does. A compile is bounded in memory
//! and time there, and whatever happens to the compiler happens to the child, not the host.

use std::path::PathBuf;
use std::time::Duration;

use agora_host::{
    CheckError, Compiler, DataDir, Limits, Node, NodeConfig, PublishError, PublishOptions, examples,
};

const QUOTE: &[u8] = br#"{"trip":{"distance_m":12500,"duration_s":1500,"demand_pct":120}}"#;

/// The `agora` binary of this build as the compiler.
fn agora_compiler() -> Compiler {
    Compiler::Process(PathBuf::from(env!("CARGO_BIN_EXE_agora")))
}

/// A fresh host in its own data dir, compiling with `compiler` under `limits`.
async fn host(compiler: Compiler, limits: Limits) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = DataDir::new(dir.path());
    data_dir.keygen().expect("keygen");
    let node = Node::open(NodeConfig::new(data_dir).limits(limits).compiler(compiler))
        .await
        .expect("open");
    (node, dir)
}

async fn refusal(node: &Node, component: &[u8]) -> CheckError {
    match node.publish(component, PublishOptions::default()).await {
        Err(PublishError::Check(error)) => error,
        other => panic!("expected a refused component, got {other:?}"),
    }
}

#[tokio::test]
async fn code_compiled_in_a_child_process_runs_and_is_cached_like_code_compiled_in_process() {
    let (node, _dir) = host(agora_compiler(), Limits::default()).await;
    let agent = node
        .publish(examples::RIDE_DRIVER, PublishOptions::default())
        .await
        .expect("published")
        .manifest
        .hash()
        .to_hex();
    let output = node
        .run(&agent, "quote", QUOTE, None)
        .await
        .expect("runs")
        .into_output()
        .expect("a quote");
    assert!(
        output.starts_with(b"{"),
        "{}",
        String::from_utf8_lossy(&output)
    );
    let stats = node.sandbox().stats();
    assert_eq!(stats.compiles, 1);
    assert_eq!(
        stats.disk.expect("a disk cache").stored,
        1,
        "cached on disk"
    );
}

#[tokio::test]
async fn a_component_that_needs_more_memory_to_compile_than_the_bound_is_refused_and_remembered() {
    // About what the compiler process itself needs before it compiles anything: the ride driver
    // (110 KB) needs more.
    let limit = 8 << 20;
    let (node, dir) = host(
        agora_compiler(),
        Limits {
            max_compile_memory_bytes: limit,
            ..Limits::default()
        },
    )
    .await;
    for attempt in ["first", "second"] {
        let error = refusal(&node, examples::RIDE_DRIVER).await;
        assert!(
            matches!(error, CheckError::CompileMemory { limit: l } if l == limit),
            "{attempt}: {error:?}"
        );
        assert!(
            error.to_string().contains("bytes of memory to compile"),
            "{error}"
        );
    }
    assert_eq!(node.sandbox().stats().compiles, 1, "not compiled again");
    assert_eq!(
        node.sandbox().stats().disk.expect("a disk cache").stored,
        0,
        "nothing cached"
    );
    assert!(
        node.registry()
            .manifests()
            .expect("lists agents")
            .is_empty(),
        "nothing published"
    );
    drop(dir);
}

#[tokio::test]
async fn a_compile_past_its_deadline_in_a_child_process_is_refused() {
    let (node, _dir) = host(
        agora_compiler(),
        Limits {
            max_compile_time: Duration::from_millis(1),
            ..Limits::default()
        },
    )
    .await;
    let error = refusal(&node, examples::RIDE_DRIVER).await;
    assert!(
        matches!(error, CheckError::CompileTimeout { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_compiler_that_dies_refuses_the_component_and_the_host_carries_on() {
    // `false` stands for a compiler that crashes: it exits without output.
    let (node, _dir) = host(Compiler::Process("false".into()), Limits::default()).await;
    let error = refusal(&node, examples::RIDE_DRIVER).await;
    assert!(
        matches!(error, CheckError::CompilerCrashed { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("exit status: 1"), "{error}");
    // The host still answers: its registry, its sandbox.
    assert!(
        node.registry()
            .manifests()
            .expect("lists agents")
            .is_empty()
    );
    assert_eq!(node.sandbox().stats().compiles, 1);
}
