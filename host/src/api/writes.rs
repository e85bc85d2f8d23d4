//! The write endpoints: signed receipts and feedback from anyone, verified before they are
//! stored, and caller-signed invocations, admitted by the caller's rate and a slot. Each refusal
//! is a 4xx that names the fault.

use std::sync::atomic::{AtomicU64, Ordering};

use agora_registry::{Hash, Inserted, ReceiptMessage, Registry, SignedFeedback};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::ApiBody;
use super::{ApiState, Shared};

pub(crate) async fn post_receipt(
    State(state): State<Shared>,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
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
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
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

pub(crate) async fn invoke(
    State(state): State<Shared>,
    ApiBody(body): ApiBody,
) -> Result<Json<Value>, ApiError> {
    use crate::RunError;
    use agora_registry::Error as E;
    state.count();
    let reject = |status, message| state.reject(status, message);
    let call: Invoke = serde_json::from_slice(&body)
        .map_err(|e| reject(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    let request = agora_registry::SignedRequest::from_bytes(call.request.as_bytes())
        .map_err(|e| reject(StatusCode::BAD_REQUEST, e.to_string()))?;
    // Only a verified caller is charged against its rate; then one of the invocation slots,
    // held until the call has run and its receipt is stored.
    state.edge.admit_caller(&request.body().caller)?;
    let _slot = state.edge.invocation_slot()?;
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
        Err(e @ RunError::HostBusy { .. }) => {
            return Err(
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                    .retry_after(std::time::Duration::from_secs(1)),
            );
        }
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
