//! Verification that happens by itself: every host re-executes a sample of the receipts other
//! hosts sign, passes on what it found, and checks for itself any fraud others report.
//!
//! - **Sampling.** Each receipt from another host is picked with a probability that is higher
//!   for hosts this host holds little history with ([`AuditConfig`]). The pick is a keyed hash
//!   of the receipt under a key derived from this host's secret, so the host being checked
//!   cannot tell which of its receipts will be.
//! - **Call data.** The input and transcript a re-execution needs are fetched from the host
//!   that signed the receipt, over [`ALPN`]; the component by hash from it or the publisher. A
//!   host that answers that it does not keep them, or serves bytes that are not the ones its
//!   receipt names, or cannot be reached within [`AuditConfig::call_data_deadline`], has the
//!   receipt marked unbacked: it counts for nothing in scores.
//! - **Findings.** A re-execution is signed as a validation (`agora/validation/v1`), stored,
//!   and gossiped. One that finds fraud is recorded as a fraud proof against the host at once
//!   (this host ran the call itself), which takes away all its trust and the weight of all its
//!   receipts.
//! - **Reported fraud.** A validation from another verifier that finds fraud is not believed:
//!   this host fetches the whole proof from the verifier over [`ALPN`] and runs the call
//!   itself ([`Node::accept_fraud_proof`]); only if it too finds the receipt wrong does it act.
//!
//! The exchange on [`ALPN`], one bidirectional stream per question: the asker sends a kind byte
//! and a 32-byte hash (kind 1: the input or transcript kept under that hash; kind 2: the fraud
//! proof recorded against the receipt with that hash); the peer answers a status byte (1: found,
//! followed by the bytes; 0: not kept here).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agora_registry::{
    CALL_DATA_RETENTION_MS, FraudProof, Hash, MAX_FRAUD_PROOF_BYTES, PublicKey, SignedReceipt,
    SignedValidation,
};
use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh::{EndpointAddr, EndpointId};

use super::CONNECT_TIMEOUT;
use super::fetch::{Fetcher, NoProgress};
use crate::node::{Node, ReexecuteError};

/// The ALPN of the protocol verifiers fetch call data and fraud proofs over.
pub const ALPN: &[u8] = b"agora/verify/1";

const ASK_CALL_DATA: u8 = 1;
const ASK_FRAUD_PROOF: u8 = 2;

/// Most questions one connection may ask: a verifier needs two per receipt.
const MAX_ASKS_PER_CONNECTION: usize = 64;
/// Largest input or transcript answer: the larger of the two bounds, and the status byte.
const MAX_CALL_DATA_ANSWER: usize = 1 + agora_registry::rules::MAX_INPUT_BYTES as usize;
/// How long one answer may take to arrive.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Reported frauds waiting to be checked; beyond this, reports are dropped and counted (a
/// proof that is real is reported by every host that checks it).
const REPORTED_QUEUE: usize = 64;
/// How long a reported fraud whose check could not finish waits before it is checked again.
const REPORT_RETRY_AFTER: Duration = Duration::from_secs(3);
/// Most checks of one reported fraud.
const REPORT_ATTEMPTS: usize = 5;
/// Receipts waiting for their host to produce their call data; while this many wait, new
/// receipts are not sampled.
const MAX_WAITING: usize = 4096;
/// Connections served at once: each answer may hold an input of up to 64 MiB in memory.
pub(super) const MAX_VERIFY_CONNECTIONS: usize = 16;
/// Receipts whose reported fraud did not hold here, remembered so that the same false report
/// is not run again.
const MAX_REFUTED: usize = 4096;

