//! The write endpoints: signed receipts, feedback and fraud proofs from anyone, verified before
//! they are stored, and caller-signed invocations (run by [`crate::invoke`], which admits them by the
//! caller's rate and a slot). Each refusal is a 4xx that names the fault.

use std::sync::atomic::{AtomicU64, Ordering};

use agora_registry::{FraudProof, Hash, Inserted, ReceiptMessage, Registry, SignedFeedback};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::net::SocketAddr;

use super::error::ApiError;
use super::extract::ApiBody;
use super::{ApiState, Shared};
use crate::node::{FraudError, ReexecuteError};

pub(crate) async fn post_receipt(
    State(state): State<Shared>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    admit_record(&state, client)?;
    use agora_registry::Error as E;
    let refusal = |e: &E| match e {
        E::Invalid { .. } | E::Malformed { .. } => Some(StatusCode::UNPROCESSABLE_ENTITY),
        E::Quota { .. } => Some(StatusCode::TOO_MANY_REQUESTS),
        _ => None,
    };
    store(
        &state,
        body,
        &state.metrics.receipts_accepted,
        refusal,
        |registry, body| {
            let (receipt, request) = ReceiptMessage::parse(body).and_then(|m| m.verify())?;
            Ok((
                receipt.hash(),
                registry.insert_receipt(&receipt, request.as_ref()),
            ))
        },
    )
    .await
}

pub(crate) async fn post_feedback(
    State(state): State<Shared>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    admit_record(&state, client)?;
    use agora_registry::Error as E;
    let refusal = |e: &E| match e {
        E::UnknownReceipt(_) | E::UnknownAgent { .. } => Some(StatusCode::NOT_FOUND),
        E::DuplicateFeedback(_) => Some(StatusCode::CONFLICT),
        E::Feedback(_) | E::Invalid { .. } => Some(StatusCode::UNPROCESSABLE_ENTITY),
        E::Quota { .. } => Some(StatusCode::TOO_MANY_REQUESTS),
        _ => None,
    };
    store(
        &state,
        body,
        &state.metrics.feedback_accepted,
        refusal,
        |registry, body| {
            let feedback = SignedFeedback::from_bytes(body)?;
            Ok((feedback.hash(), registry.insert_feedback(&feedback)))
        },
    )
    .await
}

/// Charges one signed record to its client's rate (the address the server recorded).
fn admit_record(state: &ApiState, client: SocketAddr) -> Result<(), ApiError> {
    state.edge.admit_record(client.ip()).inspect_err(|_| {
        state.metrics.rejected.fetch_add(1, Ordering::Relaxed);
    })
}

/// What verifying and storing one record gave: its hash and the registry's answer, or the
/// verification's refusal.
type Stored = Result<(Hash, Result<Inserted, agora_registry::Error>), agora_registry::Error>;

/// Verifies and stores one signed record: both off the async executor (signature checks, and a
/// wait for a durable commit). A record that does not verify is a 400; a refusal by the registry
/// gets the status `refusal` gives it (a 500 if none); a stored one 201, 200 or 202.
async fn store(
    state: &ApiState,
    body: Bytes,
    accepted: &AtomicU64,
    refusal: impl Fn(&agora_registry::Error) -> Option<StatusCode>,
    verify_and_insert: impl FnOnce(&Registry, &[u8]) -> Stored + Send + 'static,
) -> Result<Response, ApiError> {
    state.count();
    let node = state.node.clone();
    let stored = tokio::task::spawn_blocking(move || verify_and_insert(node.registry(), &body))
        .await
        .map_err(ApiError::internal)?;
    let (hash, inserted) =
        stored.map_err(|e| state.reject(StatusCode::BAD_REQUEST, e.to_string()))?;
    let inserted = match inserted {
        Ok(inserted) => inserted,
        Err(e) => {
            return Err(match refusal(&e) {
                Some(status) => state.reject(status, e.to_string()),
                None => ApiError::internal(e),
            });
        }
    };
    if inserted == Inserted::New {
        accepted.fetch_add(1, Ordering::Relaxed);
        state.evidence_arrived();
    }
    Ok(created(inserted, hash))
}

/// Runs a caller-signed request here (see [`crate::invoke`]): the answer carries the signed
/// receipt whatever the outcome; a call that was not run is its refusal's status.
pub(crate) async fn invoke(
    State(state): State<Shared>,
    ApiBody(body): ApiBody,
) -> Result<Json<crate::invoke::InvokeAnswer>, ApiError> {
    state.count();
    let message = serde_json::from_slice(&body)
        .map_err(|e| state.reject(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    match crate::invoke::serve(&state.node, &state.admission, &message).await {
        Ok(answer) => Ok(Json(answer)),
        Err(refusal) => {
            let status =
                StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut error = state.reject(status, refusal.to_string());
            if let Some(wait) = refusal.retry_after() {
                error = error.retry_after(wait);
            }
            Err(error)
        }
    }
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

/// `POST /v1/fraud-proofs`: a proof that a host signed a receipt its call did not produce. The
/// call is run again here (it costs this host what the call costs, so it is admitted like any
/// record); if this host finds the receipt wrong too, the proof is recorded and the receipt's
/// host counts as dishonest from the next score on. 200 with what was found; 422 for a proof
/// that does not hold; 404 when this host lacks the component.
pub(crate) async fn post_fraud_proof(
    State(state): State<Shared>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    admit_record(&state, client)?;
    state.count();
    let unprocessable = |message: String| state.reject(StatusCode::UNPROCESSABLE_ENTITY, message);
    // Two signature checks and a hex decode of up to the body limit: off the executor.
    let parsed = tokio::task::spawn_blocking(move || FraudProof::from_bytes(&body))
        .await
        .map_err(ApiError::internal)?;
    let proof = parsed.map_err(|e| unprocessable(e.to_string()))?;
    match state.node.accept_fraud_proof(&proof).await {
        Ok(recorded) => {
            state.evidence_arrived();
            Ok(Json(json!({
                "host": recorded.host,
                "receipt": recorded.receipt,
                "finding": recorded.finding,
            }))
            .into_response())
        }
        Err(error @ FraudError::MissingComponent(_)) => {
            Err(state.reject(StatusCode::NOT_FOUND, error.to_string()))
        }
        Err(
            error @ (FraudError::Invalid(_)
            | FraudError::NotFraud { .. }
            | FraudError::Reexecute(
                ReexecuteError::Unverifiable { .. }
                | ReexecuteError::ComponentMismatch { .. }
                | ReexecuteError::InputMismatch { .. }
                | ReexecuteError::TranscriptMismatch { .. }
                | ReexecuteError::AboveHostLimits { .. }
                | ReexecuteError::Check { .. },
            )),
        ) => Err(unprocessable(error.to_string())),
        Err(error) => Err(ApiError::internal(error)),
    }
}
