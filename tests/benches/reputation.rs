//! Reputation at marketplace scale: verified evidence ingest, and reputation queries over HTTP
//! with a million receipts in the registry.
//!
//! `cargo bench -p agora-tests --bench reputation` (or `just bench-reputation`). The first run
//! builds a registry of `AGORA_BENCH_RECEIPTS` (default 1,000,000) receipts from 100 hosts and
//! 5,000 callers in `target/bench-reputation/` through the real ingest path, timing it; later
//! runs reuse it. The query load comes from `wrk` in a second process on loopback (`apt install
//! wrk`); without it the query figures are skipped with a note.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use agora_host::api::{ApiConfig, ApiServer};
use agora_host::{DataDir, Node, NodeConfig, PublishOptions, examples};
use agora_registry::reputation::{EvidenceSet, ScoreParams, compute};
use agora_registry::{
    AgentRef, CallRequest, Feedback, Hash, Outcome, Receipt, SecretKey, Signed, SignedFeedback,
    SignedReceipt, SignedRequest,
};

/// A receipt with the request it answers, as hosts send them.
type Evidence = (SignedReceipt, Option<SignedRequest>);

const HOSTS: usize = 100;
const CALLERS: usize = 5_000;
/// Callers the host's operator vouches for (anchors), so that ratings carry trust.
const VOUCHED: usize = 100;

/// The `i`th caller: derived from its index, so that a rerun over a registry built earlier
/// knows the keys it vouches for.
fn caller(i: usize) -> SecretKey {
    let seed = blake3::hash(format!("agora bench caller {i}").as_bytes());
    SecretKey::from_bytes(seed.as_bytes())
}
/// Receipts signed, verified and stored per batch.
const BATCH: usize = 10_000;
/// One call in this many gets the caller's feedback.
const RATED_ONE_IN: u64 = 5;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let receipts: u64 = std::env::var("AGORA_BENCH_RECEIPTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/bench-reputation")
        .join(receipts.to_string());
    let data_dir = DataDir::new(&root);
    if !data_dir.key_path().exists() {
        std::fs::create_dir_all(&root)?;
        data_dir.keygen()?;
    }
    let node = Node::open(NodeConfig::new(data_dir)).await?;
    let driver = node
        .publish(
            examples::RIDE_DRIVER,
            PublishOptions {
                price_per_mfuel: 1_000,
                ..PublishOptions::default()
            },
        )
        .await?
        .manifest;
    let trader = node
        .publish(examples::ENERGY_TRADER, PublishOptions::default())
        .await?
        .manifest;

    let stored = node.registry().evidence_cursor()?.receipts as u64;
    if stored > 0 && stored < receipts {
        anyhow::bail!(
            "{} holds a partly built registry ({stored} receipts); remove it and run again",
            root.display()
        );
    }
    if stored < receipts {
        println!(
            "building a registry of {receipts} receipts in {}",
            root.display()
        );
        ingest(&node, &[driver.clone(), trader], receipts - stored).await?;
    } else {
        println!(
            "reusing the registry of {stored} receipts in {}",
            root.display()
        );
    }

    let anchors: Vec<_> = std::iter::once(node.public_key())
        .chain((0..VOUCHED).map(|i| caller(i).public()))
        .collect();
    let params = || ScoreParams::new(anchors.clone(), now_ms());
    let clock = Instant::now();
    let mut evidence = EvidenceSet::default();
    let cursor = node
        .registry()
        .update_evidence(&mut evidence, Default::default())?;
    let read = clock.elapsed();
    let clock = Instant::now();
    let scores = compute(&evidence, &params());
    println!(
        "scores over {} receipts: read the evidence {:.2} s, compute {:.2} s ({} keys trusted)",
        evidence.calls().len(),
        read.as_secs_f64(),
        clock.elapsed().as_secs_f64(),
        scores.trust.len(),
    );
    // A refresh after more evidence arrived reads only what is new.
    let newcomer = SecretKey::generate();
    let callers: Vec<SecretKey> = (0..100).map(|_| SecretKey::generate()).collect();
    let mut prevs = vec![None];
    let plan: Vec<_> = (0..10_000u64).map(|i| (u64::MAX - i, 0, i)).collect();
    let fresh = sign_all(
        &plan,
        std::slice::from_ref(&newcomer),
        &callers,
        std::slice::from_ref(&driver),
        now_ms(),
        &mut prevs,
    );
    node.registry().insert_receipts(fresh)?;
    let clock = Instant::now();
    node.registry().update_evidence(&mut evidence, cursor)?;
    let read = clock.elapsed();
    let clock = Instant::now();
    compute(&evidence, &params());
    println!(
        "refresh after 10,000 new receipts: read what is new {:.3} s, compute {:.2} s",
        read.as_secs_f64(),
        clock.elapsed().as_secs_f64(),
    );
    drop((evidence, scores));

    let started = Instant::now();
    let config = ApiConfig {
        extra_anchors: anchors[1..].to_vec(),
        ..ApiConfig::default()
    };
    let server = ApiServer::start(node.clone(), config).await?;
    println!(
        "api start, first score computation over all evidence included: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let base = format!("http://{}", server.addr());
    let reputation = format!("{base}/v1/agents/{}/reputation", driver.hash());
    let receipts_page = format!("{base}/v1/agents/{}/receipts?limit=50", driver.hash());
    let host_record = format!("{base}/v1/hosts/{}", node.public_key());
    for (what, url) in [
        ("reputation", &reputation),
        ("receipts page (50)", &receipts_page),
        ("host record", &host_record),
    ] {
        match load(url).await {
            Some(figures) => println!("{what:<20} {figures}"),
            None => {
                println!("wrk not found: install it (apt install wrk) for the query figures");
                break;
            }
        }
    }
    server.shutdown().await;
    Ok(())
}

