use super::*;

fn manifest(publisher: &SecretKey, version: &str, code: &[u8]) -> Manifest {
    Manifest {
        name: "energy-trader".into(),
        version: version.into(),
        publisher: publisher.public(),
        component: ComponentRef {
            hash: Hash::of(code),
            size: code.len() as u64,
        },
        world: AGENT_WORLD.into(),
        actions: vec!["offer".into(), "clear".into()],
        capabilities: vec![],
        limits: ManifestLimits {
            max_fuel: 1_000_000,
            max_memory_bytes: 1 << 24,
            max_wall_ms: 1_000,
            max_output_bytes: 1 << 16,
        },
        price_per_mfuel: 7,
        description: "household energy agent".into(),
        created_at: 1_700_000_000,
        models: vec![],
        egress: vec![],
    }
}

/// A host signing a chain of receipts, each answering a caller's signed request, with the
/// charge its manifest's price gives: what an honest host sends its peers.
pub(crate) struct Chain {
    pub key: SecretKey,
    pub head: Option<(u64, Hash)>,
}

impl Chain {
    pub fn new() -> Self {
        Chain {
            key: SecretKey::generate(),
            head: None,
        }
    }

    /// The next receipt: `caller` ran `agent` here, with the outcome given.
    pub fn call(
        &mut self,
        agent: &SignedManifest,
        caller: &SecretKey,
        outcome: Outcome,
    ) -> (SignedReceipt, SignedRequest) {
        let seq = self.head.map_or(0, |(seq, _)| seq + 1);
        let prev = self.head.map(|(_, hash)| hash);
        let (receipt, request) = self.sign(agent, caller, outcome, seq, prev, |_| {});
        self.head = Some((seq, receipt.hash()));
        (receipt, request)
    }

    /// A second receipt at `seq`: a fork.
    pub fn fork(
        &self,
        agent: &SignedManifest,
        caller: &SecretKey,
        seq: u64,
    ) -> (SignedReceipt, SignedRequest) {
        let prev = (seq > 0).then(|| Hash::of(b"another history"));
        self.sign(agent, caller, Outcome::Ok, seq, prev, |_| {})
    }

    /// A receipt at the chain's next position, altered by `edit` after it was filled in
    /// honestly (the chain does not advance).
    pub fn sign(
        &self,
        agent: &SignedManifest,
        caller: &SecretKey,
        outcome: Outcome,
        seq: u64,
        prev: Option<Hash>,
        edit: impl FnOnce(&mut Receipt),
    ) -> (SignedReceipt, SignedRequest) {
        let input_hash = request_hash("offer", caller.public().to_hex().as_bytes());
        let now = crate::rules::now_ms();
        let request = Signed::sign(
            CallRequest {
                caller: caller.public(),
                host: self.key.public(),
                agent: agent.hash(),
                input_hash,
                fuel_limit: agent.body().limits.max_fuel,
                nonce: CallRequest::new_nonce(),
                expires_at_ms: now + 60_000,
            },
            caller,
        )
        .unwrap();
        let fuel_used = agent.body().limits.max_fuel / 2;
        let mut body = Receipt {
            agent: AgentRef {
                manifest: agent.hash(),
                component: agent.body().component.hash,
            },
            request: Some(request.hash()),
            caller: Some(caller.public()),
            input_hash,
            output_hash: None,
            outcome,
            fuel_limit: agent.body().limits.max_fuel,
            fuel_used,
            charge: crate::rules::charge_for(fuel_used, agent.body().price_per_mfuel),
            wall_time_us: 100,
            nested: vec![],
            parent_call: None,
            host: self.key.public(),
            runtime: "wasmtime 48".into(),
            profile: None,
            environment: None,
            input_size: None,
            transcript: None,
            seq,
            prev,
            timestamp_ms: now,
            limits: None,
            model_usage: vec![],
            egress: None,
        };
        edit(&mut body);
        (Signed::sign(body, &self.key).unwrap(), request)
    }
}

/// Feedback by `rater` on `receipt`.
pub(crate) fn feedback(rater: &SecretKey, receipt: &SignedReceipt, score: u8) -> SignedFeedback {
    Signed::sign(
        Feedback {
            receipt: receipt.hash(),
            rater: rater.public(),
            score,
            tags: vec![],
            created_at_ms: crate::rules::now_ms(),
        },
        rater,
    )
    .unwrap()
}

