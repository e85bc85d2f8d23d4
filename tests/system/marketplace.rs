//! The example agents doing marketplace work through a host, and agents calling agents.

use agora_host::examples;
use agora_registry::{Outcome, SignedReceipt};
use agora_tests::{HOSTILE, TestHost};
use serde_json::{Value, json};

fn json_output(execution: agora_host::Execution) -> Value {
    serde_json::from_slice(&execution.into_output().expect("ok output")).expect("JSON output")
}

const TRIP: &str = r#"{"distance_m": 12500, "duration_s": 1500, "demand_pct": 120}"#;

#[tokio::test]
async fn a_rider_negotiates_a_fare_with_driver_agents() {
    let host = TestHost::new().await;
    let rider = host.publish(examples::RIDE_RIDER).await;
    // Two drivers: the same code under two names, so each keeps its own pricing rules.
    let ava = host.publish_as(examples::RIDE_DRIVER, "driver-ava").await;
    let ben = host.publish_as(examples::RIDE_DRIVER, "driver-ben").await;
    let cheap = json!({"base_cents": 200, "per_km_cents": 100, "per_min_cents": 25,
                       "minimum_cents": 600, "max_surge_pct": 200, "max_discount_pct": 20});
    json_output(
        host.node
            .run(
                "driver-ben",
                "configure",
                cheap.to_string().as_bytes(),
                None,
            )
            .await
            .unwrap(),
    );

    let trip: Value = serde_json::from_str(TRIP).unwrap();
    let ava_quote = json_output(
        host.node
            .run(
                "driver-ava",
                "quote",
                json!({"trip": trip}).to_string().as_bytes(),
                None,
            )
            .await
            .unwrap(),
    )["fare_cents"]
        .as_u64()
        .unwrap();
    let ben_quote = json_output(
        host.node
            .run(
                "driver-ben",
                "quote",
                json!({"trip": trip}).to_string().as_bytes(),
                None,
            )
            .await
            .unwrap(),
    )["fare_cents"]
        .as_u64()
        .unwrap();
    assert_eq!(ava_quote, 3_000, "default rules: (250 + 1500 + 750) × 1.2");
    assert_eq!(ben_quote, 2_490, "ben's rules: (200 + 1250 + 625) × 1.2");

    // A budget below both quotes: the rider must haggle, and ben is the cheaper driver.
    let request = json!({
        "trip": trip,
        "budget_cents": 2_200,
        "drivers": [ava.hash().to_hex(), ben.hash().to_hex()],
        "max_rounds": 4,
    });
    let execution = host
        .node
        .run(
            &rider.hash().to_hex(),
            "negotiate",
            request.to_string().as_bytes(),
            None,
        )
        .await
        .unwrap();
    let receipt = execution.receipt.clone();
    let fuel_used = execution.fuel_used;
    let outcome = json_output(execution);
    assert_eq!(outcome["status"], "agreed", "{outcome}");
    assert_eq!(outcome["driver"], ben.hash().to_hex());
    let fare = outcome["fare_cents"].as_u64().unwrap();
    assert!(
        (1_992..=2_200).contains(&fare),
        "within budget and not below ben's floor: {fare}"
    );

    // Every call-agent left its own receipt, linked from the rider's.
    let nested = &receipt.body().nested;
    assert!(
        nested.len() >= 3,
        "two quotes and at least one counter: {nested:?}"
    );
    let mut nested_fuel = 0;
    for hash in nested {
        let child: SignedReceipt = host.node.registry().receipt(hash).unwrap().unwrap();
        let parent = child.body().parent_call.unwrap();
        assert_eq!(parent.manifest, rider.hash());
        assert_eq!(parent.depth, 1);
        assert_eq!(child.body().outcome, Outcome::Ok);
        nested_fuel += child.body().fuel_used;
    }
    assert!(
        fuel_used > nested_fuel,
        "the rider's fuel includes its callees'"
    );
}

