//! The host's HTTP API: versioned JSON under `/v1`, plus `/healthz` and Prometheus `/metrics`.
//! The API is described by an OpenAPI document, [`OPENAPI`], served at `/v1/openapi.json`.
//!
//! Reads serve the registry and the reputation computed from it; writes accept signed receipts
//! and feedback from anyone, verified before they are stored, and are refused with a 4xx that
//! names the fault otherwise. Every request runs under a body-size limit, a timeout and a
//! concurrency limit. Served on loopback unless configured otherwise.
//!
//! Scores are materialised: a background task keeps the evidence in memory, reads what is new
//! from the registry when evidence has arrived, and recomputes (at most every
//! [`SCORE_REFRESH`], and never more than a fifth of the time); reads answer from the latest
//! result without waiting for it. Registry reads use
//! the registry's read-only connections, so they never queue behind writes either.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agora_registry::reputation::{EvidenceSet, Reputation, ScoreParams, Scores, compute};
use agora_registry::{
    EvidenceCursor, Hash, Inserted, PublicKey, ReceiptCursor, ReceiptMessage, SignedFeedback,
};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceBuilder;
use tower::limit::ConcurrencyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::node::Node;

/// Largest request body: a signed record is a few KiB.
const MAX_BODY_BYTES: usize = 256 << 10;
/// Longest a request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most requests in flight at once; more wait.
const MAX_CONCURRENT_REQUESTS: usize = 256;
/// Scores are recomputed at most this often, and only when evidence has changed or they have
/// aged by a minute (evidence decays with time).
pub const SCORE_REFRESH: Duration = Duration::from_secs(2);
/// Evidence decays with time, so scores are recomputed at least this often even when nothing new
/// has arrived.
const SCORE_MAX_AGE: Duration = Duration::from_secs(60);
/// Score computation may take at most 1/this of the time.
const SCORE_DUTY_CYCLE: u32 = 5;

/// The OpenAPI 3.1 document describing this API (kept in the repository as `host/openapi.json`).
pub const OPENAPI: &str = include_str!("../openapi.json");
/// Most receipts in one page.
const MAX_PAGE: usize = 500;

/// How to serve the API.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Where to listen. Default `127.0.0.1:0` (an ephemeral port on loopback).
    pub listen: SocketAddr,
    /// Keys trusted a priori besides this host's own.
    pub extra_anchors: Vec<PublicKey>,
    /// The host's gossip counters, reported in `/metrics` when the host is on the network
    /// ([`crate::net::Network::gossip_stats_handle`]). Default: none.
    pub gossip: Option<Arc<crate::net::GossipStats>>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            extra_anchors: Vec::new(),
            gossip: None,
        }
    }
}

/// A running API server.
pub struct ApiServer {
    addr: SocketAddr,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    refresher: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// Computes the first scores, binds and starts serving `node`.
    pub async fn start(node: Node, config: ApiConfig) -> std::io::Result<ApiServer> {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let mut anchors = vec![node.public_key()];
        anchors.extend(config.extra_anchors);
        anchors.sort();
        anchors.dedup();
        node.registry().trust(anchors.iter().copied());
        let (first, read) = score(node.clone(), anchors.clone(), ReadEvidence::none())
            .await
            .map_err(std::io::Error::other)?;
        let state = Arc::new(ApiState {
            node,
            anchors,
            scores: RwLock::new(Arc::new(first)),
            evidence_arrived: tokio::sync::Notify::new(),
            metrics: Metrics::default(),
            gossip: config.gossip.clone(),
        });
        let refresher = tokio::spawn(refresh_scores(Arc::downgrade(&state), read));
        let app = router(state);
        let (shutdown, signal) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = signal.await;
                })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "http api stopped");
            }
        });
        tracing::info!(%addr, "serving the http api");
        Ok(ApiServer {
            addr,
            shutdown,
            task,
            refresher,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, finishes requests in flight, and returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
        self.refresher.abort();
        let _ = self.refresher.await;
    }
}

struct ApiState {
    node: Node,
    anchors: Vec<PublicKey>,
    /// The latest computed scores; replaced whole, never edited.
    scores: RwLock<Arc<ScoreSnapshot>>,
    /// Wakes the score refresher early.
    evidence_arrived: tokio::sync::Notify,
    metrics: Metrics,
    gossip: Option<Arc<crate::net::GossipStats>>,
}

