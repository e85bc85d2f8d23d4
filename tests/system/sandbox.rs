//! Hostile guests get a typed outcome naming the limit, and the host keeps serving.

use std::time::Duration;

use agora_host::{Execution, ExecutionError, Limits};
use agora_registry::Outcome;
use agora_tests::{HOSTILE, TestHost};

/// A host running the hostile guest; returns the host and the guest's manifest hash.
async fn hostile_host(limits: Limits) -> (TestHost, String) {
    let host = TestHost::with_limits(limits).await;
    let manifest = host.publish(HOSTILE).await;
    (host, manifest.hash().to_hex())
}

async fn run(
    host: &TestHost,
    agent: &str,
    action: &str,
    payload: &[u8],
    fuel: Option<u64>,
) -> Execution {
    host.node
        .run(agent, action, payload, fuel)
        .await
        .expect("the call starts")
}

/// After any failure, the same host runs the same agent normally.
async fn assert_still_serving(host: &TestHost, agent: &str) {
    let execution = run(host, agent, "echo", b"still here", None).await;
    assert_eq!(execution.into_output().unwrap(), b"still here");
}

fn text(execution: &Execution) -> String {
    String::from_utf8_lossy(execution.output.as_deref().unwrap_or_default()).into_owned()
}

#[tokio::test]
async fn an_infinite_loop_runs_out_of_fuel() {
    let (host, agent) = hostile_host(Limits::default()).await;
    let execution = run(&host, &agent, "loop", b"", Some(5_000_000)).await;
    assert_eq!(execution.outcome, Outcome::FuelExhausted);
    assert_eq!(execution.fuel_used, 5_000_000);
    assert!(matches!(
        execution.error(),
        Some(ExecutionError::FuelExhausted { limit: 5_000_000, agent }) if agent == "hostile@0.1.0"
    ));
    assert_eq!(execution.receipt.body().outcome, Outcome::FuelExhausted);
    assert_still_serving(&host, &agent).await;
}

