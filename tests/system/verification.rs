//! Verifying a receipt from its transcript: a call whose guest read agent memory, wrote it, or
//! called other agents runs again on another host, answered from what its host recorded, and
//! reaches the same outcome, output and fuel; a transcript the guest's calls do not follow is
//! caught.

use agora_host::{Limits, ReexecuteError, Verdict, examples};
use agora_registry::{
    BlobRef, CallAnswer, Hash, HostCall, Receipt, SecretKey, Signed, SignedReceipt, Transcript,
};
use agora_tests::TestHost;
use serde_json::json;

/// A host on the other allocator, so nothing is shared with the first but the bytes.
async fn verifier() -> TestHost {
    TestHost::with_limits(Limits {
        pooled_instances: 0,
        ..Limits::default()
    })
    .await
}

/// The ride negotiation on `host`: driver ben is configured (a `kv-set`), then the rider
/// negotiates with ava and ben (`call-agent`s, whose drivers read their rules with `kv-get`).
/// Returns the receipts of ben's configuration and of the negotiation.
async fn negotiation(host: &TestHost) -> (SignedReceipt, SignedReceipt) {
    let rider = host.publish(examples::RIDE_RIDER).await;
    let ava = host.publish_as(examples::RIDE_DRIVER, "driver-ava").await;
    let ben = host.publish_as(examples::RIDE_DRIVER, "driver-ben").await;
    let rules = json!({"base_cents": 200, "per_km_cents": 100, "per_min_cents": 25,
                       "minimum_cents": 600, "max_surge_pct": 200, "max_discount_pct": 20});
    let configured = host
        .node
        .run(
            "driver-ben",
            "configure",
            rules.to_string().as_bytes(),
            None,
        )
        .await
        .unwrap();
    assert!(configured.error().is_none(), "{:?}", configured.outcome);
    let request = json!({
        "trip": {"distance_m": 12500, "duration_s": 1500, "demand_pct": 120},
        "budget_cents": 2_200,
        "drivers": [ava.hash().to_hex(), ben.hash().to_hex()],
        "max_rounds": 4,
    });
    let negotiated = host
        .node
        .run(
            &rider.hash().to_hex(),
            "negotiate",
            request.to_string().as_bytes(),
            None,
        )
        .await
        .unwrap();
    assert!(negotiated.error().is_none(), "{:?}", negotiated.outcome);
    (configured.receipt, negotiated.receipt)
}

fn transcript(host: &TestHost, receipt: &SignedReceipt) -> Transcript {
    Transcript::from_bytes(&host.kept(receipt).1).unwrap()
}

