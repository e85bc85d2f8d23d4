//! The caller's side of a remote call: an answer is evidence only if its receipt verifies and
//! answers this very request, for this agent and input, with this output.

use agora_host::api::{ApiConfig, ApiServer};
use agora_host::client::ApiClient;
use agora_host::examples;
use agora_host::invoke::{self, CallError, InvokeMessage};
use agora_registry::SecretKey;
use agora_tests::TestHost;

const TRIP: &str = r#"{"trip": {"distance_m": 5000, "duration_s": 600}}"#;

#[tokio::test]
async fn an_answer_that_does_not_hold_for_the_request_is_refused() {
    let host = TestHost::new().await;
    let driver = host.publish(examples::RIDE_DRIVER).await;
    let other = host.publish_as(examples::RIDE_DRIVER, "other-driver").await;
    let server = ApiServer::start(host.node.clone(), ApiConfig::default())
        .await
        .unwrap();
    let client = ApiClient::new(&format!("http://{}", server.addr())).unwrap();
    let caller = SecretKey::generate();
    let sign = || {
        InvokeMessage::sign(
            &caller,
            host.node.public_key(),
            driver.hash(),
            "quote",
            TRIP,
            50_000_000,
        )
        .unwrap()
    };
    let (request, message) = sign();
    let answer = invoke::over_http(&client, &message).await.unwrap();
    let called = invoke::check(&request, answer.clone()).expect("an honest answer holds");
    assert_eq!(called.manifest.hash(), driver.hash());

    let refused =
        |tampered: invoke::InvokeAnswer, says: &str| match invoke::check(&request, tampered) {
            Err(CallError::BadAnswer(why)) => assert!(why.contains(says), "{why}"),
            other => panic!("expected a bad answer ({says}), got {other:?}"),
        };
    let mut changed_output = answer.clone();
    changed_output.output = Some(r#"{"fare_cents":1}"#.into());
    refused(changed_output, "output hash");

    // A real receipt from the same host, for another request.
    let (_, second) = sign();
    let mut other_receipt = answer.clone();
    other_receipt.receipt = invoke::over_http(&client, &second).await.unwrap().receipt;
    refused(other_receipt, "another request");

    let mut other_manifest = answer.clone();
    other_manifest.manifest = String::from_utf8_lossy(other.as_bytes()).into_owned();
    refused(other_manifest, "not the agent called");

    let mut forged = answer.clone();
    forged.receipt = forged.receipt.replace("\"seq\":", "\"seq\":1");
    refused(forged, "the receipt");

    // Signed by a host other than the one the request named.
    let stranger = SecretKey::generate();
    let (asked_elsewhere, _) = InvokeMessage::sign(
        &caller,
        stranger.public(),
        driver.hash(),
        "quote",
        TRIP,
        50_000_000,
    )
    .unwrap();
    match invoke::check(&asked_elsewhere, answer) {
        Err(CallError::BadAnswer(why)) => assert!(why.contains("not by the host called"), "{why}"),
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}