pub(crate) fn receipt(host: &SecretKey, seq: u64, prev: Option<Hash>) -> Receipt {
    Receipt {
        agent: AgentRef {
            manifest: Hash::of(b"m"),
            component: Hash::of(b"c"),
        },
        request: None,
        caller: None,
        input_hash: request_hash("offer", b"{}"),
        output_hash: Some(Hash::of(b"out")),
        outcome: Outcome::Ok,
        fuel_limit: 10,
        fuel_used: 5,
        charge: 0,
        wall_time_us: 12,
        nested: vec![],
        parent_call: None,
        host: host.public(),
        runtime: "wasmtime 48".into(),
        profile: None,
        environment: None,
        input_size: None,
        transcript: None,
        seq,
        prev,
        timestamp_ms: 1,
        limits: None,
        model_usage: vec![],
        egress: None,
    }
}

#[test]
fn a_manifest_verifies_and_every_changed_byte_breaks_it() {
    let key = SecretKey::generate();
    let signed = Signed::sign(manifest(&key, "1.0.0", b"wasm"), &key).unwrap();
    let parsed = SignedManifest::from_bytes(signed.as_bytes()).unwrap();
    assert_eq!(parsed.body(), signed.body());
    assert_eq!(parsed.hash(), signed.hash());

    for index in 0..signed.as_bytes().len() {
        let mut altered = signed.as_bytes().to_vec();
        altered[index] ^= 0x01;
        assert!(
            SignedManifest::from_bytes(&altered).is_err(),
            "flipping a bit of byte {index} went unnoticed"
        );
    }
}

#[test]
fn a_receipt_verifies_and_a_changed_byte_breaks_it() {
    let key = SecretKey::generate();
    let signed = Signed::sign(receipt(&key, 0, None), &key).unwrap();
    assert!(SignedReceipt::from_bytes(signed.as_bytes()).is_ok());
    for index in 0..signed.as_bytes().len() {
        let mut altered = signed.as_bytes().to_vec();
        altered[index] = altered[index].wrapping_add(1);
        assert!(SignedReceipt::from_bytes(&altered).is_err(), "byte {index}");
    }
}

#[test]
fn a_signature_is_bound_to_its_record_type() {
    let key = SecretKey::generate();
    let signed = Signed::sign(manifest(&key, "1.0.0", b"wasm"), &key).unwrap();
    let text = String::from_utf8(signed.as_bytes().to_vec()).unwrap();
    let retagged = text.replace("agora/manifest/v1", "agora/receipt/v1");
    let err = SignedManifest::from_bytes(retagged.as_bytes()).unwrap_err();
    assert!(matches!(err, Error::WrongTag { .. }), "{err}");
}

#[test]
fn a_receipt_naming_a_profile_is_v2_one_without_is_v1_and_neither_reads_as_the_other() {
    let key = SecretKey::generate();
    let v1 = Signed::sign(receipt(&key, 0, None), &key).unwrap();
    let v2 = Signed::sign(
        Receipt {
            profile: Some(Hash::of(b"agora-det/1")),
            ..receipt(&key, 0, None)
        },
        &key,
    )
    .unwrap();
    for (signed, tag) in [(&v1, RECEIPT_V1_TAG), (&v2, RECEIPT_V2_TAG)] {
        let text = std::str::from_utf8(signed.as_bytes()).unwrap();
        assert!(text.starts_with(&format!("{{\"tag\":\"{tag}\"")), "{text}");
        assert!(
            SignedReceipt::from_bytes(signed.as_bytes()).is_ok(),
            "{tag}"
        );
    }

    // A v2 body signed under the v1 tag (by the right key) is refused, and so is the reverse:
    // a verifier never reads a body as a version its host did not sign.
    for (signed, other) in [(&v2, RECEIPT_V1_TAG), (&v1, RECEIPT_V2_TAG)] {
        let body = serde_json::to_vec(signed.body()).unwrap();
        let signature = key.sign_raw(&identity::domain_separated(other, &body));
        let forged = format!(
            "{{\"tag\":\"{other}\",\"body\":{},\"signature\":\"{}\"}}",
            String::from_utf8(body).unwrap(),
            hex::encode(signature)
        );
        let err = SignedReceipt::from_bytes(forged.as_bytes()).unwrap_err();
        assert!(matches!(err, Error::WrongTag { .. }), "{err}");
    }
}

