//! Attacks by hosts through their receipts: fabricated failures, inflated charges, future dates,
//! broken or withheld chains, receipts that contradict their request, limits that were not the
//! publisher's, free calls multiplied into rings.

use super::*;

#[test]
fn fabricated_failures_without_a_callers_request_are_refused() {
    let market = Market::new(10, 600);
    let victim = market.best();
    let before = market.scores();
    let mut liar = Chain::new();
    let caller = SecretKey::generate();
    let mut fabricated = Vec::new();
    for seq in 0..3 {
        let (receipt, _request) = liar.sign(
            victim,
            &caller,
            Outcome::Trap {
                code: Some(TrapCode::Unreachable),
                message: "unreachable".into(),
            },
            seq,
            liar.head.map(|(_, h)| h),
            |_| {},
        );
        liar.head = Some((seq, receipt.hash()));
        fabricated.push((receipt, None));
    }
    for answer in market.store(fabricated) {
        let refused = answer.unwrap_err().to_string();
        assert!(refused.contains("did not come with it"), "{refused}");
    }
    assert_eq!(market.scores().of(victim.body()), before.of(victim.body()));
}

#[test]
fn an_inflated_charge_is_refused_and_recorded_against_the_host() {
    let market = Market::new(5, 200);
    let host = &market.hosts[1];
    let head = market
        .registry
        .host_record(&host.key.public())
        .unwrap()
        .head;
    let (receipt, request) = host.sign(
        &market.agents[0].0,
        &market.callers[0],
        Outcome::Ok,
        head.map_or(0, |(s, _)| s + 1),
        head.map(|(_, h)| h),
        |r| r.charge *= 10,
    );
    let refused = market
        .registry
        .insert_receipt(&receipt, Some(&request))
        .unwrap_err()
        .to_string();
    assert!(refused.contains("charge"), "{refused}");
    let record = market.registry.host_record(&host.key.public()).unwrap();
    assert_eq!(record.misbehaviour.len(), 1, "{record:?}");
    assert_eq!(record.misbehaviour[0].kind, "charge");
    let scores = market.scores();
    assert_eq!(scores.trust_in(&host.key.public()), 0.0);
    // Nothing the host signed counts any more: every agent's evidence is what the other
    // hosts reported.
    let evidence = market.registry.evidence_set().unwrap();
    assert!(evidence.dishonest.contains(&host.key.public()));
}

#[test]
fn a_future_dated_receipt_is_refused() {
    let market = Market::new(3, 10);
    let host = &market.hosts[0];
    let head = market
        .registry
        .host_record(&host.key.public())
        .unwrap()
        .head;
    let (receipt, request) = host.sign(
        &market.agents[0].0,
        &market.callers[0],
        Outcome::Ok,
        head.map_or(0, |(s, _)| s + 1),
        head.map(|(_, h)| h),
        |r| r.timestamp_ms += 365 * 24 * 3_600_000,
    );
    let refused = market
        .registry
        .insert_receipt(&receipt, Some(&request))
        .unwrap_err()
        .to_string();
    assert!(refused.contains("in the future"), "{refused}");
}

#[test]
fn a_receipt_that_breaks_its_hosts_chain_is_recorded_against_the_host() {
    let market = Market::new(3, 30);
    let host = &market.hosts[2];
    let (seq, _) = market
        .registry
        .host_record(&host.key.public())
        .unwrap()
        .head
        .unwrap();
    // The next receipt names some other receipt as its predecessor.
    let (receipt, request) = host.sign(
        &market.agents[0].0,
        &market.callers[0],
        Outcome::Ok,
        seq + 1,
        Some(Hash::of(b"a history nobody else saw")),
        |_| {},
    );
    market
        .registry
        .insert_receipt(&receipt, Some(&request))
        .unwrap();
    let record = market.registry.host_record(&host.key.public()).unwrap();
    assert_eq!(record.misbehaviour.len(), 1);
    assert_eq!(record.misbehaviour[0].kind, "broken-link");
    assert_eq!(market.scores().trust_in(&host.key.public()), 0.0);
}

