//! Caller-signed requests and feedback: the evidence reputation is built from.

use std::time::{SystemTime, UNIX_EPOCH};

use agora_host::{RunError, examples};
use agora_registry::{
    CallRequest, Error as RegistryError, FeedbackError, Hash, PublicKey, SecretKey, Signed,
    SignedFeedback, SignedReceipt, SignedRequest, request_hash,
};
use agora_tests::{TestHost, sign_feedback};

const ACTION: &str = "quote";
const PAYLOAD: &[u8] = br#"{"trip": {"distance_m": 5000, "duration_s": 600}}"#;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn request(caller: &SecretKey, host: PublicKey, agent: Hash, expires_at_ms: u64) -> SignedRequest {
    Signed::sign(
        CallRequest {
            caller: caller.public(),
            host,
            agent,
            input_hash: request_hash(ACTION, PAYLOAD),
            fuel_limit: 50_000_000,
            nonce: CallRequest::new_nonce(),
            expires_at_ms,
        },
        caller,
    )
    .unwrap()
}

/// A host with the ride driver published, and a caller's receipt for one signed call.
async fn rated_call() -> (TestHost, SecretKey, SignedReceipt) {
    let host = TestHost::new().await;
    let agent = host.publish(examples::RIDE_DRIVER).await.hash();
    let caller = SecretKey::generate();
    let signed = request(&caller, host.node.public_key(), agent, now_ms() + 60_000);
    let execution = host
        .node
        .run_request(&signed, ACTION, PAYLOAD)
        .await
        .unwrap();
    (host, caller, execution.receipt)
}

#[tokio::test]
async fn a_signed_request_runs_and_its_receipt_names_the_request_and_caller() {
    let host = TestHost::new().await;
    let agent = host.publish(examples::RIDE_DRIVER).await.hash();
    let caller = SecretKey::generate();
    let signed = request(&caller, host.node.public_key(), agent, now_ms() + 60_000);
    let execution = host
        .node
        .run_request(&signed, ACTION, PAYLOAD)
        .await
        .unwrap();
    assert_eq!(
        execution.output.as_deref(),
        Some(&br#"{"fare_cents":1150}"#[..])
    );
    let receipt = execution.receipt.body();
    assert_eq!(receipt.request, Some(signed.hash()));
    assert_eq!(receipt.caller, Some(caller.public()));
    assert_eq!(receipt.fuel_limit, 50_000_000);
    // The request is kept as evidence and verifies.
    let stored = host
        .node
        .registry()
        .request(&signed.hash())
        .unwrap()
        .unwrap();
    assert_eq!(stored.as_bytes(), signed.as_bytes());
}

#[tokio::test]
async fn replayed_requests_are_refused() {
    let host = TestHost::new().await;
    let agent = host.publish(examples::RIDE_DRIVER).await.hash();
    let caller = SecretKey::generate();
    let signed = request(&caller, host.node.public_key(), agent, now_ms() + 60_000);
    host.node
        .run_request(&signed, ACTION, PAYLOAD)
        .await
        .unwrap();
    let err = host
        .node
        .run_request(&signed, ACTION, PAYLOAD)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RunError::Registry(RegistryError::Replayed { .. })),
        "{err}"
    );
    assert_eq!(
        host.node.registry().receipts(10).unwrap().len(),
        1,
        "no receipt for the replay"
    );
}

