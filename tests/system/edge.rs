//! The HTTP edge against a real server on a loopback port, spoken to byte by byte: what a
//! hostile or careless client gets, and that the host keeps serving everyone else meanwhile.

use std::time::{Duration, Instant};

use agora_host::api::{ApiConfig, ApiServer, HttpLimits};
use agora_host::{Limits, examples};
use agora_registry::{SecretKey, SignedManifest};
use agora_tests::raw_http::{self, Answer};
use agora_tests::{HOSTILE, TestHost, sign_request, sign_request_with_fuel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const QUOTE: &[u8] = br#"{"trip": {"distance_m": 5000, "duration_s": 600}}"#;

async fn serve(host: &TestHost, config: ApiConfig) -> ApiServer {
    ApiServer::start(host.node.clone(), config)
        .await
        .expect("start the api")
}

async fn serve_limited(host: &TestHost, limits: HttpLimits) -> ApiServer {
    serve(
        host,
        ApiConfig {
            limits,
            ..ApiConfig::default()
        },
    )
    .await
}

async fn get(server: &ApiServer, path: &str) -> Answer {
    raw_http::exchange(server.addr(), &raw_http::request("GET", path, "", b"")).await
}

/// The `POST /v1/invoke` body for `request`.
fn invoke_body(request: &agora_registry::SignedRequest, action: &str, payload: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "request": String::from_utf8_lossy(request.as_bytes()),
        "action": action,
        "payload": String::from_utf8_lossy(payload),
    }))
    .unwrap()
}

async fn invoke(
    server: &ApiServer,
    host: &TestHost,
    caller: &SecretKey,
    agent: &SignedManifest,
) -> Answer {
    let request = sign_request(caller, host.node.public_key(), agent.hash(), "quote", QUOTE);
    let body = invoke_body(&request, "quote", QUOTE);
    raw_http::exchange(server.addr(), &raw_http::post_json("/v1/invoke", &body)).await
}

/// Reads until the server closes the connection; returns how long that took.
async fn time_to_close(stream: &mut TcpStream, at_most: Duration) -> Duration {
    let started = Instant::now();
    let mut sink = Vec::new();
    tokio::time::timeout(at_most, stream.read_to_end(&mut sink))
        .await
        .expect("the server closed the connection in time")
        .ok();
    started.elapsed()
}

#[tokio::test]
async fn a_client_that_stalls_in_its_headers_or_idles_is_cut_at_the_header_timeout() {
    let host = TestHost::new().await;
    let timeout = Duration::from_millis(300);
    let server = serve_limited(
        &host,
        HttpLimits {
            header_read_timeout: timeout,
            ..HttpLimits::default()
        },
    )
    .await;

    let mut stalled = TcpStream::connect(server.addr()).await.unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: local")
        .await
        .unwrap();
    let took = time_to_close(&mut stalled, Duration::from_secs(5)).await;
    assert!(took >= timeout - Duration::from_millis(50), "{took:?}");
    assert!(took < timeout * 5, "a stalled client held on for {took:?}");

    // A kept-alive connection that sends nothing more is closed after the same time.
    let mut idle = TcpStream::connect(server.addr()).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 512];
    let read = idle.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..read]).starts_with("HTTP/1.1 200"));
    let took = time_to_close(&mut idle, Duration::from_secs(5)).await;
    assert!(
        took < timeout * 5,
        "an idle connection stayed open {took:?}"
    );
}

#[tokio::test]
async fn two_hundred_stalled_connections_do_not_slow_other_clients() {
    let host = TestHost::new().await;
    let server = serve_limited(
        &host,
        HttpLimits {
            header_read_timeout: Duration::from_secs(2),
            ..HttpLimits::default()
        },
    )
    .await;
    let mut stalled = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(server.addr()).await.unwrap();
        stream
            .write_all(b"POST /v1/receipts HTTP/1.1\r\n")
            .await
            .unwrap();
        stalled.push(stream);
    }
    let started = Instant::now();
    let answer = get(&server, "/healthz").await;
    assert_eq!(answer.status, 200);
    assert!(started.elapsed() < Duration::from_millis(500));
    // And every one of them is cut.
    for stream in &mut stalled {
        time_to_close(stream, Duration::from_secs(10)).await;
    }
}

