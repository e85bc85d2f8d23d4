//! The HTTP API against a real server on an ephemeral loopback port: every endpoint, and the
//! error paths.

use agora_host::api::{ApiConfig, ApiServer};
use agora_host::{PublishOptions, examples};
use agora_registry::{SecretKey, SignedManifest};
use agora_tests::{TestHost, raw_http, sign_feedback, sign_request};
use serde_json::Value;

const PAYLOAD: &[u8] = br#"{"trip": {"distance_m": 5000, "duration_s": 600}}"#;

/// One HTTP/1.1 exchange with a JSON content type; returns the status and the body.
async fn http(server: &ApiServer, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let request = raw_http::request(method, path, "Content-Type: application/json\r\n", body);
    let answer = raw_http::exchange(server.addr(), &request).await;
    (answer.status, answer.body)
}

async fn json(server: &ApiServer, path: &str) -> (u16, Value) {
    let (status, body) = http(server, "GET", path, b"").await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Scores are recomputed in the background after evidence arrives: polls `path` until `ready`
/// holds of its answer, for at most ten seconds.
async fn eventually(server: &ApiServer, path: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, body) = json(server, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        if ready(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never became ready: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn error_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body).unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn every_endpoint_and_its_errors() {
    let host = TestHost::new().await;
    let options = PublishOptions {
        price_per_mfuel: 1_000,
        ..PublishOptions::default()
    };
    let driver = host
        .node
        .publish(examples::RIDE_DRIVER, options)
        .await
        .unwrap()
        .manifest;
    let caller = SecretKey::generate();
    let request = sign_request(
        &caller,
        host.node.public_key(),
        driver.hash(),
        "quote",
        PAYLOAD,
    );
    let receipt = host
        .node
        .run_request(&request, "quote", PAYLOAD)
        .await
        .unwrap()
        .receipt;
    // The operator vouches for this caller: its ratings count.
    let config = ApiConfig {
        extra_anchors: vec![caller.public()],
        ..ApiConfig::default()
    };
    let server = ApiServer::start(host.node.clone(), config).await.unwrap();
    let manifest = driver.hash().to_hex();

    assert_eq!(
        http(&server, "GET", "/healthz", b"").await,
        (200, b"ok".to_vec())
    );

    // Listing and search.
    let (status, list) = json(&server, "/v1/agents").await;
    assert_eq!(status, 200);
    assert_eq!(list["agents"][0]["manifest"], manifest);
    assert_eq!(
        json(&server, "/v1/agents?action=quote").await.1["agents"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        json(&server, "/v1/agents?name=energy").await.1["agents"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let by_publisher = format!("/v1/agents?publisher={}", host.node.public_key());
    assert_eq!(
        json(&server, &by_publisher).await.1["agents"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (status, body) = http(&server, "GET", "/v1/agents?publisher=nobody", b"").await;
    assert_eq!(status, 400);
    assert!(error_of(&body).contains("is not a key: expected 64 hex digits"));

    // One agent: the signed manifest, which the client can verify.
    let (status, body) = http(&server, "GET", &format!("/v1/agents/{manifest}"), b"").await;
    assert_eq!(status, 200);
    assert_eq!(
        SignedManifest::from_bytes(&body).unwrap().hash(),
        driver.hash()
    );
    let unknown = agora_registry::Hash::of(b"nothing").to_hex();
    assert_eq!(
        http(&server, "GET", &format!("/v1/agents/{unknown}"), b"")
            .await
            .0,
        404
    );
    let (status, body) = http(&server, "GET", "/v1/agents/not-a-hash", b"").await;
    assert_eq!(status, 400);
    assert!(error_of(&body).contains("not a BLAKE3 hash"));

    // Reputation and receipts.
    let (status, reputation) = json(&server, &format!("/v1/agents/{manifest}/reputation")).await;
    assert_eq!(status, 200);
    assert_eq!(reputation["evidence"], 0, "no feedback yet");
    let anchors = reputation["anchors"].as_array().unwrap();
    assert!(anchors.contains(&Value::from(host.node.public_key().to_hex())));
    assert!(anchors.contains(&Value::from(caller.public().to_hex())));
    let (status, page) = json(&server, &format!("/v1/agents/{manifest}/receipts?limit=1")).await;
    assert_eq!(status, 200);
    assert_eq!(page["receipts"].as_array().unwrap().len(), 1);
    assert_eq!(
        page["receipts"][0]["body"]["request"],
        request.hash().to_hex()
    );
    // The caller's signed request comes with its receipt, in its exact signed bytes, so the
    // client can check who asked.
    let (_, raw) = http(
        &server,
        "GET",
        &format!("/v1/agents/{manifest}/receipts?limit=1"),
        b"",
    )
    .await;
    #[derive(serde::Deserialize)]
    struct Page<'a> {
        #[serde(borrow)]
        requests: Vec<&'a serde_json::value::RawValue>,
    }
    let served: Page = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        agora_registry::SignedRequest::from_bytes(served.requests[0].get().as_bytes())
            .unwrap()
            .hash(),
        request.hash()
    );
    let next = page["next"].as_str().expect("a cursor after a full page");
    let (status, page) = json(
        &server,
        &format!("/v1/agents/{manifest}/receipts?limit=1&cursor={next}"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(page["receipts"].as_array().unwrap().is_empty());
    assert_eq!(page["next"], Value::Null);
    let (status, body) = http(
        &server,
        "GET",
        &format!("/v1/agents/{manifest}/receipts?cursor=yesterday"),
        b"",
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        error_of(&body).contains("not a cursor"),
        "{}",
        error_of(&body)
    );
    assert_eq!(
        http(
            &server,
            "GET",
            &format!("/v1/agents/{unknown}/receipts"),
            b""
        )
        .await
        .0,
        404
    );

    // Host and publisher records.
    let me = host.node.public_key().to_hex();
    let (status, record) = json(&server, &format!("/v1/hosts/{me}")).await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["receipts"], 1);
    assert_eq!(record["head"]["seq"], 0);
    assert_eq!(record["head"]["receipt"], receipt.hash().to_hex());
    assert_eq!(record["forks"].as_array().unwrap().len(), 0);
    assert!(record["trust"].as_f64().unwrap() > 0.0, "an anchor");
    let stranger_key = SecretKey::generate().public().to_hex();
    assert_eq!(
        http(&server, "GET", &format!("/v1/hosts/{stranger_key}"), b"")
            .await
            .0,
        404
    );
    let (status, body) = http(&server, "GET", "/v1/hosts/42", b"").await;
    assert_eq!(status, 400);
    assert!(error_of(&body).contains("is not a key: expected 64 hex digits"));
    let (status, record) = json(&server, &format!("/v1/publishers/{me}")).await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["agents"][0]["manifest"], manifest);
    assert_eq!(record["reputation"]["evidence"], 0);
    assert_eq!(
        http(
            &server,
            "GET",
            &format!("/v1/publishers/{stranger_key}"),
            b""
        )
        .await
        .0,
        404
    );

    // Feedback: accepted from the caller once, refused from others, naming the fault.
    let rating = sign_feedback(&caller, &receipt, 90);
    assert_eq!(
        http(&server, "POST", "/v1/feedback", rating.as_bytes())
            .await
            .0,
        201
    );
    assert_eq!(
        http(&server, "POST", "/v1/feedback", rating.as_bytes())
            .await
            .0,
        200
    );
    let again = sign_feedback(&caller, &receipt, 10);
    assert_eq!(
        http(&server, "POST", "/v1/feedback", again.as_bytes())
            .await
            .0,
        409
    );
    let stranger = sign_feedback(&SecretKey::generate(), &receipt, 100);
    let (status, body) = http(&server, "POST", "/v1/feedback", stranger.as_bytes()).await;
    assert_eq!(status, 422);
    assert!(error_of(&body).contains("is not the caller"));
    let mut forged = rating.as_bytes().to_vec();
    let at = forged.len() / 2;
    forged[at] ^= 1;
    assert_eq!(http(&server, "POST", "/v1/feedback", &forged).await.0, 400);
    let reputation = eventually(&server, &format!("/v1/agents/{manifest}/reputation"), |r| {
        r["evidence"] == 1
    })
    .await;
    assert!(
        reputation["quality"].as_f64().unwrap() > 0.5,
        "rated 90: {reputation}"
    );
    let publisher = eventually(&server, &format!("/v1/publishers/{me}"), |r| {
        r["reputation"]["evidence"] == 1
    })
    .await;
    assert_eq!(publisher["agents"][0]["reputation"]["evidence"], 1);

    // Receipts from other hosts: verified, checked against their manifest (kept until it
    // arrives), deduplicated, forgeries refused.
    let other = TestHost::new().await;
    let trader = other.publish(examples::ENERGY_TRADER).await;
    let offer = br#"{"household": "h", "net_wh": 10, "reserve_cents_per_kwh": 9, "slot": "s"}"#;
    let foreign = other
        .node
        .run("energy-trader", "offer", offer, None)
        .await
        .unwrap()
        .receipt;
    assert_eq!(
        http(&server, "POST", "/v1/receipts", foreign.as_bytes())
            .await
            .0,
        202,
        "its manifest is not here yet"
    );
    host.node.registry().insert_manifest(&trader).unwrap();
    assert!(
        host.node
            .registry()
            .receipt(&foreign.hash())
            .unwrap()
            .is_some()
    );
    let inflated = {
        let mut body = foreign.body().clone();
        body.charge += 1;
        body.seq = 1;
        body.prev = Some(foreign.hash());
        let key = agora_registry::SecretKey::load(&other.node.data_dir().key_path()).unwrap();
        agora_registry::Signed::sign(body, &key).unwrap()
    };
    let (status, body) = http(&server, "POST", "/v1/receipts", inflated.as_bytes()).await;
    assert_eq!(status, 422);
    assert!(error_of(&body).contains("charge"), "{}", error_of(&body));
    let foreign = other
        .node
        .run("energy-trader", "offer", offer, None)
        .await
        .unwrap()
        .receipt;
    let message = agora_registry::ReceiptMessage::encode(&foreign, None);
    assert_eq!(http(&server, "POST", "/v1/receipts", &message).await.0, 201);
    assert_eq!(
        http(&server, "POST", "/v1/receipts", foreign.as_bytes())
            .await
            .0,
        200
    );
    let tampered = String::from_utf8(foreign.as_bytes().to_vec())
        .unwrap()
        .replacen("\"seq\":1", "\"seq\":7", 1);
    let (status, body) = http(&server, "POST", "/v1/receipts", tampered.as_bytes()).await;
    assert_eq!(status, 400);
    assert!(
        error_of(&body).contains("receipt signature does not verify"),
        "{}",
        error_of(&body)
    );
    assert_eq!(http(&server, "POST", "/v1/receipts", b"{}").await.0, 400);

    // Invoking over HTTP with a caller-signed request.
    let signed = sign_request(
        &caller,
        host.node.public_key(),
        driver.hash(),
        "quote",
        PAYLOAD,
    );
    let invoke = serde_json::json!({
        "request": String::from_utf8(signed.as_bytes().to_vec()).unwrap(),
        "action": "quote",
        "payload": String::from_utf8(PAYLOAD.to_vec()).unwrap(),
    })
    .to_string();
    let (status, body) = http(&server, "POST", "/v1/invoke", invoke.as_bytes()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["outcome"], "ok");
    assert_eq!(answer["output"], r#"{"fare_cents":1150}"#);
    let invoked =
        agora_registry::SignedReceipt::from_bytes(answer["receipt"].as_str().unwrap().as_bytes())
            .unwrap();
    assert_eq!(invoked.body().request, Some(signed.hash()));
    let (status, body) = http(&server, "POST", "/v1/invoke", invoke.as_bytes()).await;
    assert_eq!(status, 409, "a replay");
    assert!(error_of(&body).contains("replayed"));
    let elsewhere = sign_request(
        &caller,
        SecretKey::generate().public(),
        driver.hash(),
        "quote",
        PAYLOAD,
    );
    let misaddressed = serde_json::json!({
        "request": String::from_utf8(elsewhere.as_bytes().to_vec()).unwrap(),
        "action": "quote",
        "payload": String::from_utf8(PAYLOAD.to_vec()).unwrap(),
    })
    .to_string();
    assert_eq!(
        http(&server, "POST", "/v1/invoke", misaddressed.as_bytes())
            .await
            .0,
        422
    );
    let fresh = sign_request(
        &caller,
        host.node.public_key(),
        driver.hash(),
        "quote",
        PAYLOAD,
    );
    let altered_payload = serde_json::json!({
        "request": String::from_utf8(fresh.as_bytes().to_vec()).unwrap(),
        "action": "quote",
        "payload": "{}",
    })
    .to_string();
    let (status, body) = http(&server, "POST", "/v1/invoke", altered_payload.as_bytes()).await;
    assert_eq!(status, 400);
    assert!(error_of(&body).contains("do not match the input hash"));
    assert_eq!(
        http(&server, "POST", "/v1/invoke", b"{\"request\": 1}")
            .await
            .0,
        400
    );

    // Limits and unknown paths.
    let huge = vec![b'x'; 300 << 10];
    assert_eq!(http(&server, "POST", "/v1/receipts", &huge).await.0, 413);
    let (status, body) = http(&server, "GET", "/v2/anything", b"").await;
    assert_eq!(status, 404);
    assert_eq!(error_of(&body), "no such endpoint");

    // The OpenAPI document is served, is the one in the repository, and every path it
    // documents is routed (with real values in place of its parameters).
    let (status, document) = json(&server, "/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(
        document,
        serde_json::from_str::<Value>(agora_host::api::OPENAPI).unwrap()
    );
    for (path, operations) in document["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{hash}", &manifest)
            .replace("{key}", &host.node.public_key().to_hex());
        for method in operations.as_object().unwrap().keys() {
            let (status, body) = http(&server, &method.to_uppercase(), &concrete, b"{}").await;
            let unrouted = status == 405
                || (status == 404 && String::from_utf8_lossy(&body).contains("no such endpoint"));
            assert!(!unrouted, "{method} {path} is documented but not served");
        }
    }

    let (status, metrics) = http(&server, "GET", "/metrics", b"").await;
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("agora_feedback_accepted_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("agora_receipts_accepted_total 1"),
        "{metrics}"
    );
    // The agent published above was compiled once and is loaded, from a pool.
    for line in [
        "agora_components_compiled_total 1\n",
        "agora_agents_loaded 1\n",
        "agora_instance_pool_slots 1000\n",
        "agora_compiled_cache_rejected_total 0\n",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn agents_are_listed_in_pages_best_first_without_repeats() {
    let host = TestHost::new().await;
    for (component, name) in [
        (examples::RIDE_DRIVER, "driver-one"),
        (examples::RIDE_DRIVER, "driver-two"),
        (examples::ENERGY_TRADER, "trader"),
    ] {
        host.publish_as(component, name).await;
    }
    let server = ApiServer::start(host.node.clone(), ApiConfig::default())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut path = "/v1/agents?limit=2".to_owned();
    loop {
        let (status, page) = json(&server, &path).await;
        assert_eq!(status, 200, "{page}");
        let agents = page["agents"].as_array().unwrap();
        assert!(agents.len() <= 2);
        seen.extend(
            agents
                .iter()
                .map(|a| a["name"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/agents?limit=2&cursor={next}"),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, ["driver-one", "driver-two", "trader"]);
    let (status, page) = json(&server, "/v1/agents?name=driver&action=quote").await;
    assert_eq!(status, 200);
    assert_eq!(page["agents"].as_array().unwrap().len(), 2);
    assert_eq!(
        json(&server, "/v1/agents?action=offer").await.1["agents"][0]["name"],
        "trader"
    );
    let (status, body) = http(&server, "GET", "/v1/agents?cursor=soon", b"").await;
    assert_eq!(status, 400);
    assert!(error_of(&body).contains("not a cursor"));
    server.shutdown().await;
}

#[tokio::test]
async fn a_stranger_posting_receipts_stores_at_most_its_quota_and_the_rest_are_refused_and_counted()
{
    let limits = agora_host::Limits {
        strangers: agora_registry::StrangerQuotas {
            receipts_per_key: 20,
            ..Default::default()
        },
        ..Default::default()
    };
    let host = TestHost::with_limits(limits).await;
    let server = ApiServer::start(host.node.clone(), ApiConfig::default())
        .await
        .unwrap();
    let stranger = TestHost::new().await;
    let trader = stranger.publish(examples::ENERGY_TRADER).await;
    host.node.registry().insert_manifest(&trader).unwrap();
    let offer = br#"{"household": "h", "net_wh": 10, "reserve_cents_per_kwh": 9, "slot": "s"}"#;
    let mut statuses = Vec::new();
    let mut last_error = String::new();
    for _ in 0..25 {
        let receipt = stranger
            .node
            .run("energy-trader", "offer", offer, None)
            .await
            .unwrap()
            .receipt;
        let (status, body) = http(&server, "POST", "/v1/receipts", receipt.as_bytes()).await;
        if status != 201 {
            last_error = error_of(&body);
        }
        statuses.push(status);
    }
    assert_eq!(statuses[..20], [201; 20]);
    assert_eq!(statuses[20..], [429; 5]);
    assert!(
        last_error.contains("20 receipts from a host this host does not trust"),
        "{last_error}"
    );
    let (_, metrics) = http(&server, "GET", "/metrics", b"").await;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("agora_refused_over_quota_total 5\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("agora_stranger_receipts 20\n"),
        "{metrics}"
    );
    assert_eq!(
        host.node
            .registry()
            .receipt_chain(&stranger.node.public_key())
            .unwrap()
            .len(),
        20
    );
}