#[test]
fn a_record_cannot_be_signed_by_a_key_it_does_not_name() {
    let publisher = SecretKey::generate();
    let impostor = SecretKey::generate();
    let err = Signed::sign(manifest(&publisher, "1.0.0", b"wasm"), &impostor).unwrap_err();
    assert!(matches!(err, Error::WrongSigner { .. }), "{err}");
}

#[test]
fn weak_keys_are_rejected() {
    // The identity point: a small-order key under which one signature verifies many messages.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let err = PublicKey::from_bytes(identity).unwrap_err();
    assert!(err.to_string().contains("weak"), "{err}");
}

#[test]
fn key_files_are_private_and_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys/host.key");
    let key = SecretKey::generate();
    key.write_new(&path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(SecretKey::load(&path).unwrap().public(), key.public());
    assert!(SecretKey::generate().write_new(&path).is_err());
    assert_eq!(SecretKey::load(&path).unwrap().public(), key.public());
    assert!(!format!("{key:?}").contains(&hex::encode(key.to_bytes())));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = SecretKey::load(&path).unwrap_err();
        assert!(
            matches!(error, Error::KeyFileExposed { mode: 0o644, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("chmod 600"), "{error}");
    }
}

#[test]
#[cfg(unix)]
fn the_registry_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let registry = Registry::open(&path).unwrap();
    registry
        .append_receipt(
            &SecretKey::generate(),
            receipt(&SecretKey::generate(), 0, None),
        )
        .ok();
    drop(registry);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn releases_are_immutable() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
    let key = SecretKey::generate();
    let first = Signed::sign(manifest(&key, "1.0.0", b"v1"), &key).unwrap();
    assert_eq!(registry.insert_manifest(&first).unwrap(), Inserted::New);
    let same_code = Signed::sign(manifest(&key, "1.0.0", b"v1"), &key).unwrap();
    assert_eq!(
        registry.insert_manifest(&same_code).unwrap(),
        Inserted::AlreadyPresent
    );
    let other_code = Signed::sign(manifest(&key, "1.0.0", b"v2"), &key).unwrap();
    let err = registry.insert_manifest(&other_code).unwrap_err();
    assert!(matches!(err, Error::ReleaseConflict { .. }), "{err}");
    let next = Signed::sign(manifest(&key, "1.1.0", b"v2"), &key).unwrap();
    assert_eq!(registry.insert_manifest(&next).unwrap(), Inserted::New);
    assert_eq!(
        registry
            .resolve("energy-trader", &[key.public()])
            .unwrap()
            .body()
            .version,
        "1.1.0"
    );
    assert_eq!(
        registry
            .resolve("energy-trader@1.0.0", &[key.public()])
            .unwrap()
            .hash(),
        first.hash()
    );
    assert_eq!(
        registry
            .resolve(&Hash::of(b"v2").to_hex(), &[key.public()])
            .unwrap()
            .hash(),
        next.hash()
    );
}

#[test]
fn the_receipt_chain_links_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let host = SecretKey::generate();
    {
        let registry = Registry::open(&path).unwrap();
        for _ in 0..3 {
            registry
                .append_receipt(&host, receipt(&host, 0, None))
                .unwrap();
        }
    }
    let registry = Registry::open(&path).unwrap();
    registry
        .append_receipt(&host, receipt(&host, 0, None))
        .unwrap();
    let chain = registry.receipt_chain(&host.public()).unwrap();
    assert_eq!(chain.len(), 4);
    assert_eq!(chain[0].body().prev, None);
    for (index, pair) in chain.windows(2).enumerate() {
        assert_eq!(pair[1].body().seq, index as u64 + 1);
        assert_eq!(pair[1].body().prev, Some(pair[0].hash()));
    }
}

#[test]
fn agent_memory_is_bounded_and_private_to_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
    let publisher = SecretKey::generate().public();
    let ns = KvNamespace {
        publisher,
        agent: "energy-trader".into(),
    };
    let other = KvNamespace {
        publisher: SecretKey::generate().public(),
        agent: "energy-trader".into(),
    };
    let quota = KvQuota {
        max_key_bytes: 8,
        max_value_bytes: 16,
        max_total_bytes: 23,
    };
    registry.kv_set(&ns, "k", b"value", &quota).unwrap();
    assert_eq!(
        registry.kv_get(&ns, "k").unwrap().as_deref(),
        Some(&b"value"[..])
    );
    assert_eq!(registry.kv_get(&other, "k").unwrap(), None);
    assert!(registry.kv_set(&ns, "much-too-long", b"", &quota).is_err());
    assert!(registry.kv_set(&ns, "k2", &[0; 17], &quota).is_err());
    assert!(
        registry.kv_set(&ns, "k2", &[0; 16], &quota).is_err(),
        "total over quota"
    );
    // Overwriting a key does not count its old value against the quota.
    registry.kv_set(&ns, "k", &[1; 16], &quota).unwrap();
}