/// Signs `count` receipts (and feedback on some) as other hosts and their callers would, then
/// ingests them the way evidence from peers arrives: batch-verified and stored in batched
/// transactions. Prints the rates.
async fn ingest(
    node: &Node,
    agents: &[agora_registry::SignedManifest],
    count: u64,
) -> anyhow::Result<()> {
    let own = SecretKey::load(&node.data_dir().key_path())?;
    let hosts: Vec<SecretKey> = std::iter::once(own)
        .chain((1..HOSTS).map(|_| SecretKey::generate()))
        .collect();
    let callers: Vec<SecretKey> = (0..CALLERS).map(caller).collect();
    // The market's hosts and callers are established ones, whose evidence is not held to the
    // quotas on strangers (10,000 receipts per host, 1,000 ratings per rater).
    node.registry()
        .trust(hosts.iter().chain(&callers).map(SecretKey::public));
    let now = now_ms();
    let mut seqs = vec![0u64; HOSTS];
    let mut prevs: Vec<Option<Hash>> = vec![None; HOSTS];
    let (mut signing, mut verifying, mut storing) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut feedback_time = Duration::ZERO;
    let (mut stored, mut rated) = (0u64, 0u64);
    let mut done = 0u64;
    while done < count {
        let n = (count - done).min(BATCH as u64);
        // Signing stands in for the hosts that produced the evidence; it is not ingest work.
        let clock = Instant::now();
        let mut plan = Vec::with_capacity(n as usize);
        for i in done..done + n {
            let host = (mix(i) % HOSTS as u64) as usize;
            let seq = seqs[host];
            seqs[host] += 1;
            plan.push((i, host, seq));
        }
        let signed = sign_all(&plan, &hosts, &callers, agents, now, &mut prevs);
        let bytes: Vec<(Vec<u8>, Vec<u8>)> = signed
            .iter()
            .map(|(r, q)| {
                (
                    r.as_bytes().to_vec(),
                    q.as_ref().map_or(vec![], |q| q.as_bytes().to_vec()),
                )
            })
            .collect();
        signing += clock.elapsed();

        // Verify both signatures of every message, then check and store: the whole path a
        // receipt from a peer takes.
        let clock = Instant::now();
        let receipts: Vec<&[u8]> = bytes.iter().map(|(r, _)| r.as_slice()).collect();
        let requests: Vec<&[u8]> = bytes.iter().map(|(_, q)| q.as_slice()).collect();
        let verified: Vec<Evidence> = SignedReceipt::from_bytes_batch(&receipts)
            .into_iter()
            .zip(SignedRequest::from_bytes_batch(&requests))
            .map(|(r, q)| Ok::<_, agora_registry::Error>((r?, Some(q?))))
            .collect::<Result<_, _>>()?;
        verifying += clock.elapsed();
        let clock = Instant::now();
        let registry = node.registry();
        for answer in registry.insert_receipts(verified.clone())? {
            answer?;
            stored += 1;
        }
        storing += clock.elapsed();
        let verified: Vec<SignedReceipt> = verified.into_iter().map(|(r, _)| r).collect();

        let ratings: Vec<SignedFeedback> = verified
            .iter()
            .zip(&plan)
            .filter(|(_, (i, _, _))| mix(*i).is_multiple_of(RATED_ONE_IN))
            .map(|(receipt, (i, _, _))| {
                let caller = &callers[(mix(i ^ 0xca11) % CALLERS as u64) as usize];
                let feedback = Feedback {
                    receipt: receipt.hash(),
                    rater: caller.public(),
                    score: 40 + (mix(i ^ 0xfeed) % 61) as u8,
                    tags: vec![],
                    created_at_ms: receipt.body().timestamp_ms + 1_000,
                };
                Signed::sign(feedback, caller).map(|f| f.as_bytes().to_vec())
            })
            .collect::<Result<Vec<_>, _>>()?
            .iter()
            .map(|bytes| Signed::from_bytes(bytes))
            .collect::<Result<_, _>>()?;
        let clock = Instant::now();
        for answer in registry.insert_feedback_batch(ratings)? {
            answer?;
            rated += 1;
        }
        feedback_time += clock.elapsed();
        done += n;
        if done.is_multiple_of(100_000) || done == count {
            println!(
                "  {done} receipts: verify {:.0}/s, store {:.0}/s, verify+store {:.0}/s (signing them took {:.0} s)",
                done as f64 / verifying.as_secs_f64(),
                done as f64 / storing.as_secs_f64(),
                done as f64 / (verifying + storing).as_secs_f64(),
                signing.as_secs_f64(),
            );
        }
    }
    println!(
        "ingest: {stored} receipts in {:.1} s = {:.0} receipts/s verified and stored \
         (batches of {BATCH}: verify {:.1} s on {} threads, store {:.1} s)",
        (verifying + storing).as_secs_f64(),
        stored as f64 / (verifying + storing).as_secs_f64(),
        verifying.as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        storing.as_secs_f64(),
    );
    println!(
        "ingest: {rated} feedback records checked against their receipts and stored in {:.1} s = {:.0}/s",
        feedback_time.as_secs_f64(),
        rated as f64 / feedback_time.as_secs_f64()
    );

    // For contrast, the same work one receipt at a time: a verify and a commit (an fsync) each.
    let sample = 1_000u64;
    let plan: Vec<_> = (count..count + sample)
        .map(|i| {
            let host = (mix(i) % HOSTS as u64) as usize;
            let seq = seqs[host];
            seqs[host] += 1;
            (i, host, seq)
        })
        .collect();
    let signed = sign_all(&plan, &hosts, &callers, agents, now, &mut prevs);
    let clock = Instant::now();
    for (receipt, request) in &signed {
        let message = agora_registry::ReceiptMessage::encode(receipt, request.as_ref());
        let (receipt, request) = agora_registry::ReceiptMessage::parse(&message)?.verify()?;
        node.registry().insert_receipt(&receipt, request.as_ref())?;
    }
    println!(
        "ingest, one at a time (verify, then a transaction each): {:.0} receipts/s",
        sample as f64 / clock.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Signs the planned receipts on every core, keeping each host's chain linked.
fn sign_all(
    plan: &[(u64, usize, u64)],
    hosts: &[SecretKey],
    callers: &[SecretKey],
    agents: &[agora_registry::SignedManifest],
    now: u64,
    prevs: &mut [Option<Hash>],
) -> Vec<Evidence> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = plan.len().div_ceil(threads).max(1);
    let mut signed: Vec<Evidence> = std::thread::scope(|scope| {
        let workers: Vec<_> = plan
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|&(i, host, seq)| {
                            let agent = &agents[(i % agents.len() as u64) as usize];
                            let caller =
                                &callers[(mix(i ^ 0xca11) % callers.len() as u64) as usize];
                            let outcome = match mix(i ^ 0x0c) % 50 {
                                0 => Outcome::Trap {
                                    code: Some(agora_registry::TrapCode::Unreachable),
                                    message: "unreachable".into(),
                                },
                                1 => Outcome::Timeout,
                                _ => Outcome::Ok,
                            };
                            let fuel_used = 200_000 + mix(i ^ 0xf0e1) % 2_000_000;
                            let timestamp_ms = now - mix(i ^ 0x71) % (60 * 86_400_000);
                            let request = Signed::sign(
                                CallRequest {
                                    caller: caller.public(),
                                    host: hosts[host].public(),
                                    agent: agent.hash(),
                                    input_hash: Hash::of(&(i ^ 1).to_le_bytes()),
                                    fuel_limit: 10_000_000,
                                    nonce: CallRequest::new_nonce(),
                                    expires_at_ms: timestamp_ms + 60_000,
                                },
                                caller,
                            )
                            .expect("sign request");
                            let body = Receipt {
                                agent: AgentRef {
                                    manifest: agent.hash(),
                                    component: agent.body().component.hash,
                                },
                                request: Some(request.hash()),
                                caller: Some(caller.public()),
                                input_hash: request.body().input_hash,
                                output_hash: Some(Hash::of(&(i ^ 2).to_le_bytes())),
                                outcome,
                                fuel_limit: 10_000_000,
                                fuel_used,
                                charge: agora_registry::rules::charge_for(
                                    fuel_used,
                                    agent.body().price_per_mfuel,
                                ),
                                wall_time_us: 600,
                                nested: vec![],
                                parent_call: None,
                                host: hosts[host].public(),
                                runtime: agora_host::RUNTIME_VERSION.into(),
                                profile: None,
                                environment: None,
                                input_size: None,
                                transcript: None,
                                seq,
                                // Linked below, once the chain order is known.
                                prev: None,
                                timestamp_ms,
                                limits: None,
                                model_usage: vec![],
                                egress: None,
                            };
                            (host, body, request)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .map(|(host, mut body, request)| {
                body.prev = prevs[host];
                let signed = Signed::sign(body, &hosts[host]).expect("sign");
                prevs[host] = Some(signed.hash());
                (signed, Some(request))
            })
            .collect()
    });
    signed.shrink_to_fit();
    signed
}

/// A cheap deterministic scrambler, so that runs are repeatable.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ceb9fe1a85ec53);
    x ^ (x >> 33)
}

/// Runs wrk against `url` from a second process and returns its throughput and latency figures.
async fn load(url: &str) -> Option<String> {
    let url = url.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("wrk")
            .args(["-t2", "-c64", "-d15s", "--latency", &url])
            .output()
    })
    .await
    .ok()?
    .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| "?".into())
    };
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .map(|l| format!(" ({})", l.trim()))
        .unwrap_or_default();
    Some(format!(
        "{} req/s, p50 {}, p90 {}, p99 {}{errors}",
        field("Requests/sec:"),
        field("50%"),
        field("90%"),
        field("99%"),
    ))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
