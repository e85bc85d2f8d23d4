//! Agents written in Python (componentize-py) and JavaScript (componentize-js) publish and run
//! like the Rust ones, and speak the same JSON with the same results: a marketplace does not
//! care what an agent was written in.

use agora_host::{Limits, examples};
use agora_tests::{TestHost, interpreted_agent};
use serde_json::{Value, json};

async fn run(host: &TestHost, agent: &str, action: &str, payload: &Value) -> Value {
    let execution = host
        .node
        .run(agent, action, payload.to_string().as_bytes(), None)
        .await
        .expect("runs");
    let output = execution.into_output().expect("an answer");
    serde_json::from_slice(&output).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_driver_quotes_and_negotiates_like_the_rust_one() {
    let component = interpreted_agent("js", "ride-driver-js");
    assert!(component.len() > 8 << 20, "embeds a JavaScript engine");
    let host = TestHost::new().await;
    let js = host.publish(&component).await;
    assert_eq!(js.body().name, "ride-driver-js");
    let js = js.hash().to_hex();
    let rust = host.publish(examples::RIDE_DRIVER).await.hash().to_hex();

    let trips = [
        json!({"distance_m": 12_500, "duration_s": 1_500}),
        json!({"distance_m": 12_500, "duration_s": 1_500, "demand_pct": 900}),
        json!({"distance_m": 300, "duration_s": 60, "demand_pct": 40}),
    ];
    for trip in &trips {
        let request = json!({"trip": trip});
        assert_eq!(
            run(&host, &js, "quote", &request).await,
            run(&host, &rust, "quote", &request).await,
            "{trip}"
        );
        for round in 0..5 {
            let offer = json!({"trip": trip, "offer_cents": 2_200, "round": round});
            assert_eq!(
                run(&host, &js, "counter", &offer).await,
                run(&host, &rust, "counter", &offer).await,
                "{offer}"
            );
        }
    }

    // Its pricing rules live in its host memory, like the Rust driver's.
    let rules = json!({"base_cents": 300, "per_km_cents": 100, "per_min_cents": 20,
                       "minimum_cents": 500, "max_surge_pct": 200, "max_discount_pct": 10});
    assert_eq!(run(&host, &js, "configure", &rules).await, rules);
    let quote = run(&host, &js, "quote", &json!({"trip": trips[0]})).await;
    assert_eq!(quote, json!({"fare_cents": 300 + 1_250 + 500}));

    let refused = host
        .node
        .run(
            &js,
            "quote",
            br#"{"trip":{"distance_m":1,"duration_s":1,"tip":5}}"#,
            None,
        )
        .await
        .expect("runs");
    assert_eq!(refused.outcome.name(), "agent-error", "{}", refused.outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_energy_trader_clears_the_same_auction_as_the_rust_one() {
    let component = interpreted_agent("py", "energy-trader-py");
    assert!(
        component.len() > 16 << 20,
        "embeds a Python interpreter, past the old 16 MiB cap"
    );
    let host = TestHost::new().await;
    let py = host.publish(&component).await.hash().to_hex();
    let rust = host.publish(examples::ENERGY_TRADER).await.hash().to_hex();

    let slot = "2026-11-23T18:00";
    let mut orders = Vec::new();
    for (household, net_wh, reserve) in [
        ("solar-house", 3_000, 12),
        ("flat-4b", -1_200, 20),
        ("bakery", -2_500, 15),
        ("wind-farm", 800, 9),
        ("école", -400, 30),
    ] {
        let offer = json!({"household": household, "net_wh": net_wh,
                           "reserve_cents_per_kwh": reserve, "slot": slot});
        let order = run(&host, &py, "offer", &offer).await;
        assert_eq!(order, run(&host, &rust, "offer", &offer).await, "{offer}");
        orders.push(order);
    }
    let auction = json!({"slot": slot, "orders": orders});
    let python = host
        .node
        .run(&py, "clear", auction.to_string().as_bytes(), None)
        .await
        .unwrap();
    let rust_clearing = host
        .node
        .run(&rust, "clear", auction.to_string().as_bytes(), None)
        .await
        .unwrap();
    assert_eq!(
        python.receipt.body().output_hash,
        rust_clearing.receipt.body().output_hash,
        "byte for byte the same clearing: {}",
        String::from_utf8_lossy(python.output.as_deref().unwrap_or_default())
    );
    assert!(
        python.fuel_used > rust_clearing.fuel_used,
        "an interpreter costs more fuel"
    );

    let duplicate = json!({"slot": slot, "orders": [orders[0], orders[0]]});
    let refused = host
        .node
        .run(&py, "clear", duplicate.to_string().as_bytes(), None)
        .await
        .unwrap();
    assert_eq!(refused.outcome.name(), "agent-error", "{}", refused.outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_over_the_size_cap_is_refused_before_it_is_compiled() {
    let component = interpreted_agent("py", "energy-trader-py");
    let host = TestHost::with_limits(Limits {
        max_component_bytes: 16 << 20,
        ..Limits::default()
    })
    .await;
    let error = host
        .node
        .publish(&component, Default::default())
        .await
        .expect_err("too large");
    assert!(error.to_string().contains("at most 16777216"), "{error}");
    assert_eq!(host.node.sandbox().stats().compiles, 0);
}