/// The resolution of the clock scores are computed at, in milliseconds.
const SCORE_CLOCK_MS: u64 = 60_000;

/// Scores as computed at one moment from the evidence up to one cursor.
struct ScoreSnapshot {
    scores: Scores,
    cursor: EvidenceCursor,
    computed_at_ms: u64,
    computed: Instant,
    took: Duration,
    calls: usize,
    /// Stored rows the evidence read had to leave out.
    skipped_rows: u64,
}

/// The evidence scores are computed from, kept between refreshes so that each refresh reads
/// only what is new.
struct ReadEvidence {
    evidence: EvidenceSet,
    cursor: EvidenceCursor,
}

impl ReadEvidence {
    /// Nothing read yet: the next update reads everything.
    fn none() -> Self {
        ReadEvidence {
            evidence: EvidenceSet::default(),
            cursor: EvidenceCursor::default(),
        }
    }
}

/// Brings `read` up to date with the registry and computes scores from it, off the async
/// executor. Gives the evidence back for the next refresh.
async fn score(
    node: Node,
    anchors: Vec<PublicKey>,
    mut read: ReadEvidence,
) -> Result<(ScoreSnapshot, ReadEvidence), String> {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        read.cursor = node
            .registry()
            .update_evidence(&mut read.evidence, read.cursor)
            .map_err(|e| e.to_string())?;
        let (evidence, cursor) = (&read.evidence, read.cursor);
        // Scores are a function of the evidence, the anchors and the time. Reading the clock
        // to the minute (rounded up, so that evidence from the last seconds is not "future")
        // lets two hosts with the same evidence and anchors compute the very same scores within
        // a minute; evidence ages by a half-life of days, so nothing is lost.
        let now = (unix_ms() / SCORE_CLOCK_MS + 1) * SCORE_CLOCK_MS;
        let scores = compute(evidence, &ScoreParams::new(anchors, now));
        let took = started.elapsed();
        tracing::debug!(calls = evidence.calls().len(), ?took, "scores computed");
        let snapshot = ScoreSnapshot {
            scores,
            cursor,
            computed_at_ms: now,
            computed: Instant::now(),
            took,
            calls: evidence.calls().len(),
            skipped_rows: evidence.skipped_rows,
        };
        Ok((snapshot, read))
    })
    .await
    .map_err(|e| format!("score computation failed: {e}"))?
}

/// Keeps the scores fresh while the server runs (it holds the state only weakly, so it stops
/// when the server does).
async fn refresh_scores(state: Weak<ApiState>, mut read: ReadEvidence) {
    loop {
        let (node, anchors, last) = {
            let Some(state) = state.upgrade() else { return };
            let last = state.snapshot();
            // Wait for new evidence or the refresh period, then for the duty-cycle gap.
            let _ = tokio::time::timeout(SCORE_REFRESH, state.evidence_arrived.notified()).await;
            (state.node.clone(), state.anchors.clone(), last)
        };
        let gap = last.took * (SCORE_DUTY_CYCLE - 1);
        let since = last.computed.elapsed();
        if since < gap {
            tokio::time::sleep(gap - since).await;
        }
        let registry = node.registry();
        let stale = match registry.evidence_cursor() {
            Ok(cursor) => cursor != last.cursor,
            Err(error) => {
                tracing::warn!(%error, "cannot read the evidence cursor");
                false
            }
        };
        if !stale && last.computed.elapsed() < SCORE_MAX_AGE {
            continue;
        }
        // If the refresh fails, what was read is lost and the next refresh reads everything.
        match score(
            node,
            anchors,
            std::mem::replace(&mut read, ReadEvidence::none()),
        )
        .await
        {
            Ok((fresh, updated)) => {
                read = updated;
                let Some(state) = state.upgrade() else { return };
                *state.scores.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
            }
            Err(error) => tracing::error!(%error, "scores not refreshed"),
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

#[derive(Default)]
struct Metrics {
    requests: AtomicU64,
    rejected: AtomicU64,
    receipts_accepted: AtomicU64,
    feedback_accepted: AtomicU64,
}

type Shared = Arc<ApiState>;

fn router(state: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/v1/agents", get(list_agents))
        .route("/v1/agents/{hash}", get(agent_manifest))
        .route("/v1/agents/{hash}/reputation", get(agent_reputation))
        .route("/v1/agents/{hash}/receipts", get(agent_receipts))
        .route("/v1/hosts/{key}", get(host_record))
        .route("/v1/publishers/{key}", get(publisher_record))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/invoke", post(invoke))
        .route("/v1/receipts", post(post_receipt))
        .route("/v1/feedback", post(post_feedback))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(
            ServiceBuilder::new()
                .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    REQUEST_TIMEOUT,
                ))
                .layer(ConcurrencyLimitLayer::new(MAX_CONCURRENT_REQUESTS)),
        )
        .with_state(state)
}

/// An error answer: a status and a JSON body naming the fault.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "http api");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

fn parse_hash(text: &str) -> Result<Hash, ApiError> {
    text.parse().map_err(|e: agora_registry::ParseHashError| {
        ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
    })
}

fn parse_key(text: &str) -> Result<PublicKey, ApiError> {
    text.parse()
        .map_err(|e: agora_registry::Error| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))
}

