//! What a verifier fetches to run a receipt's call again: the signed receipt, the call's input
//! and transcript (kept for [`CALL_DATA_RETENTION_MS`](agora_registry::CALL_DATA_RETENTION_MS)
//! after the receipt), and the component, each by hash.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Shared;
use super::error::{ApiError, parse_hash};
use super::extract::ApiPath;

/// `GET /v1/receipts/{hash}`: the signed receipt, byte for byte.
pub(super) async fn get_receipt(
    State(state): State<Shared>,
    ApiPath(hash): ApiPath<String>,
) -> Result<Response, ApiError> {
    state.count();
    let hash = parse_hash(&hash)?;
    let receipt = state
        .read(move |registry| registry.receipt(&hash))
        .await?
        .ok_or_else(|| not_found(format!("no receipt {hash}")))?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        receipt.as_bytes().to_vec(),
    )
        .into_response())
}

/// `GET /v1/call-data/{hash}`: an input (by its receipt's `input_hash`) or a transcript (by its
/// BLAKE3), while this host keeps it.
pub(super) async fn get_call_data(
    State(state): State<Shared>,
    ApiPath(hash): ApiPath<String>,
) -> Result<Response, ApiError> {
    state.count();
    let hash = parse_hash(&hash)?;
    let bytes = state
        .read(move |registry| registry.call_data(&hash))
        .await?
        .ok_or_else(|| not_found(format!("no input or transcript {hash} is kept here")))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// `GET /v1/components/{hash}`: a component this host stores.
pub(super) async fn get_component(
    State(state): State<Shared>,
    ApiPath(hash): ApiPath<String>,
) -> Result<Response, ApiError> {
    state.count();
    let hash = parse_hash(&hash)?;
    let bytes = state
        .node
        .blobs()
        .get(&hash)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| not_found(format!("no component {hash} is stored here")))?;
    Ok(([(header::CONTENT_TYPE, "application/wasm")], bytes).into_response())
}

fn not_found(message: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, message)
}
