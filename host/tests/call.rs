//! `agora call` and `agora rate` against a host in another process, over HTTP and over iroh:
//! the caller's key signs, the output goes to stdout, the receipt is verified and kept in the
//! caller's registry, feedback reaches the host and moves the agent's reputation, and the
//! remote path refuses what a local one refuses (a replay, an unknown agent).

mod common;

use std::path::Path;
use std::time::Duration;

use agora_host::client::ApiClient;
use agora_host::examples;
use agora_host::invoke::{CallError, InvokeMessage};
use agora_host::net::{NetConfig, Network};
use agora_registry::{Hash, PublicKey, ReceiptDurability, Registry, SecretKey};
use common::{agora, agora_output, start_host};

const QUOTE: &str = r#"{"trip": {"distance_m": 4000, "duration_s": 660}}"#;

/// `agora call`, which must succeed: its output and the receipt hash it reported.
fn call(caller: &Path, agent: &str, on: &str) -> (serde_json::Value, Hash) {
    let out = agora_output(
        caller,
        &["call", agent, "-a", "quote", "-p", QUOTE, "--on", on],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "agora call on {on}: {stderr}");
    let receipt = stderr
        .split_whitespace()
        .skip_while(|word| *word != "receipt")
        .nth(1)
        .expect("agora call names the receipt")
        .trim_end_matches(',')
        .parse()
        .unwrap();
    (
        serde_json::from_slice(&out.stdout).expect("JSON output"),
        receipt,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_in_another_process_calls_over_http_and_iroh_keeps_the_receipts_and_rates_them() {
    let dir = tempfile::tempdir().unwrap();
    let (host_data, caller_data) = (dir.path().join("host"), dir.path().join("caller"));
    let host: PublicKey = agora(&host_data, &["keygen"]).trim().parse().unwrap();
    let caller: PublicKey = agora(&caller_data, &["keygen"]).trim().parse().unwrap();
    let component = dir.path().join("ride-driver.wasm");
    std::fs::write(&component, examples::RIDE_DRIVER).unwrap();
    // Priced: only calls that cost something are evidence.
    let publish = ["publish", component.to_str().unwrap(), "--price", "1000"];
    let manifest: Hash = agora(&host_data, &publish)
        .lines()
        .find_map(|line| line.strip_prefix("manifest  "))
        .expect("the manifest hash")
        .parse()
        .unwrap();
    // The operator vouches for this caller, so its ratings count in the host's scores.
    let running = start_host(&host_data, &["--anchor", &caller.to_string()]);

    let (by_url, over_http) = call(&caller_data, "ride-driver", &running.api);
    let (by_ticket, over_iroh) = call(&caller_data, &manifest.to_hex(), &running.ticket);
    assert!(by_url["fare_cents"].as_u64().unwrap() > 0, "{by_url}");
    assert_eq!(
        by_url, by_ticket,
        "the same call gives the same answer either way"
    );

    // Both receipts are the caller's evidence now, and the host's.
    let kept = Registry::open(&caller_data.join("registry.db")).unwrap();
    let served = Registry::open(&host_data.join("registry.db")).unwrap();
    for receipt in [over_http, over_iroh] {
        let mine = kept
            .receipt(&receipt)
            .unwrap()
            .expect("the caller keeps the receipt");
        assert_eq!(mine.body().caller, Some(caller));
        assert_eq!(mine.body().host, host);
        assert!(served.receipt(&receipt).unwrap().is_some());
    }

    let client = ApiClient::new(&running.api).unwrap();
    let reputation = format!("/v1/agents/{manifest}/reputation");
    let before = client.get_json(&reputation).await.unwrap()["quality"]
        .as_f64()
        .unwrap();
    let rate = |receipt: Hash, on: &str| {
        agora(
            &caller_data,
            &["rate", &receipt.to_hex(), "0", "--tag", "slow", "--on", on],
        )
    };
    rate(over_http, &running.api);
    rate(over_iroh, &running.ticket);
    for receipt in [over_http, over_iroh] {
        let feedback = served
            .feedback(&receipt)
            .unwrap()
            .expect("the host has the rating");
        assert_eq!(feedback.body().rater, caller);
        assert_eq!(feedback.body().score, 0);
    }
    // Rated useless by a caller the host trusts: the agent's quality falls.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = client.get_json(&reputation).await.unwrap()["quality"]
            .as_f64()
            .unwrap();
        if now < before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "quality {now} never fell below {before} after two ratings of 0"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A second rating of the same call is refused, naming why.
    let again = agora_output(
        &caller_data,
        &["rate", &over_http.to_hex(), "100", "--on", &running.api],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("rated once"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_iroh_a_replayed_request_and_an_unknown_agent_are_refused_as_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let host_data = dir.path().join("host");
    let host: PublicKey = agora(&host_data, &["keygen"]).trim().parse().unwrap();
    let component = dir.path().join("ride-driver.wasm");
    std::fs::write(&component, examples::RIDE_DRIVER).unwrap();
    let manifest: Hash = agora(&host_data, &["publish", component.to_str().unwrap()])
        .lines()
        .find_map(|line| line.strip_prefix("manifest  "))
        .unwrap()
        .parse()
        .unwrap();
    let running = start_host(&host_data, &[]);
    let addr = Network::parse_ticket(&running.ticket).unwrap();
    assert_eq!(agora_host::net::invoke::host_key(&addr).unwrap(), host);
    let net = NetConfig::local();
    let caller = SecretKey::generate();

    let (request, message) =
        InvokeMessage::sign(&caller, host, manifest, "quote", QUOTE, 50_000_000).unwrap();
    let answer = agora_host::net::invoke::call(&net, &addr, &message)
        .await
        .unwrap();
    agora_host::invoke::check(&request, answer).expect("a receipt for this request");
    let replayed = agora_host::net::invoke::call(&net, &addr, &message).await;
    assert!(
        matches!(replayed, Err(CallError::Refused { status: 409, .. })),
        "{replayed:?}"
    );

    let unknown = Hash::of(b"no such agent");
    let (_, message) =
        InvokeMessage::sign(&caller, host, unknown, "quote", QUOTE, 50_000_000).unwrap();
    let refused = agora_host::net::invoke::call(&net, &addr, &message).await;
    match refused {
        Err(CallError::Refused {
            status: 404, error, ..
        }) => {
            assert!(error.contains(&unknown.to_hex()), "{error}")
        }
        other => panic!("{other:?}"),
    }

    // The CLI says the same, and exits non-zero.
    let caller_data = dir.path().join("caller");
    agora(&caller_data, &["keygen"]);
    let out = agora_output(
        &caller_data,
        &[
            "call",
            &unknown.to_hex(),
            "-a",
            "quote",
            "--on",
            &running.ticket,
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refused the call (404)"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_called_for_an_agent_it_only_heard_of_fetches_it_from_its_publisher_and_runs_it() {
    let dir = tempfile::tempdir().unwrap();
    let (publisher_data, host_data, caller_data) = (
        dir.path().join("publisher"),
        dir.path().join("host"),
        dir.path().join("caller"),
    );
    for data in [&publisher_data, &host_data, &caller_data] {
        agora(data, &["keygen"]);
    }
    let publisher = start_host(&publisher_data, &[]);
    let host = start_host(&host_data, &["--peer", &publisher.ticket]);
    let component = dir.path().join("ride-driver.wasm");
    std::fs::write(&component, examples::RIDE_DRIVER).unwrap();
    // Published through the running publisher host, which announces it.
    let manifest: Hash = agora(&publisher_data, &["publish", component.to_str().unwrap()])
        .lines()
        .find_map(|line| line.strip_prefix("manifest  "))
        .unwrap()
        .parse()
        .unwrap();
    let host_api = ApiClient::new(&host.api).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while host_api
        .get_json(&format!("/v1/agents/{manifest}"))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the host never heard of the agent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (fare, receipt) = call(&caller_data, &manifest.to_hex(), &host.ticket);
    assert!(fare["fare_cents"].as_u64().unwrap() > 0, "{fare}");
    let kept = Registry::open(&caller_data.join("registry.db")).unwrap();
    let receipt = kept.receipt(&receipt).unwrap().unwrap();
    let host_key: PublicKey =
        agora_host::net::invoke::host_key(&Network::parse_ticket(&host.ticket).unwrap()).unwrap();
    assert_eq!(
        receipt.body().host,
        host_key,
        "the host that was called ran it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_pipelines_receipts_serves_callers_keeps_their_receipts_and_signs_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (host_data, caller_data) = (dir.path().join("host"), dir.path().join("caller"));
    agora(&host_data, &["keygen"]);
    agora(&caller_data, &["keygen"]);
    let component = dir.path().join("ride-driver.wasm");
    std::fs::write(&component, examples::RIDE_DRIVER).unwrap();
    agora(&host_data, &["publish", component.to_str().unwrap()]);
    let host_key = SecretKey::load(&host_data.join("keys").join("host.key")).unwrap();
    let running = start_host(&host_data, &["--receipts", "pipelined"]);

    let receipts: Vec<Hash> = (0..3)
        .map(|_| call(&caller_data, "ride-driver", &running.api).1)
        .collect();
    // No other process signs beside it: its chain head is in its memory.
    let beside = Registry::open(&host_data.join("registry.db")).unwrap();
    let refused = beside.set_receipt_durability(&host_key, ReceiptDurability::Pipelined);
    assert!(
        matches!(refused, Err(agora_registry::Error::SignerBusy { .. })),
        "{refused:?}"
    );
    drop(beside);

    running.stop();
    let served = Registry::open(&host_data.join("registry.db")).unwrap();
    for receipt in &receipts {
        assert!(
            served.receipt(receipt).unwrap().is_some(),
            "receipt {receipt} was handed out and is kept"
        );
    }
    // Stopped, it leaves signing to others.
    served
        .set_receipt_durability(&host_key, ReceiptDurability::Pipelined)
        .unwrap();
}