#[test]
fn a_receipt_that_contradicts_its_callers_request_is_refused_and_recorded() {
    let market = Market::new(3, 10);
    let host = &market.hosts[0];
    let head = market
        .registry
        .host_record(&host.key.public())
        .unwrap()
        .head;
    let (receipt, request) = host.sign(
        &market.agents[0].0,
        &market.callers[0],
        Outcome::Ok,
        head.map_or(0, |(s, _)| s + 1),
        head.map(|(_, h)| h),
        |r| r.caller = Some(market.callers[1].public()),
    );
    assert!(
        market
            .registry
            .insert_receipt(&receipt, Some(&request))
            .is_err()
    );
    let record = market.registry.host_record(&host.key.public()).unwrap();
    assert_eq!(record.misbehaviour[0].kind, "request-mismatch");
}

#[test]
fn one_free_call_and_a_ring_of_20000_fabricated_receipts_gain_nothing() {
    let market = Market::new(10, 600);
    let before = market.scores();
    let victim = market.best();
    // The attacker's agent, one real call at this host by a Sybil caller...
    let attacker = SecretKey::generate();
    let agent = agent_manifest(&attacker, "attacker", b"attacker code");
    market.registry.insert_manifest(&agent).unwrap();
    let sybils: Vec<SecretKey> = (0..20).map(|_| SecretKey::generate()).collect();
    let mut anchor_host = market.resume(0);
    let (receipt, request) = anchor_host.call(&agent, &sybils[0], Outcome::Ok);
    market
        .registry
        .insert_receipt(&receipt, Some(&request))
        .unwrap();
    market
        .registry
        .insert_feedback(&feedback(&sybils[0], &receipt, 100))
        .unwrap();
    // ...then a ring of Sybil hosts signing 20,000 calls by Sybil callers, all rated 100.
    let mut ring: Vec<Chain> = (0..10).map(|_| Chain::new()).collect();
    let mut receipts = Vec::new();
    let mut ratings = Vec::new();
    for i in 0..20_000 {
        let caller = &sybils[i % sybils.len()];
        let (receipt, request) = ring[i % 10].call(&agent, caller, Outcome::Ok);
        ratings.push(feedback(caller, &receipt, 100));
        receipts.push((receipt, Some(request)));
    }
    market.store(receipts);
    market.registry.insert_feedback_batch(ratings).unwrap();
    let after = market.scores();
    let ring_trust: f64 = ring
        .iter()
        .map(|h| after.trust_in(&h.key.public()))
        .chain(sybils.iter().map(|s| after.trust_in(&s.public())))
        .sum();
    assert_eq!(ring_trust, 0.0);
    assert_eq!(after.of(agent.body()).evidence, 0);
    assert_eq!(market.rank(&after, victim), market.rank(&before, victim));
}

#[test]
fn a_host_that_withholds_a_receipt_loses_every_receipt_after_it() {
    let market = Market::new(5, 200);
    let victim = &market.agents[0].0;
    let mut host = market.resume(1);
    // The host signs a trap, then ten rated calls, and withholds the trap.
    let (trap, trap_request) = host.call(
        victim,
        &market.callers[0],
        Outcome::Trap {
            code: Some(TrapCode::Unreachable),
            message: "unreachable".into(),
        },
    );
    let mut later = Vec::new();
    let mut ratings = Vec::new();
    for caller in &market.callers[1..11] {
        let (receipt, request) = host.call(victim, caller, Outcome::Ok);
        ratings.push(feedback(caller, &receipt, 100));
        later.push((receipt, Some(request)));
    }
    let before = market.scores();
    market.store(later);
    market.registry.insert_feedback_batch(ratings).unwrap();
    let record = market.registry.host_record(&host.key.public()).unwrap();
    assert_eq!(record.missing, 1);
    assert_eq!(
        market.scores().of(victim.body()),
        before.of(victim.body()),
        "nothing after the gap counts"
    );
    // Once the withheld receipt arrives, all of it counts, the trap too.
    market
        .registry
        .insert_receipt(&trap, Some(&trap_request))
        .unwrap();
    assert_eq!(
        market
            .registry
            .host_record(&host.key.public())
            .unwrap()
            .missing,
        0
    );
    let after = market.scores().of(victim.body());
    assert_eq!(after.evidence, before.of(victim.body()).evidence + 11);
}

