//! Language models the host holds (`agora:agent/model`), through a real host running the
//! `model-user` guest against a real HTTP server on loopback that speaks the OpenAI wire format.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_host::model::{ModelConfig, OfferedModel, RemoteBackend};
use agora_host::{DataDir, Limits, Node, NodeConfig, PublishOptions};
use agora_registry::{HostCall, ModelAnswer, ModelDeclaration, Transcript, rules};
use agora_tests::MODEL_USER;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

const KEY: &str = "sk-test-0123456789abcdef";

/// One request the server got: its `Authorization` header and its body.
type Request = (Option<String>, Value);

/// What the server saw, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Request>>>);

/// An OpenAI-compatible server. Model `busy` answers 429, `slow` answers after 2 s; any other
/// model echoes the last message's first words: as many as `max_tokens` allows, up to 4, one
/// token per word, the prompt counted as one token per word of every message.
fn openai_app() -> (axum::Router, Seen) {
    async fn complete(
        State(seen): State<Seen>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> (StatusCode, Json<Value>) {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        seen.0.lock().unwrap().push((auth, body.clone()));
        match body["model"].as_str() {
            Some("busy") => return (StatusCode::TOO_MANY_REQUESTS, Json(json!({}))),
            Some("slow") => tokio::time::sleep(Duration::from_secs(2)).await,
            _ => {}
        }
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        let words = |m: &Value| -> Vec<String> {
            m["content"]
                .as_str()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        let prompt_tokens: usize = messages.iter().map(|m| words(m).len()).sum();
        let last = messages.last().map(words).unwrap_or_default();
        let max = body["max_tokens"].as_u64().unwrap_or(16) as usize;
        let generated: Vec<String> = last.into_iter().take(max.min(4)).collect();
        let finish = if max <= generated.len() {
            "length"
        } else {
            "stop"
        };
        let answer = json!({
            "choices": [{"message": {"role": "assistant", "content": generated.join(" ")},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": generated.len()},
        });
        (StatusCode::OK, Json(answer))
    }
    async fn embed(State(seen): State<Seen>, Json(body): Json<Value>) -> Json<Value> {
        seen.0.lock().unwrap().push((None, body.clone()));
        let texts = body["input"].as_array().cloned().unwrap_or_default();
        let data: Vec<Value> = texts
            .iter()
            .map(|t| json!({"embedding": [t.as_str().unwrap_or("").len() as f32, 0.25]}))
            .collect();
        Json(json!({"data": data, "usage": {"prompt_tokens": texts.len()}}))
    }
    let seen = Seen::default();
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(complete))
        .route("/v1/embeddings", axum::routing::post(embed))
        .with_state(seen.clone());
    (app, seen)
}

/// [`openai_app`] over plain HTTP on loopback.
async fn serve_openai() -> (SocketAddr, Seen) {
    let (app, seen) = openai_app();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// A host offering `echo` (at 1,000,000 per million tokens: one unit a token), `busy`, `slow`
/// and `spare` from the server at `addr` with the key, model requests timed out after 500 ms.
async fn thinking_host(addr: SocketAddr, limits: Limits) -> (Node, tempfile::TempDir) {
    let backend = Arc::new(
        RemoteBackend::new(&format!("http://{addr}"))
            .unwrap()
            .with_key(KEY),
    );
    let models = ModelConfig::default()
        .timeout(Duration::from_millis(500))
        .offer(OfferedModel::new("echo", backend.clone()).price_per_mtoken(1_000_000))
        .offer(OfferedModel::new("busy", backend.clone()))
        .offer(OfferedModel::new("slow", backend.clone()))
        .offer(OfferedModel::new("spare", backend));
    open_host(models, limits).await
}

async fn open_host(models: ModelConfig, limits: Limits) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = DataDir::new(dir.path());
    data_dir.keygen().unwrap();
    let node = Node::open(NodeConfig::new(data_dir).limits(limits).models(models))
        .await
        .unwrap();
    (node, dir)
}

fn declare(models: &[(&str, u32)]) -> PublishOptions {
    PublishOptions {
        models: models
            .iter()
            .map(|(name, tokens)| ModelDeclaration {
                name: (*name).into(),
                max_tokens_per_call: *tokens,
            })
            .collect(),
        ..PublishOptions::default()
    }
}

/// Publishes `model-user` declaring `models`; its manifest hash, by which to run it.
async fn publish_declaring(node: &Node, models: &[(&str, u32)]) -> String {
    let published = node.publish(MODEL_USER, declare(models)).await.unwrap();
    published.manifest.hash().to_hex()
}

async fn ask(node: &Node, agent: &str, payload: Value) -> (Value, agora_registry::SignedReceipt) {
    let execution = node
        .run(agent, "ask", payload.to_string().as_bytes(), None)
        .await
        .unwrap();
    let receipt = execution.receipt.clone();
    let output = execution.into_output().unwrap();
    (serde_json::from_slice(&output).unwrap(), receipt)
}

fn transcript_of(node: &Node, receipt: &agora_registry::SignedReceipt) -> Vec<u8> {
    let reference = receipt.body().transcript.expect("a transcript");
    node.registry()
        .call_data(&reference.hash)
        .unwrap()
        .expect("the transcript is kept")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thinking_agent_that_declares_no_model_is_refused_at_publish() {
    let (addr, _) = serve_openai().await;
    let (node, _dir) = thinking_host(addr, Limits::default()).await;
    let refused = node
        .publish(MODEL_USER, PublishOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(refused, agora_host::PublishError::UndeclaredModels),
        "{refused}"
    );
    let published = node.publish(MODEL_USER, declare(&[("echo", 100)])).await;
    let manifest = published.unwrap().manifest;
    assert!(
        (manifest.body().capabilities.iter()).any(|c| c == "agora:agent/model"),
        "{:?}",
        manifest.body().capabilities
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_sends_its_key_and_the_guest_transcript_and_receipt_never_see_it() {
    let (addr, seen) = serve_openai().await;
    let (node, _dir) = thinking_host(addr, Limits::default()).await;
    let agent = node
        .publish(MODEL_USER, declare(&[("echo", 100)]))
        .await
        .unwrap()
        .manifest;
    let (answers, receipt) = ask(
        &node,
        &agent.hash().to_hex(),
        json!({"model": "echo", "prompt": "central station to the airport", "max_tokens": 8}),
    )
    .await;
    assert_eq!(answers[0]["text"], "central station to the");
    assert_eq!(answers[0]["prompt_tokens"], 7);
    assert_eq!(answers[0]["generated_tokens"], 4);

    let seen = seen.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0.as_deref(), Some(format!("Bearer {KEY}").as_str()));
    assert_eq!(seen[0].1["max_tokens"], 8);

    let transcript = transcript_of(&node, &receipt);
    for (what, bytes) in [
        ("output", answers.to_string().into_bytes()),
        ("transcript", transcript.clone()),
        ("receipt", receipt.as_bytes().to_vec()),
    ] {
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(KEY), "the {what} holds the key: {text}");
    }

    // Tokens are metered into the receipt and its charge, at the host's price of one a token.
    let body = receipt.body();
    assert_eq!(body.model_usage.len(), 1);
    let usage = &body.model_usage[0];
    assert_eq!(
        (
            usage.model.as_str(),
            usage.prompt_tokens,
            usage.generated_tokens,
            usage.charge
        ),
        ("echo", 7, 4, 11)
    );
    let fuel_charge = rules::charge_for(body.fuel_used, agent.body().price_per_mfuel);
    assert_eq!(body.charge, fuel_charge + 11);

    // The transcript records the exchange, so a re-execution replays it and agrees.
    let calls = Transcript::from_bytes(&transcript).unwrap().calls;
    assert!(
        matches!(&calls[..], [HostCall::Model { op, answer: ModelAnswer::Completion { .. }, .. }] if op == "complete"),
        "{calls:?}"
    );
    let (input, kept) = (
        node.registry()
            .call_data(&body.input_hash)
            .unwrap()
            .unwrap(),
        transcript,
    );
    let again = node
        .reexecute(&receipt, MODEL_USER, &input, &kept)
        .await
        .unwrap();
    assert_eq!(again.verdict, agora_host::Verdict::Matches);

    // A host that signs for more tokens than its model answered is caught by the same replay.
    let key = agora_registry::SecretKey::load(&node.data_dir().key_path()).unwrap();
    let mut inflated = body.clone();
    inflated.model_usage[0].generated_tokens += 100;
    inflated.model_usage[0].charge += 100;
    inflated.charge += 100;
    let inflated = agora_registry::Signed::sign(inflated, &key).unwrap();
    let again = node
        .reexecute(&inflated, MODEL_USER, &input, &kept)
        .await
        .unwrap();
    assert_eq!(
        again.verdict,
        agora_host::Verdict::Differs {
            fields: vec!["model_usage"]
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_the_manifest_does_not_declare_is_not_offered_and_costs_nothing() {
    let (addr, seen) = serve_openai().await;
    let (node, _dir) = thinking_host(addr, Limits::default()).await;
    let agent = publish_declaring(&node, &[("echo", 100), ("elsewhere", 100)]).await;
    let listed = node
        .run(&agent, "models", b"{}", None)
        .await
        .unwrap()
        .into_output()
        .unwrap();
    let listed: Value = serde_json::from_slice(&listed).unwrap();
    // `spare` is offered but not declared, `elsewhere` declared but not offered.
    assert_eq!(
        listed,
        json!([{"name": "echo", "max_tokens_per_call": 100}])
    );

    for model in ["spare", "elsewhere"] {
        let (answers, receipt) =
            ask(&node, &agent, json!({"model": model, "prompt": "hello"})).await;
        assert_eq!(answers[0]["error"], "not-offered", "{model}: {answers}");
        assert!(receipt.body().model_usage.is_empty());
    }
    assert!(
        seen.0.lock().unwrap().is_empty(),
        "no request left the host"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spent_budget_gives_budget_exhausted_and_the_agent_carries_on() {
    let (addr, seen) = serve_openai().await;
    let (node, _dir) = thinking_host(addr, Limits::default()).await;
    let agent = publish_declaring(&node, &[("echo", 12)]).await;
    // Each request: 2 + 2 prompt tokens, 2 generated: 6, then 12, and the third is refused.
    let (answers, receipt) = ask(
        &node,
        &agent,
        json!({"model": "echo", "prompt": "a b", "max_tokens": 16, "times": 3}),
    )
    .await;
    assert_eq!(answers[0]["generated_tokens"], 2, "{answers}");
    assert_eq!(answers[1]["generated_tokens"], 2, "{answers}");
    assert_eq!(answers[2]["error"], "budget-exhausted", "{answers}");
    // The second request could spend at most what was left of the budget.
    let seen = seen.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].1["max_tokens"], 12);
    assert_eq!(seen[1].1["max_tokens"], 6);
    assert_eq!(receipt.body().model_usage[0].prompt_tokens, 8);
    assert_eq!(receipt.body().model_usage[0].generated_tokens, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_or_silent_backend_is_unavailable_and_not_charged() {
    let (addr, _) = serve_openai().await;
    let (node, _dir) = thinking_host(addr, Limits::default()).await;
    let agent = publish_declaring(&node, &[("busy", 100), ("slow", 100)]).await;
    for model in ["busy", "slow"] {
        let (answers, receipt) = ask(&node, &agent, json!({"model": model, "prompt": "hi"})).await;
        assert_eq!(answers[0]["error"], "unavailable", "{model}: {answers}");
        assert!(
            answers[0]["message"]
                .as_str()
                .unwrap()
                .contains(match model {
                    "busy" => "429",
                    _ => "did not answer within",
                }),
            "{answers}"
        );
        assert!(receipt.body().model_usage.is_empty(), "{model}");
        let body = receipt.body();
        assert_eq!(body.charge, rules::charge_for(body.fuel_used, 0));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn time_spent_in_a_model_is_not_counted_against_the_agents_wall_clock() {
    let (addr, _) = serve_openai().await;
    // The model takes 2 s; the agent may run for 1 s; the host waits up to 3 s for a model.
    let limits = Limits {
        max_wall: Duration::from_secs(1),
        ..Limits::default()
    };
    let backend = Arc::new(RemoteBackend::new(&format!("http://{addr}")).unwrap());
    let models = ModelConfig::default()
        .timeout(Duration::from_secs(3))
        .offer(OfferedModel::new("slow", backend));
    let (node, _dir) = open_host(models, limits).await;
    let agent = publish_declaring(&node, &[("slow", 100)]).await;
    let (answers, receipt) = ask(&node, &agent, json!({"model": "slow", "prompt": "hi"})).await;
    assert_eq!(answers[0]["text"], "hi", "{answers}");
    assert!(receipt.body().outcome.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_come_back_exactly_and_count_their_tokens() {
    let (addr, _) = serve_openai().await;
    let (node, _dir) = thinking_host(addr, Limits::default()).await;
    let agent = publish_declaring(&node, &[("echo", 100)]).await;
    let execution = node
        .run(
            &agent,
            "embed",
            json!({"model": "echo", "texts": ["abc", "de"]})
                .to_string()
                .as_bytes(),
            None,
        )
        .await
        .unwrap();
    let receipt = execution.receipt.clone();
    let output: Value = serde_json::from_slice(&execution.into_output().unwrap()).unwrap();
    assert_eq!(output["vectors"], json!([[3.0, 0.25], [2.0, 0.25]]));
    assert_eq!(receipt.body().model_usage[0].prompt_tokens, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_that_keeps_asking_a_silent_model_is_cut_off_at_its_model_time() {
    let (addr, seen) = serve_openai().await;
    let backend = Arc::new(RemoteBackend::new(&format!("http://{addr}")).unwrap());
    let models = ModelConfig::default()
        .timeout(Duration::from_millis(300))
        .max_time_per_call(Duration::from_millis(700))
        .offer(OfferedModel::new("slow", backend));
    let (node, _dir) = open_host(models, Limits::default()).await;
    let agent = publish_declaring(&node, &[("slow", 100)]).await;
    let (answers, _) = ask(
        &node,
        &agent,
        json!({"model": "slow", "prompt": "hi", "times": 10}),
    )
    .await;
    let answers = answers.as_array().unwrap();
    assert!(
        answers.iter().all(|a| a["error"] == "unavailable"),
        "{answers:?}"
    );
    // 300 + 300 + 100 ms, then no more requests reach the server.
    assert_eq!(seen.0.lock().unwrap().len(), 3);
    assert!(
        answers[9]["message"]
            .as_str()
            .unwrap()
            .contains("may wait for models")
    );
}

/// A host offering `tiny`, the embedded model in `path`.
async fn embedded_host(path: &std::path::Path) -> (Node, tempfile::TempDir) {
    let backend = Arc::new(agora_host::model::EmbeddedBackend::load(path).unwrap());
    let models = ModelConfig::default().offer(OfferedModel::new("tiny", backend));
    open_host(models, Limits::default()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_embedded_model_answers_alike_on_two_hosts_and_its_receipt_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    agora_embedded_model::fixture::write_tiny_model(&path, 11).unwrap();
    let (first, _a) = embedded_host(&path).await;
    let (second, _b) = embedded_host(&path).await;
    let question = json!({"model": "tiny", "prompt": "to the airport by 6 pm", "max_tokens": 12});

    let mut answers = Vec::new();
    for node in [&first, &second] {
        let agent = publish_declaring(node, &[("tiny", 200)]).await;
        answers.push(ask(node, &agent, question.clone()).await);
    }
    let ((one, receipt), (two, _)) = (&answers[0], &answers[1]);
    assert!(one[0]["text"].is_string(), "{one}");
    assert_eq!(
        one, two,
        "greedy answers are computed alike, not only replayed"
    );
    let usage = &receipt.body().model_usage[0];
    assert_eq!(usage.model, "tiny");
    assert_eq!(
        usage.prompt_tokens,
        one[0]["prompt_tokens"].as_u64().unwrap()
    );

    let body = receipt.body();
    let input = first
        .registry()
        .call_data(&body.input_hash)
        .unwrap()
        .unwrap();
    let transcript = transcript_of(&first, receipt);
    let again = second
        .reexecute(receipt, MODEL_USER, &input, &transcript)
        .await
        .unwrap();
    assert_eq!(again.verdict, agora_host::Verdict::Matches);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_server_over_https_is_reached_only_with_a_certificate_the_host_trusts() {
    let (app, seen) = openai_app();
    let (addr, certificate) = crate::tls::serve(app).await;
    let url = format!("https://{addr}");
    let ask_echo = json!({"model": "echo", "prompt": "to the airport", "max_tokens": 8});
    let host_with = |backend: RemoteBackend| {
        let models = ModelConfig::default()
            .timeout(Duration::from_secs(5))
            .offer(OfferedModel::new("echo", Arc::new(backend.with_key(KEY))));
        open_host(models, Limits::default())
    };

    // Mozilla's roots do not vouch for a certificate made a moment ago: unavailable, uncharged.
    let (node, _dir) = host_with(RemoteBackend::new(&url).unwrap()).await;
    let agent = publish_declaring(&node, &[("echo", 100)]).await;
    let (answers, receipt) = ask(&node, &agent, ask_echo.clone()).await;
    assert_eq!(answers[0]["error"], "unavailable", "{answers}");
    assert!(
        answers[0]["message"].to_string().contains("certificate"),
        "{answers}"
    );
    assert!(receipt.body().model_usage.is_empty());
    assert!(seen.0.lock().unwrap().is_empty());

    // Trusting it as a root, the host reaches the server and sends its key over TLS.
    let trusted = RemoteBackend::new(&url)
        .unwrap()
        .with_trust_root(certificate)
        .unwrap();
    let (node, _dir) = host_with(trusted).await;
    let agent = publish_declaring(&node, &[("echo", 100)]).await;
    let (answers, _) = ask(&node, &agent, ask_echo).await;
    assert_eq!(answers[0]["text"], "to the airport", "{answers}");
    let seen = seen.0.lock().unwrap().clone();
    assert_eq!(seen[0].0.as_deref(), Some(format!("Bearer {KEY}").as_str()));
}