impl ApiState {
    fn count(&self) {
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The latest scores. Never waits for a computation.
    fn snapshot(&self) -> Arc<ScoreSnapshot> {
        self.scores
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Counts a refused request and builds its answer.
    fn reject(&self, status: StatusCode, message: String) -> ApiError {
        self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        ApiError::new(status, message)
    }

    /// The manifest named by a path segment: 400 if it is not a hash, 404 if unknown.
    fn manifest(&self, hash: &str) -> Result<agora_registry::SignedManifest, ApiError> {
        let hash = parse_hash(hash)?;
        self.node
            .registry()
            .manifest(&hash)
            .map_err(ApiError::internal)?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no agent with manifest {hash}"),
                )
            })
    }

    /// Asks for the scores to be recomputed soon.
    fn evidence_arrived(&self) {
        self.evidence_arrived.notify_one();
    }
}

fn reputation_json(reputation: &Reputation, lower_bound: f64) -> Value {
    json!({
        "quality": reputation.quality(),
        "uncertainty": reputation.uncertainty(),
        "lower_bound": lower_bound,
        "evidence": reputation.evidence,
    })
}

/// An agent's reputation as JSON, with the lower bound computed with the scores.
fn agent_json(scores: &Scores, manifest: &agora_registry::Manifest) -> Value {
    reputation_json(
        &scores.of(manifest),
        scores.lower_bound(&manifest.publisher, &manifest.component.hash),
    )
}

#[derive(Deserialize)]
struct AgentFilter {
    name: Option<String>,
    action: Option<String>,
    publisher: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn list_agents(
    State(state): State<Shared>,
    Query(filter): Query<AgentFilter>,
) -> Result<Json<Value>, ApiError> {
    state.count();
    let publisher = filter.publisher.as_deref().map(parse_key).transpose()?;
    let limit = filter.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    let skip: usize = match filter.cursor.as_deref() {
        None => 0,
        Some(cursor) => cursor.parse().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "`{}` is not a cursor this host returned",
                    cursor.chars().take(32).collect::<String>()
                ),
            )
        })?,
    };
    let snapshot = state.snapshot();
    let scores = &snapshot.scores;
    // Rank what matches from the registry's columns, then read only the page's manifests.
    let node = state.node.clone();
    let index = tokio::task::spawn_blocking(move || {
        node.registry().manifest_index(
            filter.name.as_deref(),
            filter.action.as_deref(),
            publisher.as_ref(),
        )
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let mut ranked: Vec<(f64, Hash)> = index
        .into_iter()
        .map(|(manifest, publisher, component)| {
            (scores.lower_bound(&publisher, &component), manifest)
        })
        .collect();
    // Best lower bound first; ties by manifest hash, so every host lists in the same order.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let total = ranked.len();
    let page: Vec<Hash> = ranked
        .into_iter()
        .skip(skip)
        .take(limit)
        .map(|(_, hash)| hash)
        .collect();
    let next = (skip + page.len() < total).then(|| (skip + page.len()).to_string());
    let mut agents = Vec::with_capacity(page.len());
    for hash in page {
        let Some(m) = state
            .node
            .registry()
            .manifest(&hash)
            .map_err(ApiError::internal)?
        else {
            continue;
        };
        let body = m.body();
        agents.push(json!({
            "manifest": m.hash(),
            "name": body.name,
            "version": body.version,
            "publisher": body.publisher,
            "component": body.component.hash,
            "actions": body.actions,
            "capabilities": body.capabilities,
            "price_per_mfuel": body.price_per_mfuel,
            "description": body.description,
            "reputation": agent_json(scores, body),
        }));
    }
    Ok(Json(json!({ "agents": agents, "next": next })))
}

async fn agent_manifest(
    State(state): State<Shared>,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    state.count();
    let manifest = state.manifest(&hash)?;
    // The signed envelope itself, so that the client can verify it.
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        manifest.as_bytes().to_vec(),
    )
        .into_response())
}

