//! The host's HTTP API: versioned JSON under `/v1`, plus `/healthz` and Prometheus `/metrics`.
//!
//! Reads serve the registry and the reputation computed from it; writes accept signed receipts
//! and feedback from anyone, verified before they are stored, and are refused with a 4xx that
//! names the fault otherwise. Every request runs under a body-size limit, a timeout and a
//! concurrency limit. Served on loopback unless configured otherwise.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agora_registry::reputation::{Reputation, ScoreParams, Scores, compute};
use agora_registry::{Hash, Inserted, PublicKey, SignedFeedback, SignedReceipt};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
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
/// Scores are recomputed at most this often.
const SCORE_REFRESH: Duration = Duration::from_secs(2);
/// Most receipts in one page.
const MAX_PAGE: usize = 500;

/// How to serve the API.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Where to listen. Default `127.0.0.1:0` (an ephemeral port on loopback).
    pub listen: SocketAddr,
    /// Keys trusted a priori besides this host's own.
    pub extra_anchors: Vec<PublicKey>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            extra_anchors: Vec::new(),
        }
    }
}

/// A running API server.
pub struct ApiServer {
    addr: SocketAddr,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// Binds and starts serving `node`.
    pub async fn start(node: Node, config: ApiConfig) -> std::io::Result<ApiServer> {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let mut anchors = vec![node.public_key()];
        anchors.extend(config.extra_anchors);
        let state = std::sync::Arc::new(ApiState {
            node,
            anchors,
            scores: Mutex::new(None),
            metrics: Metrics::default(),
        });
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
    }
}

struct ApiState {
    node: Node,
    anchors: Vec<PublicKey>,
    scores: Mutex<Option<(Instant, std::sync::Arc<Scores>)>>,
    metrics: Metrics,
}

#[derive(Default)]
struct Metrics {
    requests: AtomicU64,
    rejected: AtomicU64,
    receipts_accepted: AtomicU64,
    feedback_accepted: AtomicU64,
}

type Shared = std::sync::Arc<ApiState>;

fn router(state: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/v1/agents", get(list_agents))
        .route("/v1/agents/{hash}", get(agent_manifest))
        .route("/v1/agents/{hash}/reputation", get(agent_reputation))
        .route("/v1/agents/{hash}/receipts", get(agent_receipts))
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

impl ApiState {
    fn count(&self) {
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Scores from the current evidence, recomputed at most every [`SCORE_REFRESH`].
    fn scores(&self) -> Result<std::sync::Arc<Scores>, ApiError> {
        let mut cached = self.scores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, scores)) = cached.as_ref()
            && at.elapsed() < SCORE_REFRESH
        {
            return Ok(scores.clone());
        }
        let evidence = self
            .node
            .registry()
            .evidence_set()
            .map_err(ApiError::internal)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let scores = std::sync::Arc::new(compute(
            &evidence,
            &ScoreParams::new(self.anchors.clone(), now),
        ));
        *cached = Some((Instant::now(), scores.clone()));
        Ok(scores)
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

    fn invalidate_scores(&self) {
        *self.scores.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

fn reputation_json(reputation: &Reputation) -> Value {
    json!({
        "quality": reputation.quality(),
        "uncertainty": reputation.uncertainty(),
        "lower_bound": reputation.lower_bound(),
        "evidence": reputation.evidence,
    })
}

#[derive(Deserialize)]
struct AgentFilter {
    name: Option<String>,
    action: Option<String>,
    publisher: Option<String>,
}

async fn list_agents(
    State(state): State<Shared>,
    Query(filter): Query<AgentFilter>,
) -> Result<Json<Value>, ApiError> {
    state.count();
    let publisher = filter
        .publisher
        .as_deref()
        .map(|p| {
            p.parse::<PublicKey>()
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))
        })
        .transpose()?;
    let scores = state.scores()?;
    let mut agents: Vec<(f64, Value)> = state
        .node
        .registry()
        .manifests()
        .map_err(ApiError::internal)?
        .into_iter()
        .filter(|m| {
            let body = m.body();
            filter
                .name
                .as_ref()
                .is_none_or(|n| body.name.contains(n.as_str()))
                && filter
                    .action
                    .as_ref()
                    .is_none_or(|a| body.actions.contains(a))
                && publisher.is_none_or(|p| body.publisher == p)
        })
        .map(|m| {
            let body = m.body();
            let reputation = scores.agent(&body.component.hash);
            let entry = json!({
                "manifest": m.hash(),
                "name": body.name,
                "version": body.version,
                "publisher": body.publisher,
                "component": body.component.hash,
                "actions": body.actions,
                "capabilities": body.capabilities,
                "price_per_mfuel": body.price_per_mfuel,
                "description": body.description,
                "reputation": reputation_json(&reputation),
            });
            (reputation.lower_bound(), entry)
        })
        .collect();
    // Best lower bound first; ties by manifest hash, so every host lists in the same order.
    agents.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| a.1["manifest"].as_str().cmp(&b.1["manifest"].as_str()))
    });
    Ok(Json(
        json!({ "agents": agents.into_iter().map(|(_, a)| a).collect::<Vec<_>>() }),
    ))
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
    let scores = state.scores()?;
    let component = manifest.body().component.hash;
    let mut body = reputation_json(&scores.agent(&component));
    body["manifest"] = json!(manifest.hash());
    body["component"] = json!(component);
    body["anchors"] = json!(state.anchors);
    Ok(Json(body))
}