#[test]
fn a_host_cannot_rate_calls_it_ran_itself() {
    let publisher = SecretKey::generate();
    let host = SecretKey::generate();
    let mut body = receipt(&host, 0, None);
    body.caller = Some(host.public());
    body.request = Some(Hash::of(b"request"));
    let signed = Signed::sign(body, &host).unwrap();
    let rating = Feedback {
        receipt: signed.hash(),
        rater: host.public(),
        score: 100,
        tags: vec![],
        created_at_ms: 0,
    };
    assert_eq!(
        rating.validate(&signed, &publisher.public()),
        Err(FeedbackError::RaterIsHost(host.public()))
    );
    let independent = SecretKey::generate();
    let mut body = receipt(&host, 1, None);
    body.caller = Some(independent.public());
    body.request = Some(Hash::of(b"request 2"));
    let signed = Signed::sign(body, &host).unwrap();
    let rating = Feedback {
        receipt: signed.hash(),
        rater: independent.public(),
        score: 100,
        tags: vec!["fast".into()],
        created_at_ms: 0,
    };
    assert_eq!(rating.validate(&signed, &publisher.public()), Ok(()));
}

#[test]
fn batch_parsing_judges_each_record_as_parsing_it_alone_would() {
    let host = SecretKey::generate();
    let signed: Vec<SignedReceipt> = (0..300)
        .map(|seq| Signed::sign(receipt(&host, seq, None), &host).unwrap())
        .collect();
    let mut bytes: Vec<Vec<u8>> = signed.iter().map(|r| r.as_bytes().to_vec()).collect();
    // A forged signature in the middle of the batch and a truncated record near its end.
    let forged = 150;
    let position = bytes[forged].len() - 4;
    bytes[forged][position] = if bytes[forged][position] == b'0' {
        b'1'
    } else {
        b'0'
    };
    bytes[290].truncate(40);
    let slices: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    let results = SignedReceipt::from_bytes_batch(&slices);
    assert_eq!(results.len(), 300);
    for (index, result) in results.iter().enumerate() {
        match index {
            150 => assert!(
                matches!(result, Err(Error::BadSignature { .. })),
                "{result:?}"
            ),
            290 => assert!(matches!(result, Err(Error::Malformed { .. })), "{result:?}"),
            _ => assert_eq!(result.as_ref().unwrap().hash(), signed[index].hash()),
        }
    }
}

#[test]
fn a_failing_write_in_a_batch_leaves_the_others_committed() {
    let dir = tempfile::tempdir().unwrap();
    let registry = std::sync::Arc::new(Registry::open(&dir.path().join("registry.db")).unwrap());
    let key = SecretKey::generate();
    let first = Signed::sign(manifest(&key, "1.0.0", b"v1"), &key).unwrap();
    registry.insert_manifest(&first).unwrap();
    // Many writers at once, so that the writer thread commits several in one transaction; one
    // of them is refused (a conflicting release) and must take nothing else down with it.
    let writers: Vec<_> = (0..32)
        .map(|i| {
            let registry = registry.clone();
            let key = key.clone();
            std::thread::spawn(move || {
                let version = if i == 7 {
                    "1.0.0".to_owned()
                } else {
                    format!("2.{i}.0")
                };
                let code = format!("code {i}");
                let signed = Signed::sign(manifest(&key, &version, code.as_bytes()), &key).unwrap();
                registry.insert_manifest(&signed)
            })
        })
        .collect();
    let results: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    for (i, result) in results.iter().enumerate() {
        if i == 7 {
            assert!(
                matches!(result, Err(Error::ReleaseConflict { .. })),
                "{result:?}"
            );
        } else {
            assert_eq!(result.as_ref().unwrap(), &Inserted::New);
        }
    }
    assert_eq!(registry.manifests().unwrap().len(), 32);
}