/// How a host checks other hosts' receipts by itself. Every knob with its default:
///
/// | knob | default | at the limit |
/// |---|---|---|
/// | [`sample_rate`](Self::sample_rate) | 0.05 (one receipt in 20) | 0 checks none, 1 every one |
/// | [`new_host_sample_rate`](Self::new_host_sample_rate) | 0.5 | the rate for hosts with little history here |
/// | [`established_after`](Self::established_after) | 1,000 receipts | a host with fewer held here is sampled at the new-host rate |
/// | [`call_data_deadline`](Self::call_data_deadline) | 10 min | a receipt whose host has not produced its input and transcript by then is unbacked |
/// | [`interval`](Self::interval) | 2 s | how often new receipts are looked for; waiting ones are retried as often |
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// Share of receipts from established hosts that are re-executed, from 0 to 1.
    pub sample_rate: f64,
    /// Share of receipts from hosts with little history here that are re-executed.
    pub new_host_sample_rate: f64,
    /// How many of a host's receipts this registry must hold for it to be established.
    pub established_after: u64,
    /// How long a host has, from the first time it is asked, to produce a receipt's input and
    /// transcript.
    pub call_data_deadline: Duration,
    /// How often the auditor looks for new receipts.
    pub interval: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            sample_rate: 0.05,
            new_host_sample_rate: 0.5,
            established_after: 1_000,
            call_data_deadline: Duration::from_secs(600),
            interval: Duration::from_secs(2),
        }
    }
}

impl AuditConfig {
    /// Checks no receipt by itself (reported fraud is still checked and acted on).
    pub fn off() -> Self {
        AuditConfig {
            sample_rate: 0.0,
            new_host_sample_rate: 0.0,
            ..AuditConfig::default()
        }
    }

    /// Checks every receipt: for tests and for hosts that can afford it.
    pub fn every_receipt() -> Self {
        AuditConfig {
            sample_rate: 1.0,
            new_host_sample_rate: 1.0,
            ..AuditConfig::default()
        }
    }

    /// Replaces the call-data deadline.
    pub fn call_data_deadline(mut self, deadline: Duration) -> Self {
        self.call_data_deadline = deadline;
        self
    }

    /// Replaces how often the auditor looks for new receipts.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }
}

/// What the auditor has done so far.
#[derive(Debug, Default)]
pub struct AuditStats {
    sampled: AtomicU64,
    matched: AtomicU64,
    fraud: AtomicU64,
    unbacked: AtomicU64,
    reports_checked: AtomicU64,
    reports_dropped: AtomicU64,
}

impl AuditStats {
    /// Receipts picked for re-execution.
    pub fn sampled(&self) -> u64 {
        self.sampled.load(Ordering::Relaxed)
    }
    /// Re-executions that matched their receipt.
    pub fn matched(&self) -> u64 {
        self.matched.load(Ordering::Relaxed)
    }
    /// Re-executions that found fraud.
    pub fn fraud(&self) -> u64 {
        self.fraud.load(Ordering::Relaxed)
    }
    /// Receipts marked unbacked.
    pub fn unbacked(&self) -> u64 {
        self.unbacked.load(Ordering::Relaxed)
    }
    /// Frauds reported by other verifiers that this host checked itself.
    pub fn reports_checked(&self) -> u64 {
        self.reports_checked.load(Ordering::Relaxed)
    }
    /// Reports dropped because too many waited to be checked, or to be checked again.
    pub fn reports_dropped(&self) -> u64 {
        self.reports_dropped.load(Ordering::Relaxed)
    }
}

/// Serves the input and transcript of this host's receipts, and the fraud proofs it recorded.
#[derive(Debug, Clone)]
pub(crate) struct VerifyProtocol {
    pub node: Node,
    /// One permit per connection served ([`MAX_VERIFY_CONNECTIONS`]).
    pub connections: Arc<tokio::sync::Semaphore>,
}