async fn agent_reputation(
    State(state): State<Shared>,
    Path(hash): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.count();
    let manifest = state.manifest(&hash)?;
    let snapshot = state.snapshot();
    let component = manifest.body().component.hash;
    let mut body = agent_json(&snapshot.scores, manifest.body());
    body["manifest"] = json!(manifest.hash());
    body["component"] = json!(component);
    body["anchors"] = json!(state.anchors);
    body["computed_at_ms"] = json!(snapshot.computed_at_ms);
    Ok(Json(body))
}

#[derive(Deserialize)]
struct Page {
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn agent_receipts(
    State(state): State<Shared>,
    Path(hash): Path<String>,
    Query(page): Query<Page>,
) -> Result<Response, ApiError> {
    state.count();
    let manifest = state.manifest(&hash)?;
    let limit = page.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    let after = page
        .cursor
        .as_deref()
        .map(str::parse::<ReceiptCursor>)
        .transpose()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let page = state
        .node
        .registry()
        .receipts_page(&manifest.hash(), after, limit)
        .map_err(ApiError::internal)?;
    // The signed envelopes are canonical JSON already: splice their exact bytes into the
    // answer, so that clients can verify them and the server need not re-encode them.
    let mut body = Vec::with_capacity(
        page.receipts.iter().map(|r| r.len() + 1).sum::<usize>()
            + page
                .requests
                .iter()
                .flatten()
                .map(|r| r.len() + 1)
                .sum::<usize>()
            + 64,
    );
    body.extend_from_slice(b"{\"receipts\":[");
    for (index, receipt) in page.receipts.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(receipt);
    }
    body.extend_from_slice(b"],\"requests\":[");
    for (index, request) in page.requests.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(request.as_deref().unwrap_or(b"null"));
    }
    body.extend_from_slice(b"],\"next\":");
    let next = page.next.map(|cursor| cursor.to_string());
    body.extend_from_slice(json!(next).to_string().as_bytes());
    body.push(b'}');
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

async fn host_record(
    State(state): State<Shared>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.count();
    let host = parse_key(&key)?;
    let record = state
        .node
        .registry()
        .host_record(&host)
        .map_err(ApiError::internal)?;
    let snapshot = state.snapshot();
    let trust = snapshot.scores.trust_in(&host);
    if record.receipts == 0 && trust == 0.0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no receipts from host {host} and no trust in it"),
        ));
    }
    Ok(Json(json!({
        "host": host,
        "trust": trust,
        "receipts": record.receipts,
        "head": record.head.map(|(seq, receipt)| json!({ "seq": seq, "receipt": receipt })),
        "first_receipt_ms": record.active_ms.map(|(first, _)| first),
        "last_receipt_ms": record.active_ms.map(|(_, last)| last),
        "missing": record.missing,
        "forks": record.forks.iter().map(|fork| json!({
            "seq": fork.seq,
            "first": fork.first,
            "second": fork.second,
        })).collect::<Vec<_>>(),
        "misbehaviour": record.misbehaviour.iter().map(|m| json!({
            "kind": m.kind,
            "subject": m.subject,
            "reason": m.reason,
        })).collect::<Vec<_>>(),
        "anchors": state.anchors,
        "computed_at_ms": snapshot.computed_at_ms,
    })))
}

async fn publisher_record(
    State(state): State<Shared>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.count();
    let publisher = parse_key(&key)?;
    let manifests = state
        .node
        .registry()
        .manifests_by(&publisher)
        .map_err(ApiError::internal)?;
    if manifests.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no agents published by {publisher}"),
        ));
    }
    let snapshot = state.snapshot();
    let scores = &snapshot.scores;
    let agents: Vec<Value> = manifests
        .iter()
        .map(|m| {
            let body = m.body();
            json!({
                "manifest": m.hash(),
                "name": body.name,
                "version": body.version,
                "component": body.component.hash,
                "reputation": agent_json(scores, body),
            })
        })
        .collect();
    let reputation = scores
        .publishers
        .get(&publisher)
        .copied()
        .unwrap_or(Reputation {
            positive: 0.0,
            negative: 0.0,
            evidence: 0,
        });
    Ok(Json(json!({
        "publisher": publisher,
        "trust": scores.trust_in(&publisher),
        "reputation": reputation_json(&reputation, reputation.lower_bound()),
        "agents": agents,
        "anchors": state.anchors,
        "computed_at_ms": snapshot.computed_at_ms,
    })))
}

