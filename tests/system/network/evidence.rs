//! Evidence between hosts: receipts and feedback passed on, forks recorded, and catch-up for
//! hosts that join late.

use agora_host::examples;
use agora_registry::{Hash, Outcome};
use agora_tests::TestHost;

use super::*;

#[tokio::test]
async fn hosts_exchange_receipts_and_feedback() {
    use agora_registry::{CallRequest, Feedback, SecretKey, Signed, request_hash};

    let a = TestHost::new().await;
    let driver = a.publish(examples::RIDE_DRIVER).await;
    let a_net = online(&a).await;
    let b = TestHost::new().await;
    let b_net = online_with_peers(&b, &[&a_net]).await;
    learns_of(&b, &driver).await;

    let caller = SecretKey::generate();
    let payload = br#"{"trip": {"distance_m": 5000, "duration_s": 600}}"#;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut receipts = Vec::new();
    for _ in 0..2 {
        let request = Signed::sign(
            CallRequest {
                caller: caller.public(),
                host: a.node.public_key(),
                agent: driver.hash(),
                input_hash: request_hash("quote", payload),
                fuel_limit: 10_000_000,
                nonce: CallRequest::new_nonce(),
                expires_at_ms: now + 60_000,
            },
            &caller,
        )
        .unwrap();
        receipts.push(
            a.node
                .run_request(&request, "quote", payload)
                .await
                .unwrap()
                .receipt,
        );
    }
    let rating = Signed::sign(
        Feedback {
            receipt: receipts[1].hash(),
            rater: caller.public(),
            score: 95,
            tags: vec![],
            created_at_ms: now,
        },
        &caller,
    )
    .unwrap();
    a.node.registry().insert_feedback(&rating).unwrap();

    let a_key = a.node.public_key();
    eventually("B receiving A's receipts", || {
        b.node.registry().receipt_chain(&a_key).unwrap().len() == 2
    })
    .await;
    eventually("B receiving the feedback", || {
        b.node
            .registry()
            .feedback(&receipts[1].hash())
            .unwrap()
            .is_some()
    })
    .await;
    let chain = b.node.registry().receipt_chain(&a_key).unwrap();
    assert_eq!(
        chain[1].body().prev,
        Some(chain[0].hash()),
        "B holds A's chain intact"
    );
    assert!(b.node.registry().forks(&a_key).unwrap().is_empty());
    a_net.shutdown().await;
    b_net.shutdown().await;
}

#[tokio::test]
async fn a_forked_receipt_chain_is_recorded_as_evidence_and_forgeries_are_dropped() {
    use agora_registry::{AgentRef, Outcome, Receipt, SecretKey, Signed, request_hash};

    let b = TestHost::new().await;
    let driver = b.publish(examples::RIDE_DRIVER).await;
    let b_net = online(&b).await;
    let (router, mut topic) = raw_gossip_peer(&b_net).await;

    // A cheating host signs two different receipts with sequence number 0.
    let cheat = SecretKey::generate();
    let receipt = |output: &[u8]| {
        Signed::sign(
            Receipt {
                agent: AgentRef {
                    manifest: driver.hash(),
                    component: driver.body().component.hash,
                },
                request: None,
                caller: None,
                input_hash: request_hash("quote", b"{}"),
                output_hash: Some(Hash::of(output)),
                outcome: Outcome::Ok,
                fuel_limit: 10,
                fuel_used: 5,
                charge: 0,
                wall_time_us: 1,
                nested: vec![],
                parent_call: None,
                host: cheat.public(),
                runtime: agora_host::RUNTIME_VERSION.into(),
                profile: None,
                environment: None,
                input_size: None,
                transcript: None,
                seq: 0,
                prev: None,
                timestamp_ms: 1,
                limits: None,
                model_usage: vec![],
                egress: None,
            },
            &cheat,
        )
        .unwrap()
    };
    let (honest, forked) = (receipt(b"to peer one"), receipt(b"to peer two"));
    let forged = String::from_utf8(honest.as_bytes().to_vec())
        .unwrap()
        .replace("\"fuel_used\":5", "\"fuel_used\":1");
    for (kind, body) in [
        (2u8, honest.as_bytes()),
        (2, forged.as_bytes()),
        (2, forked.as_bytes()),
    ] {
        let mut message = vec![kind];
        message.extend_from_slice(body);
        topic.broadcast(bytes::Bytes::from(message)).await.unwrap();
    }

    let cheat_key = cheat.public();
    eventually("the fork being recorded", || {
        !b.node.registry().forks(&cheat_key).unwrap().is_empty()
    })
    .await;
    let forks = b.node.registry().forks(&cheat_key).unwrap();
    assert_eq!(forks.len(), 1);
    assert_eq!(
        (forks[0].seq, forks[0].first, forks[0].second),
        (0, honest.hash(), forked.hash())
    );
    eventually("the forgery being dropped", || {
        b_net.gossip_stats().dropped() >= 1
    })
    .await;
    assert_eq!(
        b.node.registry().receipt_chain(&cheat_key).unwrap().len(),
        2,
        "both kept as evidence"
    );
    router.shutdown().await.unwrap();
    b_net.shutdown().await;
}

