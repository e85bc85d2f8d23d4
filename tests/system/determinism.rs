//! The deterministic execution profile: the same component on the same input reaches the same
//! outcome, output and fuel on every host, and every receipt names the profile it ran under.
//!
//! The golden agent (`tests/golden/numeric.wat`) is core WebAssembly written by hand, so its
//! bytes do not change with a compiler; its vectors below are pinned. A wasmtime upgrade or a
//! profile change that moves any of them must come with a new profile version.

use agora_host::{AGORA_DET_1, ExecutionError, Limits, ReexecuteError, Verdict, examples};
use agora_registry::{Input, Outcome, Receipt, SecretKey, Signed, TrapCode};
use agora_tests::{HOSTILE, TestHost, golden_agent as golden, interpreted_agent};

fn le(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// One golden vector: an action and payload, and what every host must answer.
struct Vector {
    action: &'static str,
    payload: Vec<u8>,
    outcome: Outcome,
    /// BLAKE3 of the output, hex; empty when there is none.
    output: &'static str,
    fuel: u64,
}

fn vectors() -> Vec<Vector> {
    vec![
        Vector {
            action: "nan",
            payload: le(&[0f32.to_bits(), 0f32.to_bits()]),
            outcome: Outcome::Ok,
            output: "8c5ed0dc0839210e24a804155f76114cb51a9abc1c2852cb06b34ebbc62f3658",
            fuel: 232,
        },
        Vector {
            action: "mandelbrot",
            payload: le(&[64]),
            outcome: Outcome::Ok,
            output: "851c2ce2346e0d187c0741f31397f3cbad53743b6724ab66b589e3e8f4105e8a",
            fuel: 2_645_225,
        },
        Vector {
            action: "simd",
            payload: le(&[10_000]),
            outcome: Outcome::Ok,
            output: "f24a3bf91d16e5861c54e1cbf764afb32f1bbd4e064a91a68ad2c0f74200b762",
            fuel: 210_229,
        },
        Vector {
            action: "divide",
            payload: le(&[7, 0]),
            outcome: Outcome::Trap {
                code: Some(TrapCode::IntegerDivisionByZero),
                message: "wasm trap: integer divide by zero".into(),
            },
            output: "",
            fuel: 198,
        },
    ]
}

/// Runs every golden vector on `host` and returns what each gave.
async fn run_vectors(host: &TestHost) -> Vec<(Outcome, String, u64)> {
    let agent = host.publish(&golden()).await.hash().to_hex();
    let mut got = Vec::new();
    for vector in vectors() {
        let execution = host
            .node
            .run(&agent, vector.action, &vector.payload, None)
            .await
            .expect("the call starts");
        let receipt = execution.receipt.body();
        assert_eq!(receipt.profile, Some(AGORA_DET_1.hash()));
        let output = receipt.output_hash.map(|h| h.to_hex()).unwrap_or_default();
        got.push((execution.outcome.clone(), output, execution.fuel_used));
    }
    got
}

fn trap_code(outcome: &Outcome) -> Option<TrapCode> {
    match outcome {
        Outcome::Trap { code, .. } => *code,
        _ => None,
    }
}

#[tokio::test]
async fn the_golden_agent_gives_the_pinned_outcome_output_and_fuel() {
    let host = TestHost::new().await;
    let got = run_vectors(&host).await;
    let mut wrong = Vec::new();
    for (vector, (outcome, output, fuel)) in vectors().iter().zip(&got) {
        // A trap is compared by its stable code; its message is wasmtime's wording.
        let same_outcome = outcome.name() == vector.outcome.name()
            && trap_code(outcome) == trap_code(&vector.outcome);
        if !same_outcome || output != vector.output || *fuel != vector.fuel {
            wrong.push(format!(
                "{}: {outcome} output {output:?} fuel {fuel} (pinned: {} output {:?} fuel {})",
                vector.action, vector.outcome, vector.output, vector.fuel
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "golden vectors moved under {} — a new profile version is due:\n{}",
        AGORA_DET_1.name,
        wrong.join("\n")
    );
}

#[tokio::test]
async fn a_nan_has_the_same_bits_on_every_cpu() {
    let host = TestHost::new().await;
    let agent = host.publish(&golden()).await.hash().to_hex();
    let output = host
        .node
        .run(&agent, "nan", &le(&[0f32.to_bits(), 0f32.to_bits()]), None)
        .await
        .unwrap()
        .into_output()
        .unwrap();
    let word = |at: usize| u32::from_le_bytes(output[at..at + 4].try_into().unwrap());
    let double = |at: usize| u64::from_le_bytes(output[at..at + 8].try_into().unwrap());
    // x86-64 makes 0/0 and sqrt(-1) a NaN with the sign bit set, aarch64 one with it clear: the
    // profile makes every NaN the canonical one, on scalars and on SIMD lanes alike.
    const F32: u32 = 0x7fc0_0000;
    const F64: u64 = 0x7ff8_0000_0000_0000;
    assert_eq!(
        [word(0), word(4), word(16), word(20), word(24), word(28)],
        [F32; 6],
        "f32 NaNs: {output:02x?}"
    );
    assert_eq!(
        [double(8), double(32), double(40)],
        [F64; 3],
        "f64 NaNs: {output:02x?}"
    );
}

#[tokio::test]
async fn pooled_and_on_demand_hosts_agree_on_every_outcome_output_and_fuel() {
    let pooled = TestHost::new().await;
    let on_demand = TestHost::with_limits(Limits {
        pooled_instances: 0,
        ..Limits::default()
    })
    .await;
    assert_eq!(run_vectors(&pooled).await, run_vectors(&on_demand).await);
    // A Rust example agent, built by today's compiler: the same on both hosts too.
    let quote = br#"{"trip":{"distance_m":12500,"duration_s":1500,"demand_pct":120}}"#;
    let mut runs = Vec::new();
    for host in [&pooled, &on_demand] {
        let agent = host.publish(examples::RIDE_DRIVER).await.hash().to_hex();
        let execution = host.node.run(&agent, "quote", quote, None).await.unwrap();
        assert_eq!(execution.outcome, Outcome::Ok);
        runs.push((execution.receipt.body().output_hash, execution.fuel_used));
    }
    assert_eq!(runs[0], runs[1]);
}

#[tokio::test]
async fn a_native_stack_overflow_is_marked_not_reproducible() {
    let host = TestHost::new().await;
    let agent = host.publish(HOSTILE).await.hash().to_hex();
    let execution = host
        .node
        .run(&agent, "native-stack-overflow", b"", None)
        .await
        .unwrap();
    assert_eq!(execution.outcome, Outcome::StackOverflow);
    assert!(!execution.outcome.is_reproducible());
    assert!(
        matches!(
            execution.error(),
            Some(ExecutionError::StackOverflow { .. })
        ),
        "{:?}",
        execution.error()
    );
    // Running off the shadow stack the guest keeps in its own memory is the guest's doing, and
    // the same everywhere: an out-of-bounds access.
    let shadow = host
        .node
        .run(&agent, "stack-overflow", b"", None)
        .await
        .unwrap();
    assert_eq!(
        trap_code(&shadow.outcome),
        Some(TrapCode::MemoryOutOfBounds),
        "{}",
        shadow.outcome
    );
    assert!(shadow.outcome.is_reproducible());
    // A panic is an `unreachable`.
    let panic = host.node.run(&agent, "panic", b"", None).await.unwrap();
    assert_eq!(trap_code(&panic.outcome), Some(TrapCode::Unreachable));
}

/// A host that runs only on demand, started apart from the one whose receipts it re-checks.
async fn second_host() -> TestHost {
    TestHost::with_limits(Limits {
        pooled_instances: 0,
        ..Limits::default()
    })
    .await
}

const TRIP: &[u8] = br#"{"trip":{"distance_m":12500,"duration_s":1500,"demand_pct":120}}"#;
const OFFER: &[u8] =
    br#"{"household":"solar-house","net_wh":3000,"reserve_cents_per_kwh":12,"slot":"t18"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_re_executed_on_a_second_host_matches_for_rust_python_and_javascript_agents() {
    let (first, second) = (TestHost::new().await, second_host().await);
    let python = interpreted_agent("py", "energy-trader-py");
    let javascript = interpreted_agent("js", "ride-driver-js");
    let golden = golden();
    // Interpreters embedded in a component: the same fuel from a second host too.
    let calls: [(&str, &[u8], &str, &[u8]); 5] = [
        ("rust", examples::RIDE_DRIVER, "quote", TRIP),
        ("python", &python, "offer", OFFER),
        ("javascript", &javascript, "quote", TRIP),
        ("golden", &golden, "mandelbrot", &le(&[32])),
        ("golden trap", &golden, "divide", &le(&[1, 0])),
    ];
    for (what, component, action, payload) in calls {
        let agent = first.publish(component).await.hash().to_hex();
        let execution = first.node.run(&agent, action, payload, None).await.unwrap();
        let receipt = execution.receipt;
        let (input, transcript) = first.kept(&receipt);
        assert_eq!(Input::from_bytes(&input).unwrap().payload, payload);
        let again = second
            .node
            .reexecute(&receipt, component, &input, &transcript)
            .await
            .unwrap();
        assert_eq!(again.verdict, Verdict::Matches, "{what}: {again:?}");
        assert_eq!(again.fuel_used, receipt.body().fuel_used, "{what}");
    }
}

/// What a lying host changes in an honest receipt before signing it.
type Alteration = fn(&mut Receipt);

#[tokio::test]
async fn a_receipt_whose_host_altered_output_fuel_or_outcome_does_not_match() {
    let (first, second) = (TestHost::new().await, second_host().await);
    let agent = first.publish(examples::RIDE_DRIVER).await.hash().to_hex();
    let honest = first.node.run(&agent, "quote", TRIP, None).await.unwrap();
    let (input, transcript) = first.kept(&honest.receipt);
    let liar = SecretKey::generate();
    let altered = |change: Alteration| {
        let mut body = honest.receipt.body().clone();
        body.host = liar.public();
        change(&mut body);
        Signed::sign(body, &liar).unwrap()
    };
    let cases: [(Alteration, &[&str]); 3] = [
        (|r| r.fuel_used -= 1, &["fuel_used"]),
        (
            |r| r.output_hash = Some(agora_registry::Hash::of(b"a higher fare")),
            &["output_hash"],
        ),
        (
            |r| {
                r.outcome = Outcome::Trap {
                    code: Some(TrapCode::Unreachable),
                    message: "the agent crashed".into(),
                };
                r.output_hash = None;
            },
            &["outcome", "output_hash"],
        ),
    ];
    for (change, differing) in cases {
        let receipt = altered(change);
        let again = second
            .node
            .reexecute(&receipt, examples::RIDE_DRIVER, &input, &transcript)
            .await
            .unwrap();
        assert_eq!(
            again.verdict,
            Verdict::Differs {
                fields: differing.to_vec()
            }
        );
    }
    // The input or the component given must be the receipt's own.
    let err = second
        .node
        .reexecute(
            &honest.receipt,
            examples::RIDE_DRIVER,
            &Input {
                action: "quote".into(),
                payload: b"{}".to_vec(),
            }
            .to_bytes(),
            &transcript,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ReexecuteError::InputMismatch { .. }), "{err}");
    let err = second
        .node
        .reexecute(&honest.receipt, examples::RIDE_RIDER, &input, &transcript)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReexecuteError::ComponentMismatch { .. }),
        "{err}"
    );
    // A receipt that names no profile (from a host before profiles) cannot be re-checked.
    let unprofiled = altered(|r| r.profile = None);
    let err = second
        .node
        .reexecute(&unprofiled, examples::RIDE_DRIVER, &input, &transcript)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("names no execution profile"),
        "{err}"
    );
}