async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

async fn post_receipt(State(state): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    use agora_registry::Error as E;
    state.count();
    let reject = |status, message| state.reject(status, message);
    let (receipt, request) = ReceiptMessage::parse(&body)
        .and_then(|message| message.verify())
        .map_err(|e| reject(StatusCode::BAD_REQUEST, e.to_string()))?;
    let node = state.node.clone();
    let stored = receipt.clone();
    // The write waits for a durable commit; keep that wait off the async executor.
    let inserted = tokio::task::spawn_blocking(move || {
        node.registry().insert_receipt(&stored, request.as_ref())
    })
    .await
    .map_err(ApiError::internal)?;
    let inserted = match inserted {
        Ok(inserted) => inserted,
        Err(e @ (E::Invalid { .. } | E::Malformed { .. })) => {
            return Err(reject(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()));
        }
        Err(e @ E::Quota { .. }) => {
            return Err(reject(StatusCode::TOO_MANY_REQUESTS, e.to_string()));
        }
        Err(e) => return Err(ApiError::internal(e)),
    };
    if inserted == Inserted::New {
        state
            .metrics
            .receipts_accepted
            .fetch_add(1, Ordering::Relaxed);
        state.evidence_arrived();
    }
    Ok(created(inserted, receipt.hash()))
}

async fn post_feedback(State(state): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    use agora_registry::Error as E;
    state.count();
    let reject = |status, message| state.reject(status, message);
    let feedback = SignedFeedback::from_bytes(&body)
        .map_err(|e| reject(StatusCode::BAD_REQUEST, e.to_string()))?;
    let node = state.node.clone();
    let stored = feedback.clone();
    let inserted = tokio::task::spawn_blocking(move || node.registry().insert_feedback(&stored))
        .await
        .map_err(ApiError::internal)?;
    let inserted = match inserted {
        Ok(inserted) => inserted,
        Err(e @ (E::UnknownReceipt(_) | E::UnknownAgent { .. })) => {
            return Err(reject(StatusCode::NOT_FOUND, e.to_string()));
        }
        Err(e @ E::DuplicateFeedback(_)) => {
            return Err(reject(StatusCode::CONFLICT, e.to_string()));
        }
        Err(e @ (E::Feedback(_) | E::Invalid { .. })) => {
            return Err(reject(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()));
        }
        Err(e @ E::Quota { .. }) => {
            return Err(reject(StatusCode::TOO_MANY_REQUESTS, e.to_string()));
        }
        Err(e) => return Err(ApiError::internal(e)),
    };
    if inserted == Inserted::New {
        state
            .metrics
            .feedback_accepted
            .fetch_add(1, Ordering::Relaxed);
        state.evidence_arrived();
    }
    Ok(created(inserted, feedback.hash()))
}

/// A caller-signed request to run an agent here. The request and the payload travel as strings
/// so that their bytes are exactly those the caller signed and hashed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Invoke {
    /// The signed request envelope (`agora/request/v1`).
    request: String,
    /// The action.
    action: String,
    /// The payload, exactly as hashed into the request's input hash.
    payload: String,
}

