//! The API's edge: what every request passes before a handler sees it, and the admission of
//! invocations. It refuses requests a browser page could forge (a foreign `Origin`, a
//! non-loopback `Host` on a loopback API; a body not declared JSON is refused where bodies are
//! read, in [`super::extract`], after the method is known to be allowed), sheds load beyond one global
//! concurrency limit with 503 instead of queueing, and rate-limits invocations per caller key.
//! The connection-level bounds (header timeout, connection cap) are in [`super::server`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agora_registry::PublicKey;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::config::{ApiConfig, HttpLimits};
use super::error::ApiError;

/// Load shedding answers ask the client to come back after this long.
const RETRY_AFTER_OVERLOAD: Duration = Duration::from_secs(1);

/// The edge's state: the request policy, the two concurrency limits and the callers' rates.
pub(crate) struct Edge {
    allowed_origins: Vec<String>,
    /// `Some` when the API listens on loopback: the host names a request may carry.
    loopback_names: Option<Vec<String>>,
    max_body_bytes: usize,
    requests: Arc<Semaphore>,
    invocations: Arc<Semaphore>,
    rates: CallerRates<PublicKey>,
    /// MCP clients sign nothing: they are told apart, and rate-limited, by their address.
    client_rates: CallerRates<IpAddr>,
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
            invocations: Arc::new(Semaphore::new(limits.max_concurrent_invocations)),
            rates: CallerRates::new(limits),
            client_rates: CallerRates::new(limits),
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

    /// A slot for one invocation, or 503 at once when all are taken.
    pub(crate) fn invocation_slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.invocations.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "every invocation slot is busy; try again shortly",
            )
            .retry_after(RETRY_AFTER_OVERLOAD)
        })
    }

    /// Admits one invocation by `caller`, or says with 429 when the next would be admitted.
    pub(crate) fn admit_caller(&self, caller: &PublicKey) -> Result<(), ApiError> {
        self.rates.admit(caller, Instant::now()).map_err(|wait| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("caller {caller} is invoking faster than this host admits"),
            )
            .retry_after(wait)
        })
    }

    /// Admits one unsigned (MCP) invocation from the client at `address`, or says how long until
    /// the next would be admitted.
    pub(crate) fn admit_client(&self, address: IpAddr) -> Result<(), Duration> {
        self.client_rates.admit(&address, Instant::now())
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

/// Token buckets, one per caller (a key, or an address), in a bounded table.
struct CallerRates<K> {
    per_second: f64,
    burst: f64,
    max_tracked: usize,
    table: Mutex<RateTable<K>>,
}

struct RateTable<K> {
    buckets: HashMap<K, Bucket>,
    /// When the table is full of recent callers, no sweep can free a place before this.
    no_sweep_before: Option<Instant>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl<K: std::hash::Hash + Eq + Copy> CallerRates<K> {
    fn new(limits: &HttpLimits) -> CallerRates<K> {
        CallerRates {
            per_second: f64::from(limits.invocations_per_caller_per_second),
            burst: f64::from(limits.invocation_burst_per_caller),
            max_tracked: limits.max_tracked_callers,
            table: Mutex::new(RateTable {
                buckets: HashMap::new(),
                no_sweep_before: None,
            }),
        }
    }

    /// The tokens a bucket holds at `now`.
    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.per_second).min(self.burst)
    }

    /// Takes a token from `caller`'s bucket, or returns how long until one is there.
    fn admit(&self, caller: &K, now: Instant) -> Result<(), Duration> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !table.buckets.contains_key(caller) && table.buckets.len() >= self.max_tracked {
            self.sweep(&mut table, now)?;
        }
        let burst = self.burst;
        let bucket = table.buckets.entry(*caller).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let tokens = self.refilled(bucket, now);
        bucket.at = now;
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            Ok(())
        } else {
            bucket.tokens = tokens;
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second))
        }
    }

    /// Forgets every caller whose bucket is full again (it is owed nothing, so forgetting it
    /// changes no answer). When none is, refuses until the first would be.
    fn sweep(&self, table: &mut RateTable<K>, now: Instant) -> Result<(), Duration> {
        if let Some(at) = table.no_sweep_before
            && now < at
        {
            return Err(at - now);
        }
        let mut soonest_full = Duration::MAX;
        let buckets = std::mem::take(&mut table.buckets);
        table.buckets = buckets
            .into_iter()
            .filter(|(_, bucket)| {
                let missing = self.burst - self.refilled(bucket, now);
                if missing <= 0.0 {
                    return false;
                }
                soonest_full = soonest_full.min(Duration::from_secs_f64(missing / self.per_second));
                true
            })
            .collect();
        if table.buckets.len() >= self.max_tracked {
            table.no_sweep_before = Some(now + soonest_full);
            return Err(soonest_full);
        }
        table.no_sweep_before = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_registry::SecretKey;

    fn rates(per_second: u32, burst: u32, max_tracked: usize) -> CallerRates<PublicKey> {
        CallerRates::new(&HttpLimits {
            invocations_per_caller_per_second: per_second,
            invocation_burst_per_caller: burst,
            max_tracked_callers: max_tracked,
            ..HttpLimits::default()
        })
    }

    #[test]
    fn a_caller_gets_its_burst_then_one_call_per_interval() {
        let rates = rates(10, 3, 100);
        let caller = SecretKey::generate().public();
        let start = Instant::now();
        for _ in 0..3 {
            rates.admit(&caller, start).unwrap();
        }
        let wait = rates.admit(&caller, start).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        rates.admit(&caller, start + wait).unwrap();
        // Another caller is not held back by the first.
        rates.admit(&SecretKey::generate().public(), start).unwrap();
    }

    #[test]
    fn the_table_forgets_idle_callers_and_refuses_newcomers_while_it_is_full_of_recent_ones() {
        let rates = rates(10, 2, 2);
        let start = Instant::now();
        let (a, b, c) = (
            SecretKey::generate().public(),
            SecretKey::generate().public(),
            SecretKey::generate().public(),
        );
        rates.admit(&a, start).unwrap();
        rates.admit(&b, start).unwrap();
        let wait = rates.admit(&c, start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // Until then the table is not swept again; after it, a and b are full and forgotten.
        assert!(rates.admit(&c, start + Duration::from_millis(50)).is_err());
        rates.admit(&c, start + wait).unwrap();
        assert_eq!(rates.table.lock().unwrap().buckets.len(), 1);
    }

    #[test]
    fn host_names_drop_the_port() {
        assert_eq!(host_name("localhost:7070"), "localhost");
        assert_eq!(host_name("[::1]:7070"), "[::1]");
        assert_eq!(host_name("[::1]"), "[::1]");
        assert_eq!(host_name("evil.example"), "evil.example");
    }
}