#[tokio::test]
async fn households_trade_energy_through_a_double_auction() {
    let host = TestHost::new().await;
    let trader = host.publish(examples::ENERGY_TRADER).await.hash().to_hex();
    let slot = "2026-11-23T18:00";
    let households = [
        ("solar-roof", 4_000, 11),
        ("battery-wall", 2_500, 16),
        ("ev-garage", -5_000, 24),
        ("heat-pump", -3_000, 13),
    ];
    let mut orders = Vec::new();
    for (household, net_wh, reserve) in households {
        let offer = json!({"household": household, "net_wh": net_wh, "reserve_cents_per_kwh": reserve, "slot": slot});
        orders.push(json_output(
            host.node
                .run(&trader, "offer", offer.to_string().as_bytes(), None)
                .await
                .unwrap(),
        ));
    }
    assert_eq!(orders[0]["side"], "ask");
    assert_eq!(orders[2]["side"], "bid");

    let clearing = json_output(
        host.node
            .run(
                &trader,
                "clear",
                json!({"slot": slot, "orders": orders})
                    .to_string()
                    .as_bytes(),
                None,
            )
            .await
            .unwrap(),
    );
    // ev-garage (bid 24) buys 4000 Wh from solar-roof (ask 11) and 1000 Wh from battery-wall
    // (ask 16); heat-pump's bid of 13 does not cover battery-wall's 16.
    assert_eq!(clearing["volume_wh"], 5_000, "{clearing}");
    assert_eq!(clearing["price_cents_per_kwh"], 20, "midpoint of 24 and 16");
    assert_eq!(clearing["trades"].as_array().unwrap().len(), 2);

    // The trader remembers the clearing price: a seller no longer asks below it.
    let offer = json!({"household": "solar-roof", "net_wh": 1_000, "reserve_cents_per_kwh": 11, "slot": slot});
    let order = json_output(
        host.node
            .run(&trader, "offer", offer.to_string().as_bytes(), None)
            .await
            .unwrap(),
    );
    assert_eq!(order["price_cents_per_kwh"], 20);
}

#[tokio::test]
async fn bad_requests_are_agent_errors_not_failures_of_the_host() {
    let host = TestHost::new().await;
    let trader = host.publish(examples::ENERGY_TRADER).await.hash().to_hex();
    let execution = host
        .node
        .run(&trader, "clear", b"not json", None)
        .await
        .unwrap();
    let Outcome::AgentError { error, message } = &execution.outcome else {
        panic!("{}", execution.outcome);
    };
    assert_eq!(error, "bad-request");
    assert!(message.contains("payload"), "{message}");
    let execution = host
        .node
        .run(&trader, "sell-the-grid", b"{}", None)
        .await
        .unwrap();
    assert!(matches!(execution.outcome, Outcome::AgentError { .. }));
}

#[tokio::test]
async fn call_depth_is_bounded() {
    let host = TestHost::new().await;
    let hostile = host.publish(HOSTILE).await.hash().to_hex();
    let execution = host
        .node
        .run(&hostile, "recurse", hostile.as_bytes(), None)
        .await
        .unwrap();
    let text = String::from_utf8(execution.into_output().unwrap()).unwrap();
    // Depth 0 calls 1, ..., 3 calls 4; depth 4 is refused.
    assert!(text.starts_with("4 "), "{text}");
    assert!(text.contains("call depth limit of 4"), "{text}");
}

#[tokio::test]
async fn a_callee_cannot_spend_more_fuel_than_its_caller_had() {
    let host = TestHost::new().await;
    let hostile = host.publish(HOSTILE).await.hash().to_hex();
    let budget = 20_000_000;
    let execution = host
        .node
        .run(&hostile, "call-loop", hostile.as_bytes(), Some(budget))
        .await
        .unwrap();
    assert!(execution.fuel_used <= budget);
    let receipt = execution.receipt.body().clone();
    assert_eq!(receipt.nested.len(), 1);
    let callee = host
        .node
        .registry()
        .receipt(&receipt.nested[0])
        .unwrap()
        .unwrap();
    let callee = callee.body();
    assert_eq!(callee.outcome, Outcome::FuelExhausted);
    assert!(
        callee.fuel_limit < budget,
        "the callee's budget is what the caller had left"
    );
    assert_eq!(callee.fuel_used, callee.fuel_limit);
    // The callee took everything the caller had left, so the caller ran out too.
    assert_eq!(execution.outcome, Outcome::FuelExhausted);
    assert_eq!(execution.fuel_used, budget);
}
