//! Extractors whose refusals are [`ApiError`]s, JSON like every other error answer, instead of
//! axum's plain-text rejections: a client (or a schema-driven fuzzer) gets one content type
//! for every error, as the OpenAPI document says.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::de::DeserializeOwned;

use super::edge::printable;
use super::error::ApiError;

/// A path segment, deserialised.
pub(crate) struct ApiPath<T>(pub T);

/// The query string, deserialised.
pub(crate) struct ApiQuery<T>(pub T);

/// The whole body, under the body limit, declared `Content-Type: application/json`: a web page
/// can send other types cross-site without a CORS preflight, never this one.
pub(crate) struct ApiBody(pub Bytes);

/// The status and text of an axum rejection, as an [`ApiError`].
fn refused(rejection: impl IntoResponse + std::fmt::Display) -> ApiError {
    let message = rejection.to_string();
    ApiError::new(rejection.into_response().status(), message)
}

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| ApiPath(value))
            .map_err(refused)
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(refused)
    }
}

impl<S: Send + Sync> FromRequest<S> for ApiBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "the body must be `Content-Type: application/json`, not `{}`",
                    printable(content_type)
                ),
            ));
        }
        Bytes::from_request(request, state)
            .await
            .map(ApiBody)
            .map_err(refused)
    }
}