#[tokio::test]
async fn a_host_that_joins_late_catches_up_on_existing_evidence_and_scores_the_same() {
    use agora_host::PublishOptions;
    use agora_registry::SecretKey;
    use agora_registry::reputation::{ScoreParams, compute};
    use agora_tests::{SigningHost, now_ms, sign_feedback, sign_request};

    // A has served and been rated, and holds a third host's receipts too — all before B exists.
    let a = TestHost::new().await;
    let options = PublishOptions {
        price_per_mfuel: 1_000,
        ..PublishOptions::default()
    };
    let driver = a
        .node
        .publish(examples::RIDE_DRIVER, options)
        .await
        .unwrap()
        .manifest;
    let payload = br#"{"trip": {"distance_m": 5000, "duration_s": 600}}"#;
    let callers: Vec<SecretKey> = (0..3).map(|_| SecretKey::generate()).collect();
    for caller in &callers {
        let request = sign_request(caller, a.node.public_key(), driver.hash(), "quote", payload);
        let receipt = a
            .node
            .run_request(&request, "quote", payload)
            .await
            .unwrap()
            .receipt;
        a.node
            .registry()
            .insert_feedback(&sign_feedback(caller, &receipt, 90))
            .unwrap();
    }
    let mut third = SigningHost::new();
    for caller in &callers {
        let (receipt, request) = third.call(&driver, caller, Outcome::Ok, |_| {});
        a.node
            .registry()
            .insert_receipt(&receipt, Some(&request))
            .unwrap();
        a.node
            .registry()
            .insert_feedback(&sign_feedback(caller, &receipt, 70))
            .unwrap();
    }
    let a_net = online(&a).await;

    let b = TestHost::new().await;
    let b_net = online_with_peers(&b, &[&a_net]).await;
    let held = |host: &TestHost| host.node.registry().receipts(usize::MAX).unwrap().len();
    eventually("B catching up on A's and the third host's receipts", || {
        held(&b) == held(&a)
    })
    .await;
    eventually("B catching up on the feedback", || {
        b.node
            .registry()
            .evidence_set()
            .unwrap()
            .calls()
            .iter()
            .filter(|c| c.rating.is_some())
            .count()
            == 6
    })
    .await;
    // Asking again brings nothing new.
    let again = b_net.catch_up(&a_net.addr()).await.unwrap();
    assert_eq!(again.stored, 0, "{again:?}");

    let mut anchors = vec![a.node.public_key()];
    anchors.extend(callers.iter().map(SecretKey::public));
    let now = now_ms();
    let score = |host: &TestHost| {
        compute(
            &host.node.registry().evidence_set().unwrap(),
            &ScoreParams::new(anchors.clone(), now),
        )
    };
    let (at_a, at_b) = (score(&a), score(&b));
    assert_eq!(at_a, at_b);
    assert_eq!(at_b.of(driver.body()).evidence, 6);
    a_net.shutdown().await;
    b_net.shutdown().await;
}

#[tokio::test]
async fn a_peer_asking_for_a_negative_number_of_records_gets_one_round_not_everything() {
    let host = TestHost::new().await;
    let agent = host.publish(examples::RIDE_DRIVER).await;
    let mut signer = agora_tests::SigningHost::new();
    let caller = agora_registry::SecretKey::generate();
    for _ in 0..300 {
        let (receipt, request) = signer.call(&agent, &caller, Outcome::Ok, |_| {});
        host.node
            .registry()
            .insert_receipt(&receipt, Some(&request))
            .unwrap();
    }
    let net = online(&host).await;
    // Cursor zero for every kind, and a limit of -1: to SQLite, no limit at all.
    let mut ask = [0u8; 40];
    ask[32..].copy_from_slice(&(-1i64).to_be_bytes());
    let answer = ask_for_evidence(&net, agora_host::sync::ALPN, &ask).await;
    let (_, frames) =
        agora_host::sync::parse_answer(agora_host::sync::Version::V2, &answer).unwrap();
    let receipts = frames.iter().filter(|(kind, _)| *kind == 2).count();
    assert!(
        (1..=256).contains(&receipts),
        "one round holds at most 256 receipts, got {receipts}"
    );
    net.shutdown().await;
}

#[tokio::test]
async fn a_peer_asking_in_the_first_version_of_catch_up_is_still_answered_in_it() {
    let host = TestHost::new().await;
    host.publish(examples::RIDE_DRIVER).await;
    let net = online(&host).await;
    // Version 1: three cursor numbers (manifests, receipts, feedback) and the limit.
    let mut ask = [0u8; 32];
    ask[24..].copy_from_slice(&16i64.to_be_bytes());
    let answer = ask_for_evidence(&net, agora_host::sync::ALPN_V1, &ask).await;
    let (cursor, frames) =
        agora_host::sync::parse_answer(agora_host::sync::Version::V1, &answer).unwrap();
    assert!(cursor.manifests > 0);
    assert_eq!(frames.iter().filter(|(kind, _)| *kind == 1).count(), 1);
    assert!(
        frames.iter().all(|(kind, _)| *kind != 4),
        "no validations in version 1"
    );
    net.shutdown().await;
}

/// Asks `net`'s catch-up protocol, in the version `alpn` names, one raw question, as a peer
/// would, and returns the raw answer.
async fn ask_for_evidence(net: &Network, alpn: &[u8], ask: &[u8]) -> Vec<u8> {
    let endpoint = bare_endpoint(&[net.addr()]).await;
    let connection = endpoint.connect(net.addr(), alpn).await.unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(ask).await.unwrap();
    send.finish().unwrap();
    let answer = recv.read_to_end(64 << 20).await.unwrap();
    endpoint.close().await;
    answer
}