impl ProtocolHandler for VerifyProtocol {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let Ok(_permit) = self.connections.clone().try_acquire_owned() else {
            connection.close(4u32.into(), b"busy");
            return Ok(());
        };
        for _ in 0..MAX_ASKS_PER_CONNECTION {
            let Ok((mut send, mut recv)) = connection.accept_bi().await else {
                return Ok(());
            };
            let ask = recv.read_to_end(33).await.map_err(AcceptError::from_err)?;
            let Some((kind, hash)) = parse_ask(&ask) else {
                connection.close(1u32.into(), b"malformed request");
                return Ok(());
            };
            let node = self.node.clone();
            let found = tokio::task::spawn_blocking(move || match kind {
                ASK_CALL_DATA => node.registry().call_data(&hash),
                _ => node
                    .registry()
                    .fraud_proof(&hash)
                    .map(|proof| proof.map(|p| p.to_bytes())),
            })
            .await
            .map_err(AcceptError::from_err)?;
            let answer = match found {
                Ok(Some(bytes)) => [&[1u8][..], &bytes].concat(),
                Ok(None) => vec![0],
                Err(error) => {
                    tracing::warn!(%error, "reading call data for a verifier");
                    connection.close(2u32.into(), b"internal error");
                    return Ok(());
                }
            };
            send.write_all(&answer)
                .await
                .map_err(AcceptError::from_err)?;
            send.finish().map_err(AcceptError::from_err)?;
        }
        connection.close(3u32.into(), b"too many questions");
        Ok(())
    }
}

/// Decodes a question: a known kind byte and a hash. Public so that it can be fuzzed.
pub fn parse_ask(ask: &[u8]) -> Option<(u8, Hash)> {
    let (&kind, hash) = ask.split_first()?;
    let hash: [u8; 32] = hash.try_into().ok()?;
    [ASK_CALL_DATA, ASK_FRAUD_PROOF]
        .contains(&kind)
        .then(|| (kind, Hash::from_bytes(hash)))
}

/// Why a peer did not answer a question.
#[derive(Debug)]
enum AskError {
    /// It answered that it does not keep what was asked for.
    NotKept,
    /// It could not be reached, or broke off.
    Unreachable(String),
}

/// Asks `peer` one question; the bytes if it has them.
async fn ask(
    endpoint: &iroh::Endpoint,
    peer: EndpointId,
    kind: u8,
    hash: &Hash,
    max_bytes: usize,
) -> Result<Vec<u8>, AskError> {
    let unreachable =
        |what: &str, e: &dyn std::fmt::Display| AskError::Unreachable(format!("{what}: {e}"));
    let connection = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect(peer, ALPN))
        .await
        .map_err(|_| AskError::Unreachable("did not answer in time".into()))?
        .map_err(|e| unreachable("connecting", &e))?;
    let exchange = async {
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|e| unreachable("opening a stream", &e))?;
        let question = [&[kind][..], hash.as_bytes()].concat();
        send.write_all(&question)
            .await
            .map_err(|e| unreachable("asking", &e))?;
        send.finish().map_err(|e| unreachable("asking", &e))?;
        recv.read_to_end(max_bytes)
            .await
            .map_err(|e| unreachable("reading the answer", &e))
    };
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, exchange)
        .await
        .map_err(|_| AskError::Unreachable("the answer did not arrive in time".into()))??;
    connection.close(0u32.into(), b"done");
    match answer.split_first() {
        Some((1, bytes)) => Ok(bytes.to_vec()),
        Some((0, [])) => Err(AskError::NotKept),
        _ => Err(AskError::Unreachable("malformed answer".into())),
    }
}

fn endpoint_of(key: &PublicKey) -> Option<EndpointId> {
    EndpointId::from_bytes(key.as_bytes()).ok()
}

/// The auditor's side of the network: what it dials with and announces through.
pub(super) struct Auditor {
    pub node: Node,
    pub endpoint: iroh::Endpoint,
    pub fetcher: Arc<Fetcher>,
    pub announcements: iroh_gossip::api::GossipSender,
    pub config: AuditConfig,
    pub stats: Arc<AuditStats>,
}