#[derive(Deserialize)]
struct Page {
    limit: Option<usize>,
}

#[derive(Serialize)]
struct ReceiptsPage {
    receipts: Vec<Value>,
}

async fn agent_receipts(
    State(state): State<Shared>,
    Path(hash): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<ReceiptsPage>, ApiError> {
    state.count();
    let hash = parse_hash(&hash)?;
    let limit = page.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    let receipts = state
        .node
        .registry()
        .receipts_for_manifest(&hash, limit)
        .map_err(ApiError::internal)?
        .iter()
        .map(|r| serde_json::from_slice(r.as_bytes()).unwrap_or(Value::Null))
        .collect();
    Ok(Json(ReceiptsPage { receipts }))
}

async fn post_receipt(State(state): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    state.count();
    let receipt = SignedReceipt::from_bytes(&body)
        .map_err(|e| state.reject(StatusCode::BAD_REQUEST, e.to_string()))?;
    let inserted = state
        .node
        .registry()
        .insert_receipt(&receipt)
        .map_err(ApiError::internal)?;
    if inserted == Inserted::New {
        state
            .metrics
            .receipts_accepted
            .fetch_add(1, Ordering::Relaxed);
        state.invalidate_scores();
    }
    Ok(created(inserted, receipt.hash()))
}

async fn post_feedback(State(state): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    use agora_registry::Error as E;
    state.count();
    let reject = |status, message| state.reject(status, message);
    let feedback = SignedFeedback::from_bytes(&body)
        .map_err(|e| reject(StatusCode::BAD_REQUEST, e.to_string()))?;
    let inserted = match state.node.registry().insert_feedback(&feedback) {
        Ok(inserted) => inserted,
        Err(e @ (E::UnknownReceipt(_) | E::UnknownAgent { .. })) => {
            return Err(reject(StatusCode::NOT_FOUND, e.to_string()));
        }
        Err(e @ E::DuplicateFeedback(_)) => {
            return Err(reject(StatusCode::CONFLICT, e.to_string()));
        }
        Err(e @ E::Feedback(_)) => {
            return Err(reject(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()));
        }
        Err(e) => return Err(ApiError::internal(e)),
    };
    if inserted == Inserted::New {
        state
            .metrics
            .feedback_accepted
            .fetch_add(1, Ordering::Relaxed);
        state.invalidate_scores();
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
    // The call ran, whatever its outcome: the answer is the outcome and the signed receipt. The
    // receipt reaches the scores at the next refresh; invalidating here would recompute them
    // from all evidence after every call.
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
    };
    (status, Json(json!({ "hash": hash }))).into_response()
}

async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
    let m = &state.metrics;
    let text = format!(
        "# TYPE agora_http_requests_total counter\nagora_http_requests_total {}\n\
         # TYPE agora_http_rejected_total counter\nagora_http_rejected_total {}\n\
         # TYPE agora_receipts_accepted_total counter\nagora_receipts_accepted_total {}\n\
         # TYPE agora_feedback_accepted_total counter\nagora_feedback_accepted_total {}\n",
        m.requests.load(Ordering::Relaxed),
        m.rejected.load(Ordering::Relaxed),
        m.receipts_accepted.load(Ordering::Relaxed),
        m.feedback_accepted.load(Ordering::Relaxed),
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
}
