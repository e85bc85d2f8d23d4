//! Invocation over iroh (`agora/invoke/1`) under a hostile peer: connections are capped, and
//! callers get through again once the hoarder lets go.

use std::time::Duration;

use agora_host::examples;
use agora_host::invoke::{ALPN, InvokeMessage};
use agora_host::net::invoke::{MAX_INVOKE_CONNECTIONS, call};
use agora_host::net::{NetConfig, Network};
use agora_registry::SecretKey;
use agora_tests::TestHost;

use super::bare_endpoint;

const TRIP: &str = r#"{"trip": {"distance_m": 5000, "duration_s": 600}}"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_holding_invoke_connections_open_is_cut_at_the_cap_and_calls_resume_after() {
    let host = TestHost::new().await;
    let driver = host.publish(examples::RIDE_DRIVER).await;
    let network = Network::start(host.node.clone(), NetConfig::local())
        .await
        .unwrap();
    let hoarder = bare_endpoint(&[network.addr()]).await;

    // Each connection opens a stream and sends half a message, then holds it.
    let mut held = Vec::new();
    for _ in 0..MAX_INVOKE_CONNECTIONS {
        let connection = hoarder.connect(network.addr(), ALPN).await.unwrap();
        let (mut send, recv) = connection.open_bi().await.unwrap();
        send.write_all(b"{\"invoke\":").await.unwrap();
        held.push((connection, send, recv));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let extra = hoarder.connect(network.addr(), ALPN).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), extra.closed())
        .await
        .expect("the connection over the cap is closed at once");
    assert!(
        closed.to_string().contains("too many invoke connections"),
        "{closed}"
    );

    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let caller = SecretKey::generate();
    let (_, message) = InvokeMessage::sign(
        &caller,
        host.node.public_key(),
        driver.hash(),
        "quote",
        TRIP,
        50_000_000,
    )
    .unwrap();
    let answer = call(&NetConfig::local(), &network.addr(), &message)
        .await
        .expect("a caller gets through once the hoarder let go");
    assert_eq!(answer.outcome, "ok");
    network.shutdown().await;
}