#[test]
fn a_refused_receipt_leaves_no_request_behind() {
    let market = Market::new(3, 10);
    let host = &market.hosts[0];
    let head = market
        .registry
        .host_record(&host.key.public())
        .unwrap()
        .head;
    let (receipt, request) = host.sign(
        &market.agents[0].0,
        &market.callers[0],
        Outcome::Ok,
        head.map_or(0, |(s, _)| s + 1),
        head.map(|(_, h)| h),
        |r| r.timestamp_ms += 365 * 24 * 3_600_000,
    );
    assert!(
        market
            .registry
            .insert_receipt(&receipt, Some(&request))
            .is_err()
    );
    assert!(market.registry.request(&request.hash()).unwrap().is_none());
}

#[test]
fn expired_requests_that_no_receipt_answers_are_pruned_and_answered_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
    let host = SecretKey::generate();
    let publisher = SecretKey::generate();
    let agent = agent_manifest(&publisher, "pruned", b"pruned");
    registry.insert_manifest(&agent).unwrap();
    let now = rules::now_ms();
    let request = |caller: &SecretKey| {
        Signed::sign(
            CallRequest {
                caller: caller.public(),
                host: host.public(),
                agent: agent.hash(),
                input_hash: request_hash("offer", b"{}"),
                fuel_limit: 1_000,
                nonce: CallRequest::new_nonce(),
                expires_at_ms: now + 60_000,
            },
            caller,
        )
        .unwrap()
    };
    let (unanswered, answered) = (
        request(&SecretKey::generate()),
        request(&SecretKey::generate()),
    );
    registry
        .admit_request(&unanswered, &host.public(), now)
        .unwrap();
    registry
        .admit_request(&answered, &host.public(), now)
        .unwrap();
    let mut body = crate::tests::receipt(&host, 0, None);
    body.agent = AgentRef {
        manifest: agent.hash(),
        component: agent.body().component.hash,
    };
    body.request = Some(answered.hash());
    body.caller = Some(answered.body().caller);
    registry.append_receipt(&host, body).unwrap();
    // Nothing goes before expiry.
    assert_eq!(registry.prune_requests(now).unwrap(), 0);
    let later = now + 60_000 + rules::MAX_CLOCK_SKEW_MS + 1;
    assert_eq!(registry.prune_requests(later).unwrap(), 1);
    assert!(registry.request(&unanswered.hash()).unwrap().is_none());
    assert!(registry.request(&answered.hash()).unwrap().is_some());
}

#[test]
fn a_limit_counts_against_an_agent_only_when_it_was_the_publishers_own_and_reproducible() {
    let market = Market::new(3, 10);
    let agent = &market.agents[0].0;
    let manifest_memory = agent.body().limits.max_memory_bytes;
    let mut host = market.resume(0);
    let mut hit = |memory_bytes: u64, outcome: Outcome| {
        let seq = host.head.map_or(0, |(s, _)| s + 1);
        let (receipt, request) = host.sign(
            agent,
            &market.callers[0],
            outcome,
            seq,
            host.head.map(|(_, h)| h),
            |r| {
                r.limits = Some(CallLimits {
                    memory_bytes,
                    wall_ms: 1_000,
                    output_bytes: 1 << 16,
                })
            },
        );
        let answer = market.registry.insert_receipt(&receipt, Some(&request));
        if answer.is_ok() {
            host.head = Some((seq, receipt.hash()));
        }
        answer
    };
    let before = market.scores().of(agent.body());
    // A host whose own cap is below the manifest's: not the agent's fault.
    hit(manifest_memory / 2, Outcome::MemoryLimit).unwrap();
    // A timeout: the host's load, never the agent's fault.
    hit(manifest_memory, Outcome::Timeout).unwrap();
    // Nor a stack overflow: how deep a guest gets depends on the host's compiler and CPU.
    hit(manifest_memory, Outcome::StackOverflow).unwrap();
    assert_eq!(market.scores().of(agent.body()).negative, before.negative);
    // The publisher's own limit: the agent's fault.
    hit(manifest_memory, Outcome::MemoryLimit).unwrap();
    assert!(market.scores().of(agent.body()).negative > before.negative);
    // Claiming a limit above the manifest's is refused and held against the host.
    let refused = hit(manifest_memory * 2, Outcome::MemoryLimit).unwrap_err();
    assert!(
        refused.to_string().contains("max_memory_bytes"),
        "{refused}"
    );
    let record = market.registry.host_record(&host.key.public()).unwrap();
    assert_eq!(record.misbehaviour[0].kind, "over-limit");
}