async fn invoke(State(state): State<Shared>, body: Bytes) -> Result<Json<Value>, ApiError> {
    use crate::RunError;
    use agora_registry::Error as E;
    state.count();
    let reject = |status, message| state.reject(status, message);
    let call: Invoke = serde_json::from_slice(&body)
        .map_err(|e| reject(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    let request = agora_registry::SignedRequest::from_bytes(call.request.as_bytes())
        .map_err(|e| reject(StatusCode::BAD_REQUEST, e.to_string()))?;
    let execution = match state
        .node
        .run_request(&request, &call.action, call.payload.as_bytes())
        .await
    {
        Ok(execution) => execution,
        Err(e @ RunError::InputMismatch { .. }) => {
            return Err(reject(StatusCode::BAD_REQUEST, e.to_string()));
        }
        Err(e @ RunError::Registry(E::Replayed { .. })) => {
            return Err(reject(StatusCode::CONFLICT, e.to_string()));
        }
        Err(
            e @ RunError::Registry(
                E::WrongHost { .. }
                | E::RequestExpired { .. }
                | E::RequestTooLongLived { .. }
                | E::Malformed { .. },
            ),
        ) => return Err(reject(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())),
        Err(e @ RunError::Registry(E::UnknownAgent { .. })) => {
            return Err(reject(StatusCode::NOT_FOUND, e.to_string()));
        }
        Err(e) => return Err(ApiError::internal(e)),
    };
    // The call ran, whatever its outcome: the answer is the outcome and the signed receipt,
    // which reaches the scores at the next refresh.
    Ok(Json(json!({
        "outcome": execution.outcome.name(),
        "error": execution.error().map(|e| e.to_string()),
        "output": execution.output.as_deref().map(String::from_utf8_lossy),
        "fuel_used": execution.fuel_used,
        "charge": execution.charge,
        "receipt": String::from_utf8_lossy(execution.receipt.as_bytes()),
    })))
}

fn created(inserted: Inserted, hash: Hash) -> Response {
    let status = match inserted {
        Inserted::New => StatusCode::CREATED,
        Inserted::AlreadyPresent => StatusCode::OK,
        // Kept until what it refers to arrives.
        Inserted::Pending => StatusCode::ACCEPTED,
    };
    (status, Json(json!({ "hash": hash }))).into_response()
}

async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
    let m = &state.metrics;
    let snapshot = state.snapshot();
    let text = format!(
        "# TYPE agora_http_requests_total counter\nagora_http_requests_total {}\n\
         # TYPE agora_http_rejected_total counter\nagora_http_rejected_total {}\n\
         # TYPE agora_receipts_accepted_total counter\nagora_receipts_accepted_total {}\n\
         # TYPE agora_feedback_accepted_total counter\nagora_feedback_accepted_total {}\n\
         # TYPE agora_scores_receipts gauge\nagora_scores_receipts {}\n\
         # TYPE agora_scores_compute_seconds gauge\nagora_scores_compute_seconds {}\n\
         # TYPE agora_scores_age_seconds gauge\nagora_scores_age_seconds {}\n\
         # TYPE agora_scores_skipped_rows gauge\nagora_scores_skipped_rows {}\n\
         # TYPE agora_refused_over_quota_total counter\nagora_refused_over_quota_total {}\n",
        m.requests.load(Ordering::Relaxed),
        m.rejected.load(Ordering::Relaxed),
        m.receipts_accepted.load(Ordering::Relaxed),
        m.feedback_accepted.load(Ordering::Relaxed),
        snapshot.calls,
        snapshot.took.as_secs_f64(),
        snapshot.computed.elapsed().as_secs_f64(),
        snapshot.skipped_rows,
        state.node.registry().refused_over_quota(),
    );
    let mut text = text;
    let sandbox = state.node.sandbox().stats();
    text.push_str(&format!(
        "# TYPE agora_components_compiled_total counter\nagora_components_compiled_total {}\n\
         # TYPE agora_agents_loaded gauge\nagora_agents_loaded {}\n\
         # TYPE agora_instance_pool_slots gauge\nagora_instance_pool_slots {}\n",
        sandbox.compiles,
        sandbox.loaded,
        match sandbox.allocation {
            Some(crate::Allocation::Pooling { instances }) => instances,
            _ => 0,
        },
    ));
    if let Some(disk) = sandbox.disk {
        text.push_str(&format!(
            "# TYPE agora_compiled_cache_hits_total counter\nagora_compiled_cache_hits_total {}\n\
             # TYPE agora_compiled_cache_misses_total counter\nagora_compiled_cache_misses_total {}\n\
             # TYPE agora_compiled_cache_rejected_total counter\nagora_compiled_cache_rejected_total {}\n\
             # TYPE agora_compiled_cache_evicted_total counter\nagora_compiled_cache_evicted_total {}\n",
            disk.hits, disk.misses, disk.rejected, disk.evicted,
        ));
    }
    if let Some(gossip) = &state.gossip {
        text.push_str(&format!(
            "# TYPE agora_gossip_accepted_total counter\nagora_gossip_accepted_total {}\n\
             # TYPE agora_gossip_dropped_total counter\nagora_gossip_dropped_total {}\n\
             # TYPE agora_gossip_over_quota_total counter\nagora_gossip_over_quota_total {}\n",
            gossip.accepted(),
            gossip.dropped(),
            gossip.over_quota(),
        ));
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
}
