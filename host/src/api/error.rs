//! Error answers: a status and a JSON body `{"error": …}` naming the fault, and the parsers of
//! path segments that produce them.

use std::time::Duration;

use agora_registry::{Hash, PublicKey};
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answer: a status and a JSON body naming the fault.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    /// When the client may try again (`Retry-After`, in whole seconds rounded up).
    retry_after: Option<Duration>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Logs an unexpected failure and answers 500 without its details.
    pub(crate) fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "http api");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }

    /// Tells the client when to try again.
    pub(crate) fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if let Some(wait) = self.retry_after {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

/// A hash path segment, or 400 naming what is wrong with it.
pub(crate) fn parse_hash(text: &str) -> Result<Hash, ApiError> {
    text.parse().map_err(|e: agora_registry::ParseHashError| {
        ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
    })
}

/// A key to look up: 400 if it is not 64 hex digits; `None` if it is, but no ed25519 key has
/// those bytes (nothing can be stored under it, so the lookup finds nothing).
pub(crate) fn parse_key(text: &str) -> Result<Option<PublicKey>, ApiError> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "`{}` is not a key: expected 64 hex digits",
                text.chars().take(80).collect::<String>()
            ),
        ));
    }
    Ok(text.parse().ok())
}