#[test]
fn a_receipt_its_host_cannot_back_counts_for_nothing_and_the_chain_after_it_still_does() {
    let market = Market::new(5, 200);
    let victim = &market.agents[0].0;
    let mut host = market.resume(1);
    // Ten rated calls; the host cannot produce the input or transcript of the first.
    let mut receipts = Vec::new();
    let mut ratings = Vec::new();
    for caller in &market.callers[1..11] {
        let (receipt, request) = host.call(victim, caller, Outcome::Ok);
        ratings.push(feedback(caller, &receipt, 100));
        receipts.push((receipt, Some(request)));
    }
    let unbacked = receipts[0].0.clone();
    market.store(receipts);
    market.registry.insert_feedback_batch(ratings).unwrap();
    let before = market.scores().of(victim.body());

    market
        .registry
        .mark_unbacked(&unbacked, "its host does not keep its transcript")
        .unwrap();
    assert_eq!(
        market
            .registry
            .unbacked_receipts(&host.key.public())
            .unwrap(),
        vec![(
            unbacked.hash(),
            "its host does not keep its transcript".to_owned()
        )]
    );
    let after = market.scores().of(victim.body());
    // One call fewer: the nine after it in the chain still count.
    assert_eq!(after.evidence + 1, before.evidence);
    assert!(after.positive < before.positive);
    // Marking it again changes nothing.
    market.registry.mark_unbacked(&unbacked, "again").unwrap();
    assert_eq!(market.scores().of(victim.body()), after);
}

/// A receipt that spent `amount` besides its fuel (`spend` records what on) is stored when its
/// charge includes it, and refused, saying `says` and held against its host, when it does not.
fn a_charge_must_include(amount: u64, spend: impl Fn(&mut Receipt), says: &str) {
    let market = Market::new(5, 200);
    let host = &market.hosts[2];
    let next = |registry: &crate::Registry| {
        let head = registry.host_record(&host.key.public()).unwrap().head;
        (head.map_or(0, |(s, _)| s + 1), head.map(|(_, h)| h))
    };

    // Charged for what it spent, and its charge says so: stored.
    let (seq, prev) = next(&market.registry);
    let (honest, request) = host.sign(
        &market.agents[0].0,
        &market.callers[0],
        Outcome::Ok,
        seq,
        prev,
        |r| {
            spend(r);
            r.charge += amount;
        },
    );
    market
        .registry
        .insert_receipt(&honest, Some(&request))
        .unwrap();

    // A charge its total leaves out: refused, and held against the host.
    let (seq, prev) = next(&market.registry);
    let (padded, request) = host.sign(
        &market.agents[0].0,
        &market.callers[1],
        Outcome::Ok,
        seq,
        prev,
        &spend,
    );
    let refused = market
        .registry
        .insert_receipt(&padded, Some(&request))
        .unwrap_err()
        .to_string();
    assert!(refused.contains(says), "{refused}");
    let record = market.registry.host_record(&host.key.public()).unwrap();
    assert_eq!(record.misbehaviour[0].kind, "charge", "{record:?}");
}

#[test]
fn model_tokens_a_receipt_charges_for_must_add_up_to_its_charge() {
    let usage = crate::ModelUsage {
        model: "smollm2-135m-instruct".into(),
        prompt_tokens: 40,
        generated_tokens: 12,
        charge: 52,
    };
    a_charge_must_include(52, |r| r.model_usage = vec![usage.clone()], "model usage");
}

#[test]
fn outbound_bytes_a_receipt_charges_for_must_add_up_to_its_charge() {
    let usage = crate::egress::EgressUsage {
        requests: 2,
        bytes_sent: 300,
        bytes_received: 4_000,
        charge: 43,
    };
    a_charge_must_include(43, |r| r.egress = Some(usage), "outbound HTTP");
}
