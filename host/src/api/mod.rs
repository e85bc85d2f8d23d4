//! The host's HTTP API: versioned JSON under `/v1`, plus `/healthz` and Prometheus `/metrics`.
//! The API is described by an OpenAPI document, [`OPENAPI`], served at `/v1/openapi.json`.
//!
//! Reads serve the registry and the reputation computed from it; writes accept signed receipts
//! and feedback from anyone, verified before they are stored, and are refused with a 4xx that
//! names the fault otherwise. Served on loopback unless configured otherwise.
//!
//! Every client is bounded ([`HttpLimits`]): connections by a cap and a header-read timeout,
//! requests by one global concurrency limit (503 beyond it, nothing queues), a body limit and a
//! timeout, invocations by their own slots and a per-caller rate. Requests a web page could forge
//! (a foreign `Origin`, a non-JSON POST, a rebound `Host` on a loopback API) are refused.
//!
//! - [`server`]: binding, the accept loop and hyper's connection settings.
//! - `edge`: the checks every request passes, load shedding and invocation admission.
//! - `routes`, `writes`: the endpoints; `verify`: what verifiers fetch (receipts, inputs,
//!   transcripts, components). `metrics`: `/metrics`. `mcp`: agents as MCP tools.
//! - `scores`: scores kept fresh in the background; reads never wait for them.

mod config;
mod edge;
mod error;
mod extract;
mod mcp;
mod metrics;
mod routes;
mod scores;
pub mod server;
mod verify;
mod writes;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use agora_registry::{PublicKey, Registry};
use axum::http::StatusCode;

pub use config::{ApiConfig, HttpLimits, InvalidLimits};
pub use scores::SCORE_REFRESH;
pub use server::{ApiServer, StartError};

use edge::Edge;
use error::{ApiError, parse_hash};
use scores::ScoreSnapshot;

use crate::node::Node;

/// The OpenAPI 3.1 document describing this API (kept in the repository as `host/openapi.json`).
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// What every handler shares.
struct ApiState {
    node: Node,
    anchors: Vec<PublicKey>,
    /// The latest computed scores; replaced whole, never edited.
    scores: RwLock<Arc<ScoreSnapshot>>,
    /// Wakes the score refresher early.
    evidence_arrived: tokio::sync::Notify,
    metrics: Metrics,
    gossip: Option<Arc<crate::net::GossipStats>>,
    audit: Option<Arc<crate::net::AuditStats>>,
    edge: Arc<Edge>,
    admission: Arc<crate::invoke::Admission>,
}

type Shared = Arc<ApiState>;

#[derive(Default)]
struct Metrics {
    requests: AtomicU64,
    rejected: AtomicU64,
    receipts_accepted: AtomicU64,
    feedback_accepted: AtomicU64,
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

    /// Runs a registry read on the blocking pool: SQLite calls block, and on a 2-core host two
    /// slow reads on the executor would stall gossip, timers and the deadlines that stop guests.
    /// A failed read is a 500 (logged, its details not shown).
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Registry) -> Result<T, agora_registry::Error> + Send + 'static,
    ) -> Result<T, ApiError> {
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || read(node.registry()))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)
    }

    /// The manifest named by a path segment: 400 if it is not a hash, 404 if unknown.
    async fn manifest(&self, hash: &str) -> Result<agora_registry::SignedManifest, ApiError> {
        let hash = parse_hash(hash)?;
        self.read(move |registry| registry.manifest(&hash))
            .await?
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