#[tokio::test]
async fn a_loop_with_a_huge_budget_hits_the_wall_clock_deadline() {
    let (host, agent) = hostile_host(Limits {
        max_wall: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    let execution = run(&host, &agent, "loop", b"", Some(u64::MAX)).await;
    assert_eq!(execution.outcome, Outcome::Timeout);
    assert!(
        execution.fuel_used < execution.fuel_limit,
        "stopped with fuel to spare"
    );
    assert!(
        execution.wall_time < Duration::from_secs(3),
        "{:?}",
        execution.wall_time
    );
    assert!(matches!(
        execution.error(),
        Some(ExecutionError::Timeout { limit_ms: 300, .. })
    ));
    assert_still_serving(&host, &agent).await;
}

#[tokio::test]
async fn unbounded_allocation_hits_the_memory_limit() {
    let (host, agent) = hostile_host(Limits {
        max_memory_bytes: 32 << 20,
        ..Limits::default()
    })
    .await;
    let execution = run(&host, &agent, "grow-memory", b"", None).await;
    assert_eq!(execution.outcome, Outcome::MemoryLimit);
    let error = execution.error().unwrap().to_string();
    assert!(
        error.contains("hostile@0.1.0") && error.contains(&(32u64 << 20).to_string()),
        "{error}"
    );
    assert_still_serving(&host, &agent).await;
}

#[tokio::test]
async fn returning_100_mib_hits_the_output_limit() {
    // Writing 100 MiB takes a debug build seconds on a loaded machine; the wall clock is not
    // what this test is about, so it gets room.
    let (host, agent) = hostile_host(Limits {
        max_wall: std::time::Duration::from_secs(60),
        ..Limits::default()
    })
    .await;
    let execution = run(&host, &agent, "big-output", b"", None).await;
    assert_eq!(execution.outcome, Outcome::OutputLimit);
    assert!(execution.output.is_none());
    assert!(execution.receipt.body().output_hash.is_none());
    assert_still_serving(&host, &agent).await;
}

#[tokio::test]
async fn handing_the_host_more_than_one_crossing_may_carry_ends_output_limit_before_any_copy() {
    let (host, agent) = hostile_host(Limits {
        max_wall: Duration::from_secs(60),
        ..Limits::default()
    })
    .await;
    // A 16 MiB log message, a 100 MiB call-agent payload: each stopped as its bytes are counted,
    // before the host allocates for them, so the host's own memory never holds them.
    for action in ["big-log", "big-call-payload"] {
        let execution = run(&host, &agent, action, agent.as_bytes(), None).await;
        assert_eq!(execution.outcome, Outcome::OutputLimit, "{action}");
    }
    assert_still_serving(&host, &agent).await;
}

#[tokio::test]
async fn host_calls_cost_fuel_in_proportion_to_the_bytes_they_move() {
    let (host, agent) = hostile_host(Limits::default()).await;
    let fuel_to_read = |size: usize| {
        let (host, agent) = (&host, &agent);
        async move {
            let written = run(host, agent, "kv-write", size.to_string().as_bytes(), None).await;
            assert_eq!(text(&written), "written");
            let read = run(host, agent, "kv-read", b"20", None).await;
            assert_eq!(text(&read), (20 * size).to_string());
            read.fuel_used
        }
    };
    let small = fuel_to_read(10).await;
    let large = fuel_to_read(60_000).await;
    // The host copies the value into the guest, so without the charge the guest's own fuel
    // barely differs; with it, every byte read costs a unit.
    let moved = 20 * (60_000 - 10);
    assert!(
        large - small >= moved * 9 / 10,
        "reading {moved} more bytes cost {} more fuel",
        large - small
    );
    // And a guest with too little fuel left for a host call ends fuel-exhausted.
    let starved = run(&host, &agent, "kv-read", b"1000", Some(2_000_000)).await;
    assert_eq!(starved.outcome, Outcome::FuelExhausted);
}

#[tokio::test]
async fn growing_past_the_hosts_memory_for_all_calls_ends_host_memory_which_is_not_the_agents_fault()
 {
    let (host, agent) = hostile_host(Limits {
        max_memory_bytes: 128 << 20,
        max_guest_memory_bytes: 64 << 20,
        ..Limits::default()
    })
    .await;
    let execution = run(&host, &agent, "grow-memory", b"", None).await;
    assert_eq!(execution.outcome, Outcome::HostMemory);
    assert_eq!(execution.receipt.body().outcome, Outcome::HostMemory);
    assert!(matches!(
        execution.error(),
        Some(ExecutionError::HostMemory { .. })
    ));
    assert_eq!(
        agora_registry::reputation::CallOutcome::of(&execution.outcome),
        agora_registry::reputation::CallOutcome::HostBound
    );
    // What it held was given back: the next call has the whole budget again.
    assert_eq!(
        run(&host, &agent, "grow-memory", b"", None).await.outcome,
        Outcome::HostMemory
    );
    assert_still_serving(&host, &agent).await;
}

#[tokio::test]
async fn while_running_calls_hold_the_hosts_memory_a_new_call_waits_then_is_refused_as_busy() {
    let (host, agent) = hostile_host(Limits {
        max_memory_bytes: 64 << 20,
        max_guest_memory_bytes: 96 << 20,
        max_wall: Duration::from_secs(3),
        ..Limits::default()
    })
    .await;
    let holder = {
        let (node, agent) = (host.node.clone(), agent.clone());
        tokio::spawn(async move {
            node.run(&agent, "hold-memory", b"60", Some(100_000_000_000))
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let refused = host
        .node
        .run(&agent, "echo", b"hi", None)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, agora_host::RunError::HostBusy { .. }),
        "{refused}"
    );
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    assert_eq!(holder.await.unwrap().outcome, Outcome::Timeout);
    assert_still_serving(&host, &agent).await;
}

#[tokio::test]
async fn a_guest_hoarding_http_fields_is_stopped_at_its_handle_limit() {
    let (host, agent) = hostile_host(Limits {
        max_resource_handles: 200,
        max_wall: Duration::from_secs(60),
        ..Limits::default()
    })
    .await;
    let execution = run(&host, &agent, "fields-hoard", b"", None).await;
    let Outcome::Trap { message, .. } = &execution.outcome else {
        panic!("{:?}: {}", execution.outcome, text(&execution));
    };
    assert!(message.contains("handle limit exceeded"), "{message}");
    assert_still_serving(&host, &agent).await;
    // It is the host's limit that stopped it, not wasmtime's own (100,000): twice the limit
    // lets the guest hoard about twice as long.
    let (wider, agent) = hostile_host(Limits {
        max_resource_handles: 400,
        max_wall: Duration::from_secs(60),
        ..Limits::default()
    })
    .await;
    let longer = run(&wider, &agent, "fields-hoard", b"", None).await;
    assert!(
        longer.fuel_used > execution.fuel_used * 3 / 2
            && longer.fuel_used < execution.fuel_used * 3,
        "fuel {} at 400 handles against {} at 200",
        longer.fuel_used,
        execution.fuel_used
    );
}

#[tokio::test]
async fn a_panic_is_a_trap() {
    let (host, agent) = hostile_host(Limits::default()).await;
    let execution = run(&host, &agent, "panic", b"", None).await;
    assert!(
        matches!(execution.outcome, Outcome::Trap { .. }),
        "{}",
        execution.outcome
    );
    assert_still_serving(&host, &agent).await;
}

#[tokio::test]
async fn a_stack_overflow_is_a_trap() {
    let (host, agent) = hostile_host(Limits::default()).await;
    let execution = run(&host, &agent, "stack-overflow", b"", None).await;
    // Rust keeps its frames on a shadow stack in linear memory, so running off it is an
    // out-of-bounds access; either way the guest traps and only the guest.
    assert!(
        matches!(execution.outcome, Outcome::Trap { .. }),
        "{}",
        execution.outcome
    );
    assert_still_serving(&host, &agent).await;
}

#[tokio::test]
async fn flooding_the_log_or_stdout_hits_the_log_limit() {
    let (host, agent) = hostile_host(Limits::default()).await;
    for action in ["log-flood", "stdout-flood", "empty-log-flood"] {
        let execution = run(&host, &agent, action, b"", None).await;
        assert_eq!(execution.outcome, Outcome::LogLimit, "{action}");
        assert!(execution.stdout.len() <= 64 << 10);
        assert!(
            execution
                .logs
                .iter()
                .map(|l| l.message.len())
                .sum::<usize>()
                <= 64 << 10
        );
        // Empty lines cost host memory too: at most the budget over the per-line overhead.
        assert!(
            execution.logs.len() <= (64 << 10) / 64,
            "{action}: {} lines",
            execution.logs.len()
        );
    }
    assert_still_serving(&host, &agent).await;
}

#[tokio::test]
async fn keys_that_begin_with_nul_count_against_the_memory_quota() {
    let (host, agent) = hostile_host(Limits::default()).await;
    let execution = run(&host, &agent, "nul-keys", b"", None).await;
    let stored: u64 = text(&execution).parse().expect("a byte count");
    let quota = Limits::default().kv.max_total_bytes;
    assert!(
        stored <= quota,
        "stored {stored} bytes of keys under a {quota}-byte quota"
    );
    assert!(
        stored > quota / 2,
        "the quota still lets an agent use its memory"
    );
}

#[tokio::test]
async fn files_are_denied() {
    let (host, agent) = hostile_host(Limits::default()).await;
    let secret = host.dir.path().join("keys/host.key");
    let execution = run(
        &host,
        &agent,
        "open-file",
        secret.to_string_lossy().as_bytes(),
        None,
    )
    .await;
    assert!(
        text(&execution).starts_with("denied"),
        "{}",
        text(&execution)
    );
    let execution = run(&host, &agent, "write-file", b"", None).await;
    assert!(
        text(&execution).starts_with("denied"),
        "{}",
        text(&execution)
    );
    assert!(!std::path::Path::new("/tmp/agora-hostile").exists());
    assert_still_serving(&host, &agent).await;
}

#[tokio::test]
async fn sockets_name_lookup_and_outgoing_http_are_denied() {
    let (host, agent) = hostile_host(Limits::default()).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap().to_string();

    let execution = run(&host, &agent, "open-socket", address.as_bytes(), None).await;
    assert!(
        text(&execution).starts_with("denied"),
        "{}",
        text(&execution)
    );
    let execution = run(&host, &agent, "resolve", b"localhost", None).await;
    assert!(
        text(&execution).starts_with("denied"),
        "{}",
        text(&execution)
    );
    let execution = run(&host, &agent, "http", address.as_bytes(), None).await;
    assert!(
        text(&execution).starts_with("denied"),
        "{}",
        text(&execution)
    );
    assert!(
        text(&execution).contains("HttpRequestDenied"),
        "{}",
        text(&execution)
    );

    // Nothing reached the listener.
    assert!(listener.accept().is_err());
    assert_still_serving(&host, &agent).await;
}

#[tokio::test]
async fn the_guest_sees_no_environment_or_arguments() {
    let (host, agent) = hostile_host(Limits::default()).await;
    let execution = run(&host, &agent, "env", b"", None).await;
    assert_eq!(text(&execution), "0 vars, 0 args");
}

#[tokio::test]
async fn agent_memory_persists_between_calls_within_its_quota() {
    let (host, agent) = hostile_host(Limits::default()).await;
    for expected in ["1", "2", "3"] {
        assert_eq!(text(&run(&host, &agent, "kv", b"", None).await), expected);
    }
    let execution = run(&host, &agent, "kv-hog", b"", None).await;
    assert!(
        text(&execution).starts_with("refused: agent memory quota"),
        "{}",
        text(&execution)
    );
}

/// One thread for everything: if a guest spinning in host calls never yielded, nothing else on
/// the runtime (timers, other calls, the deadlines that stop guests) would run until it ended.
#[tokio::test(flavor = "current_thread")]
async fn a_guest_spinning_in_host_calls_still_yields_to_everything_else_on_its_thread() {
    let (host, agent) = hostile_host(Limits {
        max_wall: Duration::from_millis(1500),
        ..Limits::default()
    })
    .await;
    let spinning = {
        let (node, agent) = (host.node.clone(), agent.clone());
        tokio::spawn(async move {
            node.run(&agent, "clock-spin", b"", Some(100_000_000_000))
                .await
                .unwrap()
        })
    };
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let asked = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(20)).await;
        worst = worst.max(asked.elapsed() - Duration::from_millis(20));
    }
    assert!(
        worst < Duration::from_millis(200),
        "a timer fired {worst:?} late"
    );
    assert_eq!(spinning.await.unwrap().outcome, Outcome::Timeout);
}
