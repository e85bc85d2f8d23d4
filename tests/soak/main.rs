//! The soak: a thousand hostile and ordinary invocations back to back in one host process, in a
//! test binary of its own so that its resident memory is the host's alone. Every call must end
//! in its expected typed outcome, the host's resident memory after the run must be within 10% of
//! what it was after the first hundred, and a well-behaved agent called alongside must keep
//! answering within its normal latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agora_host::{Limits, PublishOptions, examples};
use agora_registry::{Outcome, Registry};
use agora_tests::{HOSTILE, TestHost};

const INVOCATIONS: usize = 1_000;
const QUOTE: &[u8] = br#"{"trip": {"distance_m": 5000, "duration_s": 600}}"#;

/// One kind of call: the hostile guest's action, its payload, its fuel, and the outcome expected.
struct Kind {
    action: &'static str,
    fuel: Option<u64>,
    expect: fn(&Outcome) -> bool,
}

fn kinds() -> Vec<Kind> {
    let ok: fn(&Outcome) -> bool = |o| *o == Outcome::Ok;
    let trap: fn(&Outcome) -> bool = |o| matches!(o, Outcome::Trap { .. });
    let log_limit: fn(&Outcome) -> bool = |o| *o == Outcome::LogLimit;
    let output_limit: fn(&Outcome) -> bool = |o| *o == Outcome::OutputLimit;
    let kind = |action, fuel, expect| Kind {
        action,
        fuel,
        expect,
    };
    vec![
        kind("echo", None, ok),
        kind("loop", Some(5_000_000), |o| *o == Outcome::FuelExhausted),
        kind("grow-memory", None, |o| *o == Outcome::MemoryLimit),
        kind("big-output", None, output_limit),
        kind("panic", None, trap),
        kind("stack-overflow", None, trap),
        kind("unreachable", None, trap),
        kind("log-flood", None, log_limit),
        kind("empty-log-flood", None, log_limit),
        kind("stdout-flood", None, log_limit),
        kind("big-log", None, output_limit),
        kind("big-call-payload", None, output_limit),
        kind("fields-hoard", None, trap),
        kind("nul-keys", None, ok),
        kind("kv-hog", None, ok),
        kind("open-file", None, ok),
        kind("open-socket", None, ok),
        kind("env", None, ok),
    ]
}

/// The host's own memory: what this process has resident, less what SQLite's page caches hold
/// (they fill as receipts are written, up to their fixed bounds, and are reported apart).
fn host_memory() -> u64 {
    resident_bytes().saturating_sub(Registry::sqlite_memory_bytes())
}

/// This process's resident memory, in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("resident pages");
    pages * 4096
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_hostile_calls_leave_the_host_as_it_was_and_a_bystander_answering() {
    let host = Arc::new(
        TestHost::with_limits(Limits {
            max_wall: Duration::from_secs(20),
            max_resource_handles: 200,
            ..Limits::default()
        })
        .await,
    );
    let hostile = host.publish(HOSTILE).await.hash().to_hex();
    let driver = host
        .node
        .publish(examples::RIDE_DRIVER, PublishOptions::default())
        .await
        .unwrap()
        .manifest
        .hash()
        .to_hex();

    // The bystander's normal latency, alone.
    let quote = |host: Arc<TestHost>, driver: String| async move {
        let started = Instant::now();
        let execution = host.node.run(&driver, "quote", QUOTE, None).await.unwrap();
        assert_eq!(execution.outcome, Outcome::Ok);
        started.elapsed()
    };
    let mut alone = Vec::new();
    for _ in 0..100 {
        alone.push(quote(host.clone(), driver.clone()).await);
    }
    alone.sort();

    let stop = Arc::new(AtomicBool::new(false));
    let bystander = tokio::spawn({
        let (host, driver, stop) = (host.clone(), driver.clone(), stop.clone());
        async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                latencies.push(quote(host.clone(), driver.clone()).await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            latencies
        }
    });

    let kinds = kinds();
    let mut counts = vec![0usize; kinds.len()];
    let mut after_100 = 0;
    let started = Instant::now();
    for n in 0..INVOCATIONS {
        let index = n % kinds.len();
        let kind = &kinds[index];
        let payload = if kind.action == "big-call-payload" {
            hostile.as_bytes()
        } else {
            b"/etc/passwd"
        };
        let execution = host
            .node
            .run(&hostile, kind.action, payload, kind.fuel)
            .await
            .expect("the call starts");
        assert!(
            (kind.expect)(&execution.outcome),
            "call {n}, {}: {:?}",
            kind.action,
            execution.outcome
        );
        counts[index] += 1;
        if n + 1 == 100 {
            after_100 = host_memory();
        }
    }
    let took = started.elapsed();
    let after_all = host_memory();
    stop.store(true, Ordering::Relaxed);
    let mut beside = bystander.await.unwrap();
    beside.sort();

    println!("soak: {INVOCATIONS} invocations in {took:.1?}");
    for (kind, count) in kinds.iter().zip(&counts) {
        println!("  {:<18} {count}", kind.action);
    }
    println!(
        "  resident memory less SQLite's caches after 100: {:.1} MB, after {INVOCATIONS}: {:.1} MB \
         ({:+.1}%); resident {:.1} MB, SQLite {:.1} MB",
        after_100 as f64 / 1e6,
        after_all as f64 / 1e6,
        (after_all as f64 / after_100 as f64 - 1.0) * 100.0,
        resident_bytes() as f64 / 1e6,
        Registry::sqlite_memory_bytes() as f64 / 1e6,
    );
    println!(
        "  bystander: {} calls; alone p50 {:.2?} p99 {:.2?}; during the soak p50 {:.2?} p99 {:.2?}",
        beside.len(),
        percentile(&alone, 0.5),
        percentile(&alone, 0.99),
        percentile(&beside, 0.5),
        percentile(&beside, 0.99),
    );

    assert!(
        after_all as f64 <= after_100 as f64 * 1.10,
        "resident memory grew from {after_100} to {after_all} bytes"
    );
    assert!(beside.len() >= 100, "the bystander barely ran");
    // The soak runs on one core of two: the bystander may wait for a scheduler slot, never
    // for a hostile call to end.
    let normal = percentile(&alone, 0.99);
    assert!(
        percentile(&beside, 0.99) <= normal * 5 + Duration::from_millis(50),
        "the bystander slowed to p99 {:?} (alone {normal:?})",
        percentile(&beside, 0.99)
    );
}
