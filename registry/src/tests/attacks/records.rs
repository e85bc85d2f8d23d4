//! Attacks through manifests and feedback: fields at their limits, records that arrive out of
//! order or twice, a second manifest for one release, a stranger's same-named manifest.

use super::*;

#[test]
fn a_manifest_with_every_field_at_its_limit_is_accepted_and_one_beyond_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
    let publisher = SecretKey::generate();
    let mut body = crate::tests::manifest(&publisher, "1.0.0", b"max");
    body.limits = ManifestLimits {
        max_fuel: rules::MAX_FUEL,
        max_memory_bytes: rules::MAX_MEMORY_BYTES,
        max_wall_ms: rules::MAX_WALL_MS,
        max_output_bytes: rules::MAX_OUTPUT_BYTES,
    };
    body.price_per_mfuel = rules::MAX_PRICE_PER_MFUEL;
    body.component.size = rules::MAX_COMPONENT_BYTES;
    body.name = "a".repeat(rules::MAX_NAME_BYTES);
    body.description = "d".repeat(rules::MAX_DESCRIPTION_BYTES);
    let at_limit = Signed::sign(body.clone(), &publisher).unwrap();
    assert_eq!(registry.insert_manifest(&at_limit).unwrap(), Inserted::New);

    // A receipt at the largest charge the limits allow is accepted, and scores compute.
    let mut host = Chain::new();
    let caller = SecretKey::generate();
    let (receipt, request) = host.call(&at_limit, &caller, Outcome::Ok);
    registry.insert_receipt(&receipt, Some(&request)).unwrap();
    let evidence = registry.evidence_set().unwrap();
    assert_eq!(evidence.calls().len(), 1);
    assert_eq!(evidence.skipped_rows, 0);

    let mut beyond = body;
    beyond.version = "1.0.1".into();
    beyond.limits.max_fuel = u64::MAX;
    let beyond = Signed::sign(beyond, &publisher).unwrap();
    let refused = registry.insert_manifest(&beyond).unwrap_err().to_string();
    assert!(refused.contains("max_fuel"), "{refused}");
}

#[test]
fn a_stored_manifest_scores_cannot_read_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let registry = Registry::open(&path).unwrap();
    let publisher = SecretKey::generate();
    let good = Signed::sign(
        crate::tests::manifest(&publisher, "1.0.0", b"good"),
        &publisher,
    )
    .unwrap();
    registry.insert_manifest(&good).unwrap();
    // A row as an older agora stored it, before fields were bounded: max_fuel ≥ 2^63 reads
    // back from JSON as a REAL, and migration 6 leaves the column NULL.
    let mut legacy = crate::tests::manifest(&publisher, "2.0.0", b"legacy");
    legacy.limits.max_fuel = u64::MAX;
    let legacy = Signed::sign(legacy, &publisher).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO manifests (hash, name, version, publisher, component_hash, component_size,
                               created_at, signed, max_fuel, price_per_mfuel)
         VALUES (?1, 'energy-trader', '2.0.0', ?2, ?3, 6, 0, ?4, NULL, 7)",
        rusqlite::params![
            legacy.hash().to_hex(),
            publisher.public().to_hex(),
            legacy.body().component.hash.to_hex(),
            legacy.as_bytes()
        ],
    )
    .unwrap();
    let evidence = registry.evidence_set().unwrap();
    assert_eq!(evidence.skipped_rows, 1);
    assert!(evidence.agents.contains_key(&good.hash()));
}

#[test]
fn feedback_before_its_receipt_and_a_receipt_before_its_manifest_are_kept_and_applied() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
    let publisher = SecretKey::generate();
    let agent = agent_manifest(&publisher, "late", b"late");
    let mut host = Chain::new();
    let caller = SecretKey::generate();
    let (receipt, request) = host.call(&agent, &caller, Outcome::Ok);
    let rating = feedback(&caller, &receipt, 90);
    assert_eq!(
        registry.insert_feedback(&rating).unwrap(),
        Inserted::Pending
    );
    assert_eq!(
        registry.insert_receipt(&receipt, Some(&request)).unwrap(),
        Inserted::Pending
    );
    assert!(registry.receipt(&receipt.hash()).unwrap().is_none());
    registry.insert_manifest(&agent).unwrap();
    assert!(registry.receipt(&receipt.hash()).unwrap().is_some());
    assert_eq!(
        registry.feedback(&receipt.hash()).unwrap().unwrap().hash(),
        rating.hash()
    );
}