#[tokio::test]
async fn a_guest_reading_clocks_and_randomness_sees_what_its_receipt_records() {
    let (first, second) = (TestHost::new().await, second_host().await);
    let agent = first.publish(HOSTILE).await.hash().to_hex();
    let world = |execution: &agora_host::Execution| {
        String::from_utf8(execution.output.clone().unwrap_or_default()).unwrap()
    };
    let one = first.node.run(&agent, "world", b"", None).await.unwrap();
    let two = first.node.run(&agent, "world", b"", None).await.unwrap();
    // Each call sees a world of its own (its salt and start), and time passes within it.
    assert_ne!(world(&one), world(&two));
    let (early, late) = world(&one)
        .split_once('\n')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .unwrap();
    assert_ne!(early, late);
    let started = one.receipt.body().environment.unwrap().clock_ms;
    assert!(
        early.starts_with(&format!("wall {}.", started / 1000)),
        "{early} (clock_ms {started})"
    );
    // A second host shown the receipt shows the guest the same world.
    for execution in [&one, &two] {
        let (input, transcript) = first.kept(&execution.receipt);
        let again = second
            .node
            .reexecute(&execution.receipt, HOSTILE, &input, &transcript)
            .await
            .unwrap();
        assert_eq!(again.verdict, Verdict::Matches, "{}", world(execution));
    }
}
