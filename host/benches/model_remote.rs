//! What the remote model backend adds to a request: `RemoteBackend::complete` (build the
//! OpenAI request, send it with the key, bound and parse the answer) beside a direct HTTP
//! request of the same bytes to the same loopback server, one at a time, in the same run.
//!
//! `cargo bench -p agora-host --bench model_remote` (`-- --quick` for fewer requests).

use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_host::model::{Completion, ModelBackend, RemoteBackend};
use agora_registry::ChatMessage;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::json;

const ANSWER: &str = r#"{"choices":[{"message":{"role":"assistant","content":"Ben will take you to the airport for 22 euros."},"finish_reason":"stop"}],"usage":{"prompt_tokens":40,"completion_tokens":12}}"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let requests = if quick { 300 } else { 3_000 };
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|_: Bytes| async { ([("content-type", "application/json")], ANSWER) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let backend = Arc::new(RemoteBackend::new(&format!("http://{addr}"))?.with_key("sk-bench"));
    let messages = vec![
        ChatMessage {
            role: "system".into(),
            content: "You are a ride-share assistant.".into(),
        },
        ChatMessage {
            role: "user".into(),
            content: "Tell Sam that Ben takes them to the airport for 22 euros.".into(),
        },
    ];
    let body = json!({"model": "m", "messages": messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect::<Vec<_>>(),
                      "max_tokens": 48, "temperature": 0.0, "seed": 0, "stream": false})
    .to_string();

    let via_backend = || {
        let (backend, messages) = (backend.clone(), messages.clone());
        async move {
            let request = Completion {
                messages: &messages,
                max_tokens: 48,
                temperature_milli: 0,
                seed: 0,
            };
            backend
                .complete("m", request)
                .await
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
    };
    let direct = || {
        let body = body.clone();
        async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            let driver = tokio::spawn(connection);
            let request = hyper::Request::post("/v1/chat/completions")
                .header("host", addr.to_string())
                .header("content-type", "application/json")
                .header("authorization", "Bearer sk-bench")
                .body(Full::new(Bytes::from(body)))?;
            let response = sender.send_request(request).await?;
            let bytes = response.into_body().collect().await?.to_bytes();
            driver.abort();
            anyhow::ensure!(bytes.len() == ANSWER.len());
            anyhow::Ok(())
        }
    };
    // Alternating, so drift in the machine falls on both.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..requests {
        let started = Instant::now();
        via_backend().await?;
        ours.push(started.elapsed());
        let started = Instant::now();
        direct().await?;
        theirs.push(started.elapsed());
    }
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
    };
    let (o50, o99) = (pct(&mut ours, 0.5), pct(&mut ours, 0.99));
    let (t50, t99) = (pct(&mut theirs, 0.5), pct(&mut theirs, 0.99));
    println!("## remote model backend against a direct HTTP request, loopback, {requests} each");
    println!("| | backend | direct | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| p50 | {} µs | {} µs | {:.2}× |",
        o50.as_micros(),
        t50.as_micros(),
        o50.as_secs_f64() / t50.as_secs_f64()
    );
    println!(
        "| p99 | {} µs | {} µs | {:.2}× |",
        o99.as_micros(),
        t99.as_micros(),
        o99.as_secs_f64() / t99.as_secs_f64()
    );
    Ok(())
}