#[test]
fn double_signed_feedback_is_recorded_the_same_way_whatever_order_it_arrives_in() {
    let publisher = SecretKey::generate();
    let agent = agent_manifest(&publisher, "rated", b"rated");
    let mut host = Chain::new();
    let caller = SecretKey::generate();
    let (receipt, request) = host.call(&agent, &caller, Outcome::Ok);
    let (good, bad) = (
        feedback(&caller, &receipt, 100),
        feedback(&caller, &receipt, 0),
    );
    let mut scores = Vec::new();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    for (dir, order) in dirs.iter().zip([[&good, &bad], [&bad, &good]]) {
        let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
        registry.insert_manifest(&agent).unwrap();
        registry.insert_receipt(&receipt, Some(&request)).unwrap();
        registry.insert_feedback(order[0]).unwrap();
        assert!(matches!(
            registry.insert_feedback(order[1]),
            Err(Error::DuplicateFeedback(_))
        ));
        let against = registry.misbehaviour(&caller.public()).unwrap();
        assert_eq!(against.len(), 1);
        assert_eq!(against[0].kind, "double-feedback");
        let anchors = vec![host.key.public(), caller.public()];
        scores.push(compute(
            &registry.evidence_set().unwrap(),
            &ScoreParams::new(anchors, 1_900_000_000_000),
        ));
    }
    assert_eq!(scores[0], scores[1]);
    assert_eq!(scores[0].of(agent.body()).evidence, 0);
}

#[test]
fn a_second_manifest_for_one_release_is_recorded_against_its_publisher() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
    let publisher = SecretKey::generate();
    let first = Signed::sign(
        crate::tests::manifest(&publisher, "1.0.0", b"a"),
        &publisher,
    )
    .unwrap();
    let mut other = crate::tests::manifest(&publisher, "1.0.0", b"a");
    other.limits.max_fuel = 1;
    let other = Signed::sign(other, &publisher).unwrap();
    registry.insert_manifest(&first).unwrap();
    assert!(matches!(
        registry.insert_manifest(&other),
        Err(Error::ReleaseConflict { .. })
    ));
    let against = registry.misbehaviour(&publisher.public()).unwrap();
    assert_eq!(against[0].kind, "double-release");
}

#[test]
fn a_strangers_same_named_manifest_can_neither_break_nor_hijack_a_name() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
    let own = SecretKey::generate();
    let mine = agent_manifest(&own, "ride-driver", b"mine");
    registry.insert_manifest(&mine).unwrap();
    // A stranger gossips the same name, a newer version, and a manifest for our component.
    let stranger = SecretKey::generate();
    let mut theirs = crate::tests::manifest(&stranger, "9.9.9", b"theirs");
    theirs.name = "ride-driver".into();
    theirs.created_at = rules::now_ms() / 1000;
    let theirs = Signed::sign(theirs, &stranger).unwrap();
    registry.insert_manifest(&theirs).unwrap();
    let mut copy = mine.body().clone();
    copy.publisher = stranger.public();
    let copy = Signed::sign(copy, &stranger).unwrap();
    registry.insert_manifest(&copy).unwrap();

    let trusted = [own.public()];
    for reference in [
        "ride-driver".to_owned(),
        "ride-driver@1.0.0".to_owned(),
        mine.body().component.hash.to_hex(),
    ] {
        assert_eq!(
            registry.resolve(&reference, &trusted).unwrap().hash(),
            mine.hash(),
            "{reference}"
        );
    }
    assert!(registry.resolve("ride-driver@9.9.9", &trusted).is_err());
    // The stranger's release is still reachable when asked for by name and publisher, or hash.
    let scoped = format!("{}/ride-driver@9.9.9", stranger.public());
    assert_eq!(
        registry.resolve(&scoped, &trusted).unwrap().hash(),
        theirs.hash()
    );
    assert_eq!(
        registry
            .resolve(&theirs.hash().to_hex(), &trusted)
            .unwrap()
            .hash(),
        theirs.hash()
    );
}
