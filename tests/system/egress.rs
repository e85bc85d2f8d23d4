//! Granted outbound HTTP (`wasi:http/outgoing-handler`), through a real host running the
//! `fetcher` guest against a real HTTP server on loopback. Loopback is a prohibited address
//! like any private one, so every host here allows 127.0.0.1 explicitly, except where a test
//! checks that it is refused.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_host::egress::{Credential, EgressConfig};
use agora_host::{DataDir, Limits, Node, NodeConfig, PublishOptions, Verdict};
use agora_registry::egress::{EgressUsage, HttpAnswer, HttpErrorKind};
use agora_registry::{HostCall, SignedReceipt, Transcript, rules};
use agora_tests::FETCHER;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};

const SECRET: &str = "Bearer host-secret-5f3c9a";

/// One request the server got: its path and its `authorization` header.
type Asked = (String, Option<String>);

/// What the server was asked, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Asked>>>);

impl Seen {
    fn paths(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }
}

/// An upstream API: `/hello` greets, `/echo` returns the body it got, `/big` sends 512 KiB,
/// `/slow` answers after 5 s, `/redirect` points at 127.0.0.2 on the same port, `/loop` at
/// itself.
async fn serve_upstream() -> (SocketAddr, Seen) {
    async fn record(seen: &Seen, path: &str, headers: &HeaderMap) {
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        seen.0.lock().unwrap().push((path.to_owned(), auth));
    }
    let seen = Seen::default();
    let app = axum::Router::new()
        .route(
            "/hello",
            axum::routing::get(|State(seen): State<Seen>, headers: HeaderMap| async move {
                record(&seen, "/hello", &headers).await;
                "hello from upstream"
            }),
        )
        .route(
            "/echo",
            axum::routing::post(
                |State(seen): State<Seen>, headers: HeaderMap, body: String| async move {
                    record(&seen, "/echo", &headers).await;
                    body
                },
            ),
        )
        .route(
            "/big",
            axum::routing::get(|State(seen): State<Seen>, headers: HeaderMap| async move {
                record(&seen, "/big", &headers).await;
                vec![b'x'; 512 << 10]
            }),
        )
        .route(
            "/slow",
            axum::routing::get(|State(seen): State<Seen>, headers: HeaderMap| async move {
                record(&seen, "/slow", &headers).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route(
            "/redirect",
            axum::routing::get(|State(seen): State<Seen>, headers: HeaderMap| async move {
                record(&seen, "/redirect", &headers).await;
                let port = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| h.rsplit_once(':'))
                    .map(|(_, port)| port.to_owned())
                    .unwrap_or_default();
                let location = format!("http://127.0.0.2:{port}/hello");
                (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
            }),
        )
        .route(
            "/loop",
            axum::routing::get(|State(seen): State<Seen>, headers: HeaderMap| async move {
                record(&seen, "/loop", &headers).await;
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or_default();
                let location = format!("http://{host}/loop");
                (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
            }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// A host granting `http://127.0.0.1:<port>` and reaching 127.0.0.1, adding its credential
/// there, at one unit of charge per byte.
fn granting(addr: SocketAddr) -> EgressConfig {
    let origin = format!("http://{addr}").parse().unwrap();
    EgressConfig::default()
        .grant(format!("http://{addr}").parse().unwrap())
        .allow_network("127.0.0.1/32".parse().unwrap())
        .credential(
            Credential::from_header_line(origin, &format!("Authorization: {SECRET}")).unwrap(),
        )
        .price_per_mbyte(1_000_000)
}

async fn open_host(egress: EgressConfig, limits: Limits) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = DataDir::new(dir.path());
    data_dir.keygen().unwrap();
    let config = NodeConfig::new(data_dir).limits(limits).egress(egress);
    (Node::open(config).await.unwrap(), dir)
}

/// An upstream on loopback, and a host [`granting`] it that has published `fetcher` declaring it.
struct Granted {
    addr: SocketAddr,
    seen: Seen,
    node: Node,
    agent: String,
    _dir: tempfile::TempDir,
}

impl Granted {
    async fn open(limits: Limits) -> Self {
        Self::open_with(limits, |egress| egress).await
    }

    /// With the host's egress configuration changed by `edit` first.
    async fn open_with(limits: Limits, edit: impl FnOnce(EgressConfig) -> EgressConfig) -> Self {
        let (addr, seen) = serve_upstream().await;
        let (node, _dir) = open_host(edit(granting(addr)), limits).await;
        let agent = publish_declaring(&node, &[format!("http://{addr}")]).await;
        Granted {
            addr,
            seen,
            node,
            agent,
            _dir,
        }
    }
}

/// Publishes `fetcher` declaring `origins`; its manifest hash.
async fn publish_declaring(node: &Node, origins: &[String]) -> String {
    let options = PublishOptions {
        egress: origins.to_vec(),
        ..PublishOptions::default()
    };
    let published = node.publish(FETCHER, options).await.unwrap();
    published.manifest.hash().to_hex()
}

async fn fetch(node: &Node, agent: &str, payload: Value) -> (Value, SignedReceipt) {
    let execution = node
        .run(agent, "fetch", payload.to_string().as_bytes(), None)
        .await
        .unwrap();
    let receipt = execution.receipt.clone();
    let output = execution.into_output().unwrap();
    (serde_json::from_slice(&output).unwrap(), receipt)
}

fn transcript_of(node: &Node, receipt: &SignedReceipt) -> Vec<u8> {
    let reference = receipt.body().transcript.expect("a transcript");
    node.registry()
        .call_data(&reference.hash)
        .unwrap()
        .expect("the transcript is kept")
}

fn exchanges(transcript: &[u8]) -> Vec<(u64, u64, HttpAnswer)> {
    (Transcript::from_bytes(transcript)
        .unwrap()
        .calls
        .into_iter())
    .filter_map(|call| match call {
        HostCall::Http {
            bytes_sent,
            bytes_received,
            answer,
            ..
        } => Some((bytes_sent, bytes_received, answer)),
        _ => None,
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_reaches_an_origin_it_declares_and_the_host_grants_and_its_bytes_are_metered() {
    let Granted {
        addr,
        seen,
        node,
        agent,
        _dir,
    } = Granted::open(Limits::default()).await;

    let (answer, receipt) = fetch(
        &node,
        &agent,
        json!({"url": format!("http://{addr}/echo"), "method": "POST", "body": "fare for 12 km?"}),
    )
    .await;
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["body"], "fare for 12 km?");
    assert_eq!(seen.paths(), ["/echo"]);

    // The receipt counts what the transcript's exchange moved, and charges it at a unit a byte.
    let transcript = transcript_of(&node, &receipt);
    let body = receipt.body();
    let usage = body.egress.expect("egress usage in the receipt");
    let recount = EgressUsage::recount(&Transcript::from_bytes(&transcript).unwrap());
    assert_eq!(
        (usage.requests, usage.bytes_sent, usage.bytes_received),
        (1, recount.bytes_sent, recount.bytes_received)
    );
    assert!(
        usage.bytes_sent > 15 && usage.bytes_received > 15,
        "{usage:?}"
    );
    assert_eq!(usage.charge, usage.bytes_sent + usage.bytes_received);
    let manifest = node
        .registry()
        .manifest(&body.agent.manifest)
        .unwrap()
        .unwrap();
    let fuel_charge = rules::charge_for(body.fuel_used, manifest.body().price_per_mfuel);
    assert_eq!(body.charge, fuel_charge + usage.charge);
    match &exchanges(&transcript)[..] {
        [
            (
                _,
                _,
                HttpAnswer::Response {
                    status: 200, body, ..
                },
            ),
        ] => {
            assert_eq!(body, b"fare for 12 km?")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_to_origins_not_declared_or_not_granted_are_denied_before_anything_is_sent() {
    let (addr, seen) = serve_upstream().await;
    let (other, other_seen) = serve_upstream().await;
    let (node, _dir) = open_host(granting(addr), Limits::default()).await;
    // Declared but not granted by this host, and granted but not declared.
    let declares_other = publish_declaring(&node, &[format!("http://{other}")]).await;
    let declares_nothing = publish_declaring(&node, &[]).await;

    for (agent, url) in [
        (&declares_other, format!("http://{other}/hello")),
        (&declares_nothing, format!("http://{addr}/hello")),
        (&declares_other, format!("http://{addr}/hello")),
    ] {
        let (answer, receipt) = fetch(&node, agent, json!({ "url": url })).await;
        assert_eq!(answer["error"], "HttpRequestDenied", "{url}: {answer}");
        // Refused requests cost nothing and are not counted as sent.
        assert_eq!(receipt.body().egress, None, "{url}");
    }
    assert!(seen.paths().is_empty());
    assert!(other_seen.paths().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_or_address_on_loopback_is_refused_unless_the_operator_allows_the_network() {
    let (addr, seen) = serve_upstream().await;
    let port = addr.port();
    let origins = [format!("http://localhost:{port}"), format!("http://{addr}")];
    let mut strict = EgressConfig::default();
    for origin in &origins {
        strict = strict.grant(origin.parse().unwrap());
    }
    let (node, _dir) = open_host(strict.clone(), Limits::default()).await;
    let agent = publish_declaring(&node, &origins).await;
    for url in [
        format!("http://localhost:{port}/hello"),
        format!("http://{addr}/hello"),
    ] {
        let (answer, _) = fetch(&node, &agent, json!({ "url": url })).await;
        assert_eq!(
            answer["error"], "DestinationIpProhibited",
            "{url}: {answer}"
        );
    }
    assert!(seen.paths().is_empty());

    // The operator allows loopback: the same name now reaches the server.
    let allowing = strict.allow_network("127.0.0.0/8".parse().unwrap());
    let (node, _dir) = open_host(allowing, Limits::default()).await;
    let agent = publish_declaring(&node, &origins).await;
    let (answer, _) = fetch(
        &node,
        &agent,
        json!({ "url": format!("http://localhost:{port}/hello") }),
    )
    .await;
    assert_eq!(answer["body"], "hello from upstream", "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_are_not_followed_and_a_redirect_to_another_host_is_refused() {
    let Granted {
        addr,
        seen,
        node,
        agent,
        _dir,
    } = Granted::open(Limits::default()).await;
    let url = format!("http://{addr}/redirect");

    let (answer, _) = fetch(&node, &agent, json!({ "url": url })).await;
    assert_eq!(answer["status"], 302, "{answer}");
    assert_eq!(seen.paths(), ["/redirect"]);

    // A guest that follows it asks for another host, which it was never granted.
    let (answer, _) = fetch(&node, &agent, json!({ "url": url, "follow": 1 })).await;
    assert_eq!(answer["error"], "HttpRequestDenied", "{answer}");
    assert_eq!(
        answer["redirects"],
        json!([format!("http://127.0.0.2:{}/hello", addr.port())])
    );
    assert_eq!(seen.paths(), ["/redirect", "/redirect"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_makes_at_most_the_hosts_number_of_requests() {
    let limits = Limits {
        max_http_requests: 3,
        ..Limits::default()
    };
    let Granted {
        addr,
        seen,
        node,
        agent,
        _dir,
    } = Granted::open(limits).await;
    let (answer, receipt) = fetch(
        &node,
        &agent,
        json!({ "url": format!("http://{addr}/loop"), "follow": 10 }),
    )
    .await;
    assert_eq!(answer["error"], "ConnectionLimitReached", "{answer}");
    assert_eq!(seen.paths().len(), 3);
    assert_eq!(receipt.body().egress.unwrap().requests, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_response_is_cut_with_a_typed_error_its_bytes_counted_and_the_host_serves_on()
{
    let Granted {
        addr,
        seen: _,
        node,
        agent,
        _dir,
    } = Granted::open(Limits::default()).await;

    let (answer, receipt) = fetch(
        &node,
        &agent,
        json!({ "url": format!("http://{addr}/big") }),
    )
    .await;
    assert_eq!(answer["error"], "HttpResponseBodySize", "{answer}");
    let max = Limits::default().max_http_response_bytes;
    let usage = receipt.body().egress.unwrap();
    assert!(
        usage.bytes_received > max && usage.bytes_received < 2 * max,
        "read {} of a {max}-byte allowance",
        usage.bytes_received
    );
    // Nothing of the cut response is kept for replay beyond the error.
    let transcript = transcript_of(&node, &receipt);
    assert!(transcript.len() < 4096, "{} bytes", transcript.len());
    match &exchanges(&transcript)[..] {
        [(_, _, HttpAnswer::Error { kind, .. })] => {
            assert_eq!(*kind, HttpErrorKind::ResponseTooLarge)
        }
        other => panic!("{other:?}"),
    }

    let (answer, _) = fetch(
        &node,
        &agent,
        json!({ "url": format!("http://{addr}/hello") }),
    )
    .await;
    assert_eq!(answer["body"], "hello from upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_adds_its_credential_and_the_guest_can_neither_set_nor_see_one() {
    let Granted {
        addr,
        seen,
        node,
        agent,
        _dir,
    } = Granted::open(Limits::default()).await;

    let (answer, receipt) = fetch(
        &node,
        &agent,
        json!({
            "url": format!("http://{addr}/hello"),
            "headers": [["Authorization", "Bearer guest-made"], ["Cookie", "a=b"], ["x-trip", "42"]],
        }),
    )
    .await;
    assert_eq!(answer["body"], "hello from upstream", "{answer}");
    let refused = answer["refused_headers"].to_string().to_lowercase();
    assert!(
        refused.contains("authorization") && refused.contains("cookie"),
        "{refused}"
    );
    let seen = seen.0.lock().unwrap().clone();
    assert_eq!(seen, [("/hello".to_owned(), Some(SECRET.to_owned()))]);

    let transcript = transcript_of(&node, &receipt);
    for (what, bytes) in [
        ("the guest's output", answer.to_string().into_bytes()),
        ("the transcript", transcript),
        ("the receipt", receipt.as_bytes().to_vec()),
    ] {
        assert!(
            !String::from_utf8_lossy(&bytes).contains("host-secret"),
            "{what} holds the host's credential"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_does_not_answer_in_time_gives_a_timeout_and_the_call_carries_on() {
    let limits = Limits {
        max_http_time: Duration::from_millis(300),
        ..Limits::default()
    };
    let Granted {
        addr,
        seen: _,
        node,
        agent,
        _dir,
    } = Granted::open(limits).await;
    let started = std::time::Instant::now();
    let (answer, receipt) = fetch(
        &node,
        &agent,
        json!({ "url": format!("http://{addr}/slow") }),
    )
    .await;
    assert_eq!(answer["error"], "ConnectionTimeout", "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(receipt.body().outcome, agora_registry::Outcome::Ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_with_outbound_http_is_re_checked_by_replaying_its_exchanges() {
    let Granted {
        addr,
        seen,
        node,
        agent,
        _dir,
    } = Granted::open(Limits::default()).await;
    let (_, receipt) = fetch(
        &node,
        &agent,
        json!({"url": format!("http://{addr}/echo"), "method": "POST", "body": "6 kWh at 21 cents"}),
    )
    .await;
    let input = node
        .registry()
        .call_data(&receipt.body().input_hash)
        .unwrap()
        .unwrap();
    let transcript = transcript_of(&node, &receipt);

    // A checker on a host that grants nothing replays the recorded response: no request goes out.
    let (checker, _dir) = open_host(EgressConfig::default(), Limits::default()).await;
    let again = checker
        .reexecute(&receipt, FETCHER, &input, &transcript)
        .await
        .unwrap();
    assert_eq!(again.verdict, Verdict::Matches);
    assert_eq!(seen.paths(), ["/echo"]);

    // A host that signs for more bytes than its exchanges moved is caught by the same replay.
    let key = agora_registry::SecretKey::load(&node.data_dir().key_path()).unwrap();
    let mut inflated = receipt.body().clone();
    let usage = inflated.egress.as_mut().unwrap();
    usage.bytes_received += 1_000;
    usage.charge += 1_000;
    inflated.charge += 1_000;
    let inflated = agora_registry::Signed::sign(inflated, &key).unwrap();
    let again = checker
        .reexecute(&inflated, FETCHER, &input, &transcript)
        .await
        .unwrap();
    assert_eq!(
        again.verdict,
        Verdict::Differs {
            fields: vec!["egress"]
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_origin_is_reached_over_tls_only_with_a_certificate_the_host_trusts() {
    let hello = axum::Router::new().route("/", axum::routing::get(|| async { "hello over tls" }));
    let (addr, certificate) = crate::tls::serve(hello).await;
    let origin = format!("https://{addr}");
    let egress = EgressConfig::default()
        .grant(origin.parse().unwrap())
        .allow_network("127.0.0.1/32".parse().unwrap());

    // Mozilla's roots do not vouch for a certificate made a moment ago.
    let (node, _dir) = open_host(egress.clone(), Limits::default()).await;
    let agent = publish_declaring(&node, std::slice::from_ref(&origin)).await;
    let (answer, _) = fetch(&node, &agent, json!({ "url": format!("{origin}/") })).await;
    assert_eq!(answer["error"], "TlsCertificateError", "{answer}");

    // An operator that trusts it as a root reaches the server.
    let (node, _dir) = open_host(egress.trust_root(certificate), Limits::default()).await;
    let agent = publish_declaring(&node, std::slice::from_ref(&origin)).await;
    let (answer, receipt) = fetch(&node, &agent, json!({ "url": format!("{origin}/") })).await;
    assert_eq!(answer["body"], "hello over tls", "{answer}");
    assert_eq!(receipt.body().egress.unwrap().requests, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_keeps_at_most_its_number_of_outbound_connections_open_for_all_agents() {
    let limits = Limits {
        max_http_time: Duration::from_secs(3),
        ..Limits::default()
    };
    let Granted {
        addr,
        seen,
        node,
        agent,
        _dir,
    } = Granted::open_with(limits, |egress| egress.max_connections(1)).await;

    // One call holds the only connection, waiting on a slow server…
    let slow = tokio::spawn({
        let (node, agent) = (node.clone(), agent.clone());
        async move {
            fetch(
                &node,
                &agent,
                json!({ "url": format!("http://{addr}/slow") }),
            )
            .await
        }
    });
    while !seen.paths().contains(&"/slow".to_owned()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // …so another call's request waits a second for it, then is refused, uncounted.
    let (answer, receipt) = fetch(
        &node,
        &agent,
        json!({ "url": format!("http://{addr}/hello") }),
    )
    .await;
    assert_eq!(answer["error"], "ConnectionLimitReached", "{answer}");
    assert_eq!(receipt.body().egress, None);

    let (answer, _) = slow.await.unwrap();
    assert_eq!(answer["error"], "ConnectionTimeout", "{answer}");
    let (answer, _) = fetch(
        &node,
        &agent,
        json!({ "url": format!("http://{addr}/hello") }),
    )
    .await;
    assert_eq!(answer["body"], "hello from upstream", "{answer}");
}