#[tokio::test]
async fn expired_misaddressed_long_lived_and_altered_requests_are_refused() {
    let host = TestHost::new().await;
    let agent = host.publish(examples::RIDE_DRIVER).await.hash();
    let caller = SecretKey::generate();
    let me = host.node.public_key();

    let expired = request(&caller, me, agent, now_ms() - 1);
    let err = host
        .node
        .run_request(&expired, ACTION, PAYLOAD)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RunError::Registry(RegistryError::RequestExpired { .. })
        ),
        "{err}"
    );

    let elsewhere = request(
        &caller,
        SecretKey::generate().public(),
        agent,
        now_ms() + 60_000,
    );
    let err = host
        .node
        .run_request(&elsewhere, ACTION, PAYLOAD)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RunError::Registry(RegistryError::WrongHost { .. })),
        "{err}"
    );

    let forever = request(&caller, me, agent, now_ms() + 365 * 24 * 3_600_000);
    let err = host
        .node
        .run_request(&forever, ACTION, PAYLOAD)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RunError::Registry(RegistryError::RequestTooLongLived { .. })
        ),
        "{err}"
    );

    let fine = request(&caller, me, agent, now_ms() + 60_000);
    let err = host
        .node
        .run_request(&fine, ACTION, b"{\"trip\": {}}")
        .await
        .unwrap_err();
    assert!(matches!(err, RunError::InputMismatch { .. }), "{err}");

    let text = String::from_utf8(fine.as_bytes().to_vec()).unwrap();
    let raised = text.replace("50000000", "90000000");
    assert!(
        SignedRequest::from_bytes(raised.as_bytes()).is_err(),
        "a raised fuel limit breaks the signature"
    );
    assert!(host.node.registry().receipts(10).unwrap().is_empty());
}

#[tokio::test]
async fn the_caller_may_rate_a_receipt_once() {
    let (host, caller, receipt) = rated_call().await;
    let registry = host.node.registry();
    let rating = sign_feedback(&caller, &receipt, 90);
    registry.insert_feedback(&rating).unwrap();
    assert_eq!(
        registry.feedback(&receipt.hash()).unwrap().unwrap().hash(),
        rating.hash()
    );
    let second = sign_feedback(&caller, &receipt, 10);
    let err = registry.insert_feedback(&second).unwrap_err();
    assert!(matches!(err, RegistryError::DuplicateFeedback(_)), "{err}");
}

#[tokio::test]
async fn feedback_from_anyone_but_an_independent_caller_does_not_count() {
    let (host, caller, receipt) = rated_call().await;
    let registry = host.node.registry();

    let stranger = SecretKey::generate();
    let err = registry
        .insert_feedback(&sign_feedback(&stranger, &receipt, 100))
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::Feedback(FeedbackError::NotTheCaller { .. })
        ),
        "{err}"
    );

    let err = registry
        .insert_feedback(&sign_feedback(&caller, &receipt, 101))
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Feedback(FeedbackError::Malformed(_))),
        "{err}"
    );

    // A receipt for a call the host made on its own account has no caller to rate it.
    let own = host
        .node
        .run("ride-driver", ACTION, PAYLOAD, None)
        .await
        .unwrap()
        .receipt;
    let err = registry
        .insert_feedback(&sign_feedback(&caller, &own, 100))
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Feedback(FeedbackError::NoCaller(_))),
        "{err}"
    );

    // Self-dealing: the host (here also the publisher) calling its own agent and rating it.
    let host_key = SecretKey::load(&host.node.data_dir().key_path()).unwrap();
    let agent = receipt.body().agent.manifest;
    let self_call = request(&host_key, host.node.public_key(), agent, now_ms() + 60_000);
    let self_receipt = host
        .node
        .run_request(&self_call, ACTION, PAYLOAD)
        .await
        .unwrap()
        .receipt;
    let err = registry
        .insert_feedback(&sign_feedback(&host_key, &self_receipt, 100))
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::Feedback(FeedbackError::RaterIsPublisher(_))
        ),
        "{err}"
    );

    registry
        .insert_feedback(&sign_feedback(&caller, &receipt, 50))
        .expect("the real caller still can");

    let rating = sign_feedback(&caller, &receipt, 70);
    let text = String::from_utf8(rating.as_bytes().to_vec())
        .unwrap()
        .replace("\"score\":70", "\"score\":99");
    assert!(
        SignedFeedback::from_bytes(text.as_bytes()).is_err(),
        "altered feedback does not verify"
    );
}
