//! The API's edge: what every request passes before a handler sees it. It refuses requests a
//! browser page could forge (a foreign `Origin`, a non-loopback `Host` on a loopback API; a body
//! not declared JSON is refused where bodies are read, in [`super::extract`], after the method
//! is known to be allowed) and sheds load beyond one global concurrency limit with 503 instead
//! of queueing. Invocations are admitted by [`crate::invoke::Admission`]; the connection-level
//! bounds (header timeout, connection cap) are in [`super::server`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::config::ApiConfig;
use super::error::ApiError;

/// Load shedding answers ask the client to come back after this long.
pub(crate) const RETRY_AFTER_OVERLOAD: Duration = Duration::from_secs(1);

/// The edge's state: the request policy and the global concurrency limit.
pub(crate) struct Edge {
    allowed_origins: Vec<String>,
    /// `Some` when the API listens on loopback: the host names a request may carry.
    loopback_names: Option<Vec<String>>,
    max_body_bytes: usize,
    requests: Arc<Semaphore>,
    /// Signed records sent per client address.
    records: crate::invoke::CallerRates<std::net::IpAddr>,
}

impl Edge {
    pub(crate) fn new(config: &ApiConfig, listening: SocketAddr) -> Edge {
        let limits = &config.limits;
        let loopback_names = listening.ip().is_loopback().then(|| {
            let own = match listening {
                SocketAddr::V4(v4) => v4.ip().to_string(),
                SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
            };
            vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into(), own]
        });
        Edge {
            allowed_origins: config
                .allowed_origins
                .iter()
                .map(|origin| origin.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            loopback_names,
            max_body_bytes: limits.max_body_bytes,
            requests: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            records: crate::invoke::CallerRates::with_rate(
                limits.records_per_client_per_second,
                limits.record_burst_per_client,
                limits.max_tracked_callers,
            ),
        }
    }

    /// Refuses what a browser page could forge, before anything else is done.
    fn check_request(&self, request: &Request) -> Result<(), ApiError> {
        let headers = request.headers();
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
            if !self
                .allowed_origins
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin))
            {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "requests from the web origin `{}` are not allowed (see allowed_origins)",
                        printable(origin)
                    ),
                ));
            }
        }
        if let (Some(names), Some(host)) = (&self.loopback_names, headers.get(header::HOST)) {
            let host = host.to_str().unwrap_or("");
            let name = host_name(host);
            if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                return Err(ApiError::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    format!(
                        "this API listens on loopback and answers only to localhost, not `{}`",
                        printable(host)
                    ),
                ));
            }
        }
        // A body announced as too large is refused before a byte of it is read; one that does
        // not announce its length is cut by the body limit as it arrives.
        let announced = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if announced.is_some_and(|length| length > self.max_body_bytes as u64) {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "a request body may be at most {} bytes",
                    self.max_body_bytes
                ),
            ));
        }
        Ok(())
    }
}

impl Edge {
    /// Admits one signed record from the client at `client`, or 429 saying when the next would
    /// be admitted.
    pub(crate) fn admit_record(&self, client: std::net::IpAddr) -> Result<(), ApiError> {
        self.records
            .admit(&client, std::time::Instant::now())
            .map_err(|wait| {
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("{client} is sending records faster than this host admits"),
                )
                .retry_after(wait)
            })
    }
}

/// The middleware every request passes: the request checks, then one global concurrency slot
/// (held until the response is produced), or 503 at once.
pub(crate) async fn guard(State(edge): State<Arc<Edge>>, request: Request, next: Next) -> Response {
    if let Err(refused) = edge.check_request(&request) {
        return refused.into_response();
    }
    let Ok(_slot) = edge.requests.clone().try_acquire_owned() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the host is handling as many requests as it allows; try again shortly",
        )
        .retry_after(RETRY_AFTER_OVERLOAD)
        .into_response();
    };
    next.run(request).await
}

/// The host part of a `Host` header: `[::1]:7070` → `[::1]`, `localhost:7070` → `localhost`.
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.split(':').next().unwrap_or(host)
    }
}

/// A header value as it may be shown back: at most 64 characters, no control characters.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_drop_the_port() {
        assert_eq!(host_name("localhost:7070"), "localhost");
        assert_eq!(host_name("[::1]:7070"), "[::1]");
        assert_eq!(host_name("[::1]"), "[::1]");
        assert_eq!(host_name("evil.example"), "evil.example");
    }
}