/// The component a receipt names, among the ride agents.
fn component_of(host: &TestHost, receipt: &SignedReceipt) -> &'static [u8] {
    let manifest = host
        .node
        .registry()
        .manifest(&receipt.body().agent.manifest)
        .unwrap()
        .unwrap();
    match manifest.body().name.as_str() {
        "ride-rider" => examples::RIDE_RIDER,
        _ => examples::RIDE_DRIVER,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rider_negotiating_with_drivers_verifies_from_its_transcript_on_another_host() {
    let (host, other) = (TestHost::new().await, verifier().await);
    let (configured, negotiated) = negotiation(&host).await;

    // What the transcripts hold: ben's write, the rider's calls in order with their receipts,
    // and ben's rules read back by each of his quotes.
    let written = transcript(&host, &configured);
    assert!(
        matches!(&written.calls[..], [HostCall::KvSet { error: None, .. }]),
        "{written:?}"
    );
    let calls = transcript(&host, &negotiated).calls;
    let callees: Vec<Hash> = calls
        .iter()
        .filter_map(|call| match call {
            HostCall::CallAgent {
                receipt: Some(receipt),
                answer: CallAnswer::Output(_),
                ..
            } => Some(*receipt),
            _ => None,
        })
        .collect();
    assert_eq!(callees, negotiated.body().nested, "{calls:?}");
    let mut found_rules = 0;
    let mut receipts = vec![configured, negotiated.clone()];
    for hash in &negotiated.body().nested {
        let nested = host.node.registry().receipt(hash).unwrap().unwrap();
        found_rules += transcript(&host, &nested)
            .calls
            .iter()
            .filter(|call| matches!(call, HostCall::KvGet { value: Some(_), .. }))
            .count();
        receipts.push(nested);
    }
    assert!(found_rules > 0, "ben's quotes read the rules he was given");

    // Another host, whose agent memory is empty and which never ran a driver, reaches every
    // receipt's outcome, output and fuel from the transcripts alone.
    for receipt in &receipts {
        let (input, transcript) = host.kept(receipt);
        let again = other
            .node
            .reexecute(receipt, component_of(&host, receipt), &input, &transcript)
            .await
            .unwrap();
        assert_eq!(again.verdict, Verdict::Matches, "{:?}", receipt.body());
    }
}

#[tokio::test]
async fn a_transcript_that_the_guests_calls_do_not_follow_is_caught() {
    let (host, other) = (TestHost::new().await, verifier().await);
    let (_, honest) = negotiation(&host).await;
    let (input, _) = host.kept(&honest);
    let recorded = transcript(&host, &honest);
    assert!(recorded.calls.len() >= 3, "{recorded:?}");
    let liar = SecretKey::generate();
    // The receipt a host signs when it records `transcript` for the honest call.
    let signed_with = |transcript: &Transcript| {
        let mut body: Receipt = honest.body().clone();
        body.host = liar.public();
        body.transcript = Some(transcript.blob_ref());
        Signed::sign(body, &liar).unwrap()
    };
    let verify = |receipt: SignedReceipt, transcript: Transcript| {
        let other = &other.node;
        let input = input.clone();
        async move {
            other
                .reexecute(
                    &receipt,
                    examples::RIDE_RIDER,
                    &input,
                    &transcript.to_bytes(),
                )
                .await
                .unwrap()
                .verdict
        }
    };

    let mut short = recorded.clone();
    short.calls.pop();
    let mut long = recorded.clone();
    long.calls.push(recorded.calls[0].clone());
    let mut other_input = recorded.clone();
    if let HostCall::CallAgent { input_hash, .. } = &mut other_input.calls[0] {
        *input_hash = Hash::of(b"a request the rider never sent");
    }
    let mut other_callee = recorded.clone();
    if let HostCall::CallAgent { agent, .. } = &mut other_callee.calls[1] {
        agent.push_str("-impostor");
    }
    for (what, altered, at) in [
        ("a call left out", short, recorded.calls.len() - 1),
        ("a call never made", long, recorded.calls.len()),
        ("another input", other_input, 0),
        ("another callee", other_callee, 1),
    ] {
        match verify(signed_with(&altered), altered).await {
            Verdict::TranscriptDiverges(divergence) => {
                assert_eq!(divergence.index, at, "{what}: {divergence}")
            }
            verdict => panic!("{what}: {verdict:?}"),
        }
    }

    // A transcript that follows the calls but answers otherwise: ava quoted a little more
    // (ben is still the cheaper, so the rider makes the same calls), but the receipt's output
    // lists the quote ava really gave.
    let mut dearer = recorded.clone();
    let ava_quote = dearer
        .calls
        .iter_mut()
        .find_map(|call| match call {
            HostCall::CallAgent {
                answer: CallAnswer::Output(output),
                ..
            } => Some(output),
            _ => None,
        })
        .unwrap();
    let mut quote: serde_json::Value = serde_json::from_slice(ava_quote).unwrap();
    quote["fare_cents"] = json!(quote["fare_cents"].as_u64().unwrap() + 100);
    *ava_quote = serde_json::to_vec(&quote).unwrap();
    match verify(signed_with(&dearer), dearer).await {
        Verdict::Differs { fields } => assert!(fields.contains(&"output_hash"), "{fields:?}"),
        verdict => panic!("{verdict:?}"),
    }

    // A receipt that hides one of the calls its transcript shows.
    let mut hidden = honest.body().clone();
    hidden.host = liar.public();
    hidden.nested.pop();
    let hidden = Signed::sign(hidden, &liar).unwrap();
    assert_eq!(
        verify(hidden, recorded.clone()).await,
        Verdict::Differs {
            fields: vec!["nested"]
        }
    );

    // Bytes that are not the transcript the receipt names are refused before anything runs.
    let error = other
        .node
        .reexecute(
            &honest,
            examples::RIDE_RIDER,
            &input,
            &Transcript::default().to_bytes(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, ReexecuteError::TranscriptMismatch { .. }),
        "{error}"
    );
    assert_ne!(
        BlobRef::of(&Transcript::default().to_bytes()),
        honest.body().transcript.unwrap()
    );
}
