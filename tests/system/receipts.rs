//! Every execution leaves a signed receipt, chained to the host's previous one.

use agora_host::examples;
use agora_registry::{Hash, Outcome, SignedReceipt, request_hash};
use agora_tests::TestHost;

#[tokio::test]
async fn publish_run_receipt_round_trip() {
    let host = TestHost::new().await;
    let manifest = host.publish(examples::RIDE_DRIVER).await;
    let payload = br#"{"trip": {"distance_m": 5000, "duration_s": 600}}"#;
    let execution = host
        .node
        .run("ride-driver", "quote", payload, Some(50_000_000))
        .await
        .unwrap();
    assert_eq!(execution.outcome, Outcome::Ok);
    let output = execution.output.clone().unwrap();
    assert_eq!(output, br#"{"fare_cents":1150}"#);

    let receipt = execution.receipt.body();
    assert_eq!(receipt.agent.manifest, manifest.hash());
    assert_eq!(receipt.agent.component, Hash::of(examples::RIDE_DRIVER));
    assert_eq!(receipt.input_hash, request_hash("quote", payload));
    assert_eq!(receipt.output_hash, Some(Hash::of(&output)));
    assert_eq!(receipt.host, host.node.public_key());
    assert_eq!(receipt.fuel_limit, 50_000_000);
    assert!(receipt.fuel_used > 0 && receipt.fuel_used == execution.fuel_used);
    assert_eq!(receipt.runtime, agora_host::RUNTIME_VERSION);
    assert_eq!(execution.logs.len(), 1, "the driver logs its quote");

    // Stored, and it verifies from the stored bytes; one changed byte breaks it.
    let stored = host
        .node
        .registry()
        .receipt(&execution.receipt.hash())
        .unwrap()
        .unwrap();
    assert_eq!(stored.as_bytes(), execution.receipt.as_bytes());
    let mut altered = stored.as_bytes().to_vec();
    let position = altered.len() / 2;
    altered[position] ^= 0x20;
    assert!(SignedReceipt::from_bytes(&altered).is_err());
}

#[tokio::test]
async fn the_charge_is_fuel_at_the_agents_price() {
    let host = TestHost::new().await;
    host.node
        .publish(
            examples::RIDE_DRIVER,
            agora_host::PublishOptions {
                price_per_mfuel: 1_000,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let payload = br#"{"trip": {"distance_m": 5000, "duration_s": 600}}"#;
    let execution = host
        .node
        .run("ride-driver", "quote", payload, None)
        .await
        .unwrap();
    assert_eq!(execution.charge, execution.fuel_used.div_ceil(1_000));
    assert_eq!(execution.receipt.body().charge, execution.charge);
}

#[tokio::test]
async fn the_receipt_chain_links_every_execution() {
    let host = TestHost::new().await;
    host.publish(examples::ENERGY_TRADER).await;
    let offer = br#"{"household": "h", "net_wh": 10, "reserve_cents_per_kwh": 9, "slot": "s"}"#;
    for _ in 0..3 {
        host.node
            .run("energy-trader", "offer", offer, None)
            .await
            .unwrap();
    }
    // Failures are receipted too.
    host.node
        .run("energy-trader", "offer", b"{", None)
        .await
        .unwrap();
    let chain = host
        .node
        .registry()
        .receipt_chain(&host.node.public_key())
        .unwrap();
    assert_eq!(chain.len(), 4);
    assert_eq!(chain[0].body().seq, 0);
    assert_eq!(chain[0].body().prev, None);
    for pair in chain.windows(2) {
        assert_eq!(pair[1].body().seq, pair[0].body().seq + 1);
        assert_eq!(pair[1].body().prev, Some(pair[0].hash()));
    }
    assert_eq!(chain[3].body().outcome.name(), "agent-error");
}

#[tokio::test]
async fn unknown_agents_are_a_clear_error() {
    let host = TestHost::new().await;
    let err = host
        .node
        .run("no-such-agent", "x", b"", None)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no agent `no-such-agent`"),
        "{err}"
    );
}

#[tokio::test]
async fn a_host_that_pipelines_receipts_keeps_and_backs_each_one_it_hands_out() {
    let host = TestHost::with_config(|config| {
        config.receipts(agora_registry::ReceiptDurability::Pipelined)
    })
    .await;
    host.publish(examples::RIDE_DRIVER).await;
    let payload = br#"{"trip": {"distance_m": 5000, "duration_s": 600}}"#;
    let mut handed_out = Vec::new();
    for _ in 0..50 {
        let execution = host
            .node
            .run("ride-driver", "quote", payload, None)
            .await
            .unwrap();
        assert_eq!(execution.outcome, Outcome::Ok);
        handed_out.push(execution.receipt);
    }
    let registry = host.node.registry();
    // Read back at once, as a verifier asking this host would: the receipt and what re-running
    // it needs.
    let last = handed_out.last().unwrap();
    assert_eq!(
        registry.receipt(&last.hash()).unwrap().map(|r| r.hash()),
        Some(last.hash())
    );
    let body = last.body();
    let input = registry.call_data(&body.input_hash).unwrap().unwrap();
    let transcript = registry
        .call_data(&body.transcript.unwrap().hash)
        .unwrap()
        .unwrap();
    let again = host
        .node
        .reexecute(last, examples::RIDE_DRIVER, &input, &transcript)
        .await
        .unwrap();
    assert_eq!(again.verdict, agora_host::Verdict::Matches);

    let chain = registry.receipt_chain(&host.node.public_key()).unwrap();
    assert_eq!(
        chain.iter().map(|r| r.hash()).collect::<Vec<_>>(),
        handed_out.iter().map(|r| r.hash()).collect::<Vec<_>>(),
        "the stored chain is exactly what was handed out, in order"
    );
    for pair in chain.windows(2) {
        assert_eq!(pair[1].body().prev, Some(pair[0].hash()));
        assert_eq!(pair[1].body().seq, pair[0].body().seq + 1);
    }
}