/// A sampled receipt whose host has not yet produced its call data.
struct Waiting {
    receipt: SignedReceipt,
    since: Instant,
    last_error: String,
}

impl Auditor {
    /// Looks for new receipts every interval, checks the sampled ones, retries those waiting
    /// for their call data. Runs until aborted.
    pub async fn run(self: Arc<Self>) {
        let sample_key =
            blake3::derive_key("agora 2026-12 audit sample", &self.node.secret_key_bytes());
        let mut cursor = 0i64;
        let mut waiting: HashMap<Hash, Waiting> = HashMap::new();
        let mut ticker = tokio::time::interval(self.config.interval);
        loop {
            ticker.tick().await;
            cursor = self.take_new(&sample_key, cursor, &mut waiting).await;
            self.check_waiting(&mut waiting).await;
        }
    }

    /// Reads the receipts stored after `cursor` and adds the sampled ones to `waiting`;
    /// returns the cursor to continue from.
    async fn take_new(
        &self,
        sample_key: &[u8; 32],
        cursor: i64,
        waiting: &mut HashMap<Hash, Waiting>,
    ) -> i64 {
        let reader = self.node.clone();
        let read = tokio::task::spawn_blocking(move || {
            reader
                .registry()
                .receipts_to_audit(&reader.public_key(), cursor)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|read| read.map_err(|e| e.to_string()));
        let (receipts, next) = match read {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(%error, "reading receipts to check");
                return cursor;
            }
        };
        for receipt in receipts {
            if waiting.len() < MAX_WAITING && self.sampled(sample_key, &receipt).await {
                self.stats.sampled.fetch_add(1, Ordering::Relaxed);
                waiting.insert(
                    receipt.hash(),
                    Waiting {
                        receipt,
                        since: Instant::now(),
                        last_error: String::new(),
                    },
                );
            }
        }
        next
    }

    /// Checks every receipt waiting; unbacks those whose host said it does not keep their
    /// call data or has not produced it by the deadline.
    async fn check_waiting(&self, waiting: &mut HashMap<Hash, Waiting>) {
        // A host that could not be reached is not asked again in the same round: its other
        // receipts wait for the next one (or their deadline).
        let mut unreachable: HashMap<PublicKey, String> = HashMap::new();
        let due: Vec<Hash> = waiting.keys().copied().collect();
        for hash in due {
            let Some(entry) = waiting.get_mut(&hash) else {
                continue;
            };
            let host = entry.receipt.body().host;
            let checked = match unreachable.get(&host) {
                Some(error) => Err(AskError::Unreachable(error.clone())),
                None => self.check(&entry.receipt).await,
            };
            let reason = match checked {
                Ok(()) => None,
                Err(AskError::NotKept) => {
                    Some("its host does not keep its input or transcript".to_owned())
                }
                Err(AskError::Unreachable(error)) => {
                    unreachable.insert(host, error.clone());
                    entry.last_error = error;
                    if entry.since.elapsed() < self.config.call_data_deadline {
                        continue;
                    }
                    Some(format!(
                        "its host did not produce its input and transcript within {} s: {}",
                        self.config.call_data_deadline.as_secs(),
                        entry.last_error
                    ))
                }
            };
            if let Some(entry) = waiting.remove(&hash)
                && let Some(reason) = reason
            {
                self.unbacked(&entry.receipt, &reason).await;
            }
        }
    }