#[tokio::test]
async fn past_the_connection_cap_a_new_connection_waits_until_one_closes() {
    let host = TestHost::new().await;
    let server = serve_limited(
        &host,
        HttpLimits {
            max_connections: 2,
            ..HttpLimits::default()
        },
    )
    .await;
    let holders = [
        TcpStream::connect(server.addr()).await.unwrap(),
        TcpStream::connect(server.addr()).await.unwrap(),
    ];
    let mut third = TcpStream::connect(server.addr()).await.unwrap();
    third
        .write_all(&raw_http::request("GET", "/healthz", "", b""))
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "the third connection was served over the cap"
    );
    drop(holders);
    let answer = tokio::time::timeout(Duration::from_secs(2), raw_http::read_answer(&mut third))
        .await
        .expect("served once a connection closed");
    assert_eq!(answer.status, 200);
}

/// Opens a POST that announces a body and sends only part of it: the request holds its
/// concurrency slot while its body trickles.
async fn slow_post(server: &ApiServer, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"rec"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

#[tokio::test]
async fn over_the_global_request_limit_any_endpoint_answers_503_at_once() {
    let host = TestHost::new().await;
    let server = serve_limited(
        &host,
        HttpLimits {
            max_concurrent_requests: 3,
            ..HttpLimits::default()
        },
    )
    .await;
    // Three slow requests on three different routes: the limit is one for all routes.
    let slow = [
        slow_post(&server, "/v1/receipts").await,
        slow_post(&server, "/v1/feedback").await,
        slow_post(&server, "/v1/invoke").await,
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let shed = get(&server, "/v1/agents").await;
    assert_eq!(shed.status, 503, "{}", shed.error());
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert!(shed.error().contains("as many requests as it allows"));
    // The slots come back when the slow clients go.
    drop(slow);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = get(&server, "/healthz").await;
        if answer.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "slots never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn over_the_invocation_limit_an_invocation_answers_503_while_reads_go_on() {
    let host = TestHost::with_limits(Limits {
        max_wall: Duration::from_millis(1500),
        ..Limits::default()
    })
    .await;
    let looping = host.publish(HOSTILE).await;
    let server = serve_limited(
        &host,
        HttpLimits {
            max_concurrent_invocations: 1,
            ..HttpLimits::default()
        },
    )
    .await;
    let caller = SecretKey::generate();
    let request = sign_request_with_fuel(
        &caller,
        host.node.public_key(),
        looping.hash(),
        "loop",
        b"",
        100_000_000_000,
    );
    let addr = server.addr();
    let running = tokio::spawn(async move {
        let body = invoke_body(&request, "loop", b"");
        raw_http::exchange(addr, &raw_http::post_json("/v1/invoke", &body)).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let refused = invoke(&server, &host, &SecretKey::generate(), &looping).await;
    assert_eq!(refused.status, 503, "{}", refused.error());
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(refused.header("retry-after").is_some());
    assert_eq!(get(&server, "/v1/agents").await.status, 200);
    let ran = running.await.unwrap();
    assert_eq!(ran.status, 200, "{}", ran.error());
    let ran: serde_json::Value = serde_json::from_slice(&ran.body).unwrap();
    assert_eq!(ran["outcome"], "timeout");
}

#[tokio::test]
async fn a_caller_over_its_rate_gets_429_with_when_to_retry_and_others_do_not() {
    let host = TestHost::new().await;
    let driver = host.publish(examples::RIDE_DRIVER).await;
    let server = serve_limited(
        &host,
        HttpLimits {
            invocations_per_caller_per_second: 1,
            invocation_burst_per_caller: 2,
            ..HttpLimits::default()
        },
    )
    .await;
    let eager = SecretKey::generate();
    for _ in 0..2 {
        let answer = invoke(&server, &host, &eager, &driver).await;
        assert_eq!(answer.status, 200, "{}", answer.error());
    }
    let limited = invoke(&server, &host, &eager, &driver).await;
    assert_eq!(limited.status, 429, "{}", limited.error());
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert!(limited.error().contains(&eager.public().to_string()));
    let other = invoke(&server, &host, &SecretKey::generate(), &driver).await;
    assert_eq!(other.status, 200, "{}", other.error());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(invoke(&server, &host, &eager, &driver).await.status, 200);
}

#[tokio::test]
async fn a_client_sending_records_over_its_rate_gets_429_before_they_are_checked() {
    let host = TestHost::new().await;
    let server = serve_limited(
        &host,
        HttpLimits {
            records_per_client_per_second: 1,
            record_burst_per_client: 2,
            ..HttpLimits::default()
        },
    )
    .await;
    let addr = server.addr();
    let post = |path: &'static str| {
        let request = raw_http::post_json(path, b"{\"not\": \"a record\"}");
        async move { raw_http::exchange(addr, &request).await }
    };
    // Receipts and feedback draw on one budget per client; within it, junk is checked (400).
    assert_eq!(post("/v1/receipts").await.status, 400);
    assert_eq!(post("/v1/feedback").await.status, 400);
    let limited = post("/v1/receipts").await;
    assert_eq!(limited.status, 429, "{}", limited.error());
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert!(limited.error().contains("127.0.0.1"), "{}", limited.error());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(post("/v1/feedback").await.status, 400);
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413_without_being_read() {
    let host = TestHost::new().await;
    let limit = 1024;
    let server = serve_limited(
        &host,
        HttpLimits {
            max_body_bytes: limit,
            ..HttpLimits::default()
        },
    )
    .await;
    // Announced as too large, and never sent: the answer comes without waiting for it.
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    let head = format!(
        "POST /v1/receipts HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        limit + 1
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(2), raw_http::read_answer(&mut stream))
        .await
        .expect("refused before the body was sent");
    assert_eq!(answer.status, 413);
    // Sent in chunks with no length announced: refused once the limit is passed.
    let mut chunked = b"POST /v1/feedback HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    chunked.extend_from_slice(format!("{:x}\r\n", limit + 1).as_bytes());
    chunked.extend(std::iter::repeat_n(b' ', limit + 1));
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_eq!(
        raw_http::exchange(server.addr(), &chunked).await.status,
        413
    );
}

#[tokio::test]
async fn oversized_or_too_many_headers_get_431() {
    let host = TestHost::new().await;
    let server = serve(&host, ApiConfig::default()).await;
    let huge = format!("X-Padding: {}\r\n", "a".repeat(20 << 10));
    let answer = raw_http::exchange(
        server.addr(),
        &raw_http::request("GET", "/healthz", &huge, b""),
    )
    .await;
    assert_eq!(answer.status, 431);
    let many: String = (0..80).map(|i| format!("X-Header-{i}: 1\r\n")).collect();
    let answer = raw_http::exchange(
        server.addr(),
        &raw_http::request("GET", "/healthz", &many, b""),
    )
    .await;
    assert_eq!(answer.status, 431);
    assert_eq!(get(&server, "/healthz").await.status, 200);
}

#[tokio::test]
async fn requests_a_web_page_could_forge_are_refused() {
    let host = TestHost::new().await;
    let server = serve(
        &host,
        ApiConfig {
            allowed_origins: vec!["https://dashboard.example".into()],
            ..ApiConfig::default()
        },
    )
    .await;
    let addr = server.addr();
    let with = |method: &str, path: &str, headers: &str, body: &[u8]| {
        raw_http::request(method, path, headers, body)
    };

    // A page on another origin, posting a simple (no preflight) request.
    let forged = raw_http::exchange(
        addr,
        &with(
            "POST",
            "/v1/feedback",
            "Origin: https://evil.example\r\nContent-Type: text/plain\r\n",
            b"{}",
        ),
    )
    .await;
    assert_eq!(forged.status, 403, "{}", forged.error());
    assert!(forged.error().contains("https://evil.example"));
    let allowed = raw_http::exchange(
        addr,
        &with(
            "GET",
            "/healthz",
            "Origin: https://dashboard.example\r\n",
            b"",
        ),
    )
    .await;
    assert_eq!(allowed.status, 200);

    // A body that is not declared JSON.
    let plain = raw_http::exchange(
        addr,
        &with(
            "POST",
            "/v1/receipts",
            "Content-Type: text/plain\r\n",
            b"{}",
        ),
    )
    .await;
    assert_eq!(plain.status, 415, "{}", plain.error());
    let json_with_charset = raw_http::exchange(
        addr,
        &with(
            "POST",
            "/v1/receipts",
            "Content-Type: application/json; charset=utf-8\r\n",
            b"{}",
        ),
    )
    .await;
    assert_eq!(
        json_with_charset.status,
        400,
        "{}",
        json_with_charset.error()
    );

    // DNS rebinding: a page's own name resolved to 127.0.0.1.
    let rebound = format!(
        "GET /v1/agents HTTP/1.1\r\nHost: evil.example:{}\r\nConnection: close\r\n\r\n",
        addr.port()
    );
    let answer = raw_http::exchange(addr, rebound.as_bytes()).await;
    assert_eq!(answer.status, 421, "{}", answer.error());
    for name in ["127.0.0.1", "localhost", "LOCALHOST"] {
        let direct = format!(
            "GET /healthz HTTP/1.1\r\nHost: {name}:{}\r\nConnection: close\r\n\r\n",
            addr.port()
        );
        assert_eq!(
            raw_http::exchange(addr, direct.as_bytes()).await.status,
            200
        );
    }
}