#[test]
fn reads_do_not_wait_for_a_write_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let registry = std::sync::Arc::new(Registry::open(&path).unwrap());
    let key = SecretKey::generate();
    let first = Signed::sign(manifest(&key, "1.0.0", b"v1"), &key).unwrap();
    registry.insert_manifest(&first).unwrap();

    // Another process (here: another connection) holds the write lock, so the registry's own
    // write queues behind it...
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let writer = {
        let registry = registry.clone();
        let key = key.clone();
        std::thread::spawn(move || {
            let next = Signed::sign(manifest(&key, "1.1.0", b"v2"), &key).unwrap();
            registry.insert_manifest(&next)
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    // ...while reads go ahead and see the last committed state.
    assert_eq!(registry.manifests().unwrap().len(), 1);
    assert_eq!(
        registry
            .resolve("energy-trader", &[key.public()])
            .unwrap()
            .hash(),
        first.hash()
    );
    assert!(
        !writer.is_finished(),
        "the write should still be waiting for the lock"
    );
    other.execute_batch("COMMIT").unwrap();
    assert_eq!(writer.join().unwrap().unwrap(), Inserted::New);
    assert_eq!(registry.manifests().unwrap().len(), 2);
}

#[test]
fn receipts_page_by_cursor_without_gaps_or_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
    let host = SecretKey::generate();
    for _ in 0..7 {
        registry
            .append_receipt(&host, receipt(&host, 0, None))
            .unwrap();
    }
    let manifest = Hash::of(b"m");
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = registry.receipts_page(&manifest, cursor, 3).unwrap();
        seen.extend(page.parse().unwrap().iter().map(|r| r.body().seq));
        match page.next {
            Some(next) => cursor = Some(next.to_string().parse().unwrap()),
            None => break,
        }
    }
    assert_eq!(seen, vec![6, 5, 4, 3, 2, 1, 0]);
    assert!("-1".parse::<ReceiptCursor>().is_err());
    assert!("abc".parse::<ReceiptCursor>().is_err());
    let record = registry.host_record(&host.public()).unwrap();
    assert_eq!(record.receipts, 7);
    assert_eq!(record.head.map(|(seq, _)| seq), Some(6));
    assert!(record.forks.is_empty());
}

#[test]
fn evidence_read_in_steps_equals_evidence_read_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
    let publisher = SecretKey::generate();
    let agent = Signed::sign(manifest(&publisher, "1.0.0", b"code"), &publisher).unwrap();
    registry.insert_manifest(&agent).unwrap();
    let mut host = Chain::new();
    let callers: Vec<SecretKey> = (0..4).map(|_| SecretKey::generate()).collect();
    let rate = |receipt: &SignedReceipt, caller: &SecretKey, score: u8| {
        registry
            .insert_feedback(&feedback(caller, receipt, score))
            .unwrap();
    };

    let early: Vec<(SignedReceipt, Option<SignedRequest>)> = (0..3)
        .map(|i| host.call(&agent, &callers[i], Outcome::Ok))
        .map(|(r, q)| (r, Some(q)))
        .collect();
    for answer in registry.insert_receipts(early.clone()).unwrap() {
        assert_eq!(answer.unwrap(), Inserted::New);
    }
    rate(&early[0].0, &callers[0], 80);
    let mut stepwise = reputation::EvidenceSet::default();
    let first = registry
        .update_evidence(&mut stepwise, EvidenceCursor::default())
        .unwrap();
    assert_eq!(stepwise.calls().len(), 3);

    // More calls, feedback on an old call and on a new one, and a fork.
    let (late, request) = host.call(&agent, &callers[3], Outcome::Ok);
    registry.insert_receipt(&late, Some(&request)).unwrap();
    rate(&early[1].0, &callers[1], 20);
    rate(&late, &callers[3], 100);
    let (fork, request) = host.fork(&agent, &callers[2], 0);
    registry.insert_receipt(&fork, Some(&request)).unwrap();
    let second = registry.update_evidence(&mut stepwise, first).unwrap();
    assert_ne!(second, first);
    assert_eq!(stepwise, registry.evidence_set().unwrap());
    assert_eq!(stepwise.calls().len(), 5);
    assert!(stepwise.dishonest.contains(&host.key.public()));
    assert_eq!(
        stepwise
            .calls()
            .iter()
            .filter(|c| c.rating.is_some())
            .count(),
        3
    );

    // Nothing new: nothing changes.
    let before = stepwise.clone();
    assert_eq!(
        registry.update_evidence(&mut stepwise, second).unwrap(),
        second
    );
    assert_eq!(stepwise, before);
}

mod attacks;
mod capabilities;
mod crash;
mod pipelined;
mod quotas;