    /// Whether `receipt` is one to check: one this host can re-execute (its profile, recorded
    /// world, call data still kept), picked at its host's rate.
    async fn sampled(&self, key: &[u8; 32], receipt: &SignedReceipt) -> bool {
        let body = receipt.body();
        let now = agora_registry::rules::now_ms();
        let checkable = body.profile == Some(self.node.sandbox().profile_hash())
            && body.environment.is_some()
            && body.transcript.is_some()
            && body.input_size.is_some()
            && body.timestamp_ms.saturating_add(CALL_DATA_RETENTION_MS) > now;
        if !checkable {
            return false;
        }
        let (node, host) = (self.node.clone(), body.host);
        let held = tokio::task::spawn_blocking(move || node.registry().receipts_held_from(&host))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        let rate = if held < self.config.established_after {
            self.config.new_host_sample_rate
        } else {
            self.config.sample_rate
        };
        let pick = blake3::keyed_hash(key, receipt.hash().as_bytes());
        let pick = u64::from_le_bytes(pick.as_bytes()[..8].try_into().unwrap_or([0; 8]));
        (pick as f64) < rate.clamp(0.0, 1.0) * (u64::MAX as f64)
    }

    /// Fetches what `receipt`'s call needs and runs it again; an error only when its host did
    /// not produce the input or transcript (the receipt then waits, or is unbacked).
    async fn check(&self, receipt: &SignedReceipt) -> Result<(), AskError> {
        let body = receipt.body();
        let Some(host) = endpoint_of(&body.host) else {
            return Ok(());
        };
        let Some(transcript_ref) = body.transcript else {
            return Ok(());
        };
        // The receipt says how large each is: a host cannot make this one read more.
        let bound = |size: u64| {
            usize::try_from(size).map_or(MAX_CALL_DATA_ANSWER, |size| {
                size.saturating_add(1).min(MAX_CALL_DATA_ANSWER)
            })
        };
        let input_size = body
            .input_size
            .unwrap_or(agora_registry::rules::MAX_INPUT_BYTES);
        let input = ask(
            &self.endpoint,
            host,
            ASK_CALL_DATA,
            &body.input_hash,
            bound(input_size),
        )
        .await?;
        let transcript = ask(
            &self.endpoint,
            host,
            ASK_CALL_DATA,
            &transcript_ref.hash,
            bound(transcript_ref.size),
        )
        .await?;
        let Some(component) = self.component(receipt, &[]).await else {
            return Ok(());
        };
        match self
            .node
            .validate(receipt, &component, &input, &transcript)
            .await
        {
            Ok((_, Some(validation))) => self.found(receipt, validation, input, transcript).await,
            Ok((_, None)) => {}
            // Bytes that are not the ones the receipt names: the host has not produced them.
            Err(ReexecuteError::InputMismatch { reason, .. })
            | Err(ReexecuteError::TranscriptMismatch { reason, .. }) => {
                self.unbacked(receipt, &format!("its host served other bytes: {reason}"))
                    .await;
            }
            Err(error) => {
                tracing::debug!(receipt = %receipt.hash(), %error, "a receipt this host cannot check")
            }
        }
        Ok(())
    }

    /// The component `receipt` names, from this host's store or fetched from the receipt's
    /// host, the publisher or `others`.
    async fn component(&self, receipt: &SignedReceipt, others: &[PublicKey]) -> Option<Vec<u8>> {
        let body = receipt.body();
        let hash = body.agent.component;
        if let Ok(Some(bytes)) = self.node.blobs().get(&hash).await {
            return Some(bytes.to_vec());
        }
        let manifest = self.node.registry().manifest(&body.agent.manifest).ok()??;
        let peers: Vec<EndpointAddr> = [body.host, manifest.body().publisher]
            .iter()
            .chain(others)
            .filter_map(endpoint_of)
            .map(EndpointAddr::new)
            .collect();
        if let Err(error) = self
            .fetcher
            .fetch_agent(body.agent.manifest, &peers, &NoProgress)
            .await
        {
            tracing::debug!(receipt = %receipt.hash(), %error, "fetching a component to check a receipt");
            return None;
        }
        self.node.blobs().get(&hash).await.ok()?.map(|b| b.to_vec())
    }

    /// Keeps and announces what a re-execution found; records a fraud it found at once.
    async fn found(
        &self,
        receipt: &SignedReceipt,
        validation: SignedValidation,
        input: Vec<u8>,
        transcript: Vec<u8>,
    ) {
        let fraud = validation.body().finding.is_fraud();
        let (node, stored, receipt_owned) =
            (self.node.clone(), validation.clone(), receipt.clone());
        let kept = tokio::task::spawn_blocking(move || {
            node.registry().insert_validation(&stored)?;
            if fraud {
                let reason = format!(
                    "re-executing receipt {}: {}",
                    stored.body().receipt,
                    stored.body().finding
                );
                let proof = FraudProof::new(receipt_owned, stored, input, transcript)?;
                node.registry().record_fraud(&proof, &reason)?;
            }
            Ok::<_, agora_registry::Error>(())
        })
        .await;
        match kept {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, receipt = %receipt.hash(), "keeping a validation");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "keeping a validation");
                return;
            }
        }
        if fraud {
            self.stats.fraud.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(host = %receipt.body().host, receipt = %receipt.hash(),
                finding = %validation.body().finding, "a host signed a receipt its call did not produce");
        } else {
            self.stats.matched.fetch_add(1, Ordering::Relaxed);
        }
        let message = super::gossip::validation_announcement(&validation);
        if let Err(error) = self.announcements.broadcast(message).await {
            tracing::warn!(%error, "announcing a validation");
        }
    }

    async fn unbacked(&self, receipt: &SignedReceipt, reason: &str) {
        let (node, owned, why) = (self.node.clone(), receipt.clone(), reason.to_owned());
        match tokio::task::spawn_blocking(move || node.registry().mark_unbacked(&owned, &why)).await
        {
            Ok(Ok(())) => {
                self.stats.unbacked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(error)) => tracing::warn!(%error, "marking a receipt unbacked"),
            Err(error) => tracing::warn!(%error, "marking a receipt unbacked"),
        }
    }
}

/// Checks frauds other verifiers report, one at a time: fetches each proof from its verifier
/// (or the neighbour that passed the report on) and runs the call here. A report whose check
/// could not finish (the proof or the component could not be fetched, the call could not be
/// run) is tried again [`REPORT_RETRY_AFTER`] later, at most [`REPORT_ATTEMPTS`] times: a
/// report is heard once, and a verifier busy at that moment must not make a proven lie go
/// unnoticed here.
#[derive(Clone)]
pub(super) struct ReportedFrauds {
    queue: tokio::sync::mpsc::Sender<Report>,
    stats: Arc<AuditStats>,
}

/// A reported fraud waiting to be checked.
struct Report {
    validation: SignedValidation,
    /// The neighbour that passed it on.
    from: EndpointId,
    /// Checks started so far.
    attempts: usize,
}

/// How a reported fraud's check ended.
#[derive(Debug, PartialEq, Eq)]
enum Checked {
    /// Held, refuted, already known, or inadmissible: nothing more to do.
    Settled,
    /// Could not be checked yet; worth trying again.
    Unsettled,
}

impl ReportedFrauds {
    /// Starts the checker.
    pub fn start(auditor: Arc<Auditor>) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, mut reports) = tokio::sync::mpsc::channel(REPORTED_QUEUE);
        let stats = auditor.stats.clone();
        let task = tokio::spawn(async move {
            let mut refuted = std::collections::HashSet::new();
            // Due in the order they were put back, as every one waits the same time.
            let mut retries: std::collections::VecDeque<(tokio::time::Instant, Report)> =
                Default::default();
            loop {
                let due = retries.front().map(|(at, _)| *at);
                let mut report = tokio::select! {
                    report = reports.recv() => match report {
                        Some(report) => report,
                        None => break,
                    },
                    _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)),
                        if due.is_some() =>
                    {
                        let Some((_, report)) = retries.pop_front() else {
                            continue;
                        };
                        report
                    }
                };
                report.attempts += 1;
                let checked = auditor.check_reported(&report, &mut refuted).await;
                if checked == Checked::Unsettled && report.attempts < REPORT_ATTEMPTS {
                    if retries.len() < REPORTED_QUEUE {
                        let at = tokio::time::Instant::now() + REPORT_RETRY_AFTER;
                        retries.push_back((at, report));
                    } else {
                        auditor
                            .stats
                            .reports_dropped
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        (ReportedFrauds { queue, stats }, task)
    }

    /// Queues a reported fraud; dropped (and counted) when too many wait.
    pub fn report(&self, validation: SignedValidation, from: EndpointId) {
        if !self.offer(validation, from) {
            self.stats.reports_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues a reported fraud if there is room; false if not, for a caller that can bring it
    /// again later (a catch-up).
    pub fn offer(&self, validation: SignedValidation, from: EndpointId) -> bool {
        let report = Report {
            validation,
            from,
            attempts: 0,
        };
        self.queue.try_send(report).is_ok()
    }
}

impl Auditor {
    /// Checks one reported fraud by running the call here; `refuted` holds the receipts whose
    /// reports did not hold, which are not run again.
    async fn check_reported(
        &self,
        report: &Report,
        refuted: &mut std::collections::HashSet<Hash>,
    ) -> Checked {
        let body = report.validation.body();
        if body.validator == self.node.public_key() || refuted.contains(&body.receipt) {
            return Checked::Settled;
        }
        let (node, host, subject) = (self.node.clone(), body.host, body.receipt);
        let known =
            tokio::task::spawn_blocking(move || node.registry().fraud_proven(&host, &subject))
                .await;
        if matches!(known, Ok(Ok(true))) {
            return Checked::Settled;
        }
        let mut proof = None;
        let askers = [endpoint_of(&body.validator), Some(report.from)];
        for peer in askers.into_iter().flatten() {
            match ask(
                &self.endpoint,
                peer,
                ASK_FRAUD_PROOF,
                &body.receipt,
                1 + MAX_FRAUD_PROOF_BYTES,
            )
            .await
            {
                Ok(bytes) => match FraudProof::from_bytes(&bytes) {
                    Ok(found) if found.receipt.hash() == body.receipt => {
                        proof = Some(found);
                        break;
                    }
                    Ok(_) => tracing::debug!("a peer sent a fraud proof about another receipt"),
                    Err(error) => tracing::debug!(%error, "a peer sent a malformed fraud proof"),
                },
                Err(error) => tracing::debug!(?error, "asking for a reported fraud proof"),
            }
        }
        let Some(proof) = proof else {
            return Checked::Unsettled;
        };
        if self
            .component(&proof.receipt, &[body.validator])
            .await
            .is_none()
        {
            return Checked::Unsettled;
        }
        let accepted = self.node.accept_fraud_proof(&proof).await;
        if !matches!(accepted, Err(ref error) if error.is_transient()) {
            self.stats.reports_checked.fetch_add(1, Ordering::Relaxed);
        }
        match accepted {
            Ok(recorded) => {
                let (node, validation) = (self.node.clone(), proof.validation.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    node.registry().insert_validation(&validation)
                })
                .await;
                tracing::warn!(host = %recorded.host, receipt = %recorded.receipt,
                    finding = %recorded.finding, "a reported fraud holds: the host is no longer trusted");
                Checked::Settled
            }
            Err(error @ crate::node::FraudError::NotFraud { .. }) => {
                tracing::info!(receipt = %body.receipt, %error, "a reported fraud does not hold");
                if refuted.len() >= MAX_REFUTED {
                    refuted.clear();
                }
                refuted.insert(body.receipt);
                Checked::Settled
            }
            Err(error) if error.is_transient() => {
                tracing::info!(receipt = %body.receipt, %error, "a reported fraud could not be checked yet");
                Checked::Unsettled
            }
            Err(error) => {
                tracing::info!(receipt = %body.receipt, %error, "a reported fraud is not admissible");
                Checked::Settled
            }
        }
    }
}
