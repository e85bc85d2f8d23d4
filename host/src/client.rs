//! A client of a host's HTTP API (see [`crate::api`]), for the `agora reputation` command and
//! for anyone scripting against a host.
//!
//! ```no_run
//! # async fn example() -> Result<(), agora_host::client::ClientError> {
//! let client = agora_host::client::ApiClient::new("http://127.0.0.1:7070")?;
//! let agents = client.get_json("/v1/agents?action=quote").await?;
//! println!("{agents}");
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Longest a request may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a blob download may take: a component at the largest size a host accepts, on a slow
/// link.
const BLOB_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest answer accepted.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Why a request to a host's API failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base address is not an `http://host:port` or `https://host[:port]` URL.
    #[error("`{0}` is not an API address like http://127.0.0.1:7070 or https://api.example.com")]
    BadAddress(String),
    /// A trust root given for HTTPS is not usable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The host could not be reached or the exchange broke off.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// What was requested.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The host took longer than the client waits.
    #[error("{url} did not answer within {after:?}")]
    Timeout {
        /// What was requested.
        url: String,
        /// How long the client waited.
        after: Duration,
    },
    /// The host answered with an error status.
    #[error("{url}: {status} {message}")]
    Status {
        /// What was requested.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The error the host named, or the body.
        message: String,
    },
    /// The answer was not the JSON expected.
    #[error("{url} answered with malformed JSON: {reason}")]
    Malformed {
        /// What was requested.
        url: String,
        /// What the parser said.
        reason: String,
    },
}

/// A client of one host's API (or of any JSON-over-HTTP server, such as a model server).
#[derive(Clone)]
pub struct ApiClient {
    authority: String,
    /// The authority's host, which an `https` server's certificate must name.
    host: String,
    /// `host:port` to connect to (the authority with the scheme's default port).
    address: String,
    /// Set for `https`: the configuration and the name the certificate must carry.
    tls: Option<(
        std::sync::Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// Roots trusted besides Mozilla's, for `https`.
    extra_roots: Vec<Vec<u8>>,
    /// Sent as `Authorization: Bearer …`; never shown by `Debug`.
    bearer: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("authority", &self.authority)
            .field("tls", &self.tls.is_some())
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ApiClient {
    /// A client of the API at `base`: `http://127.0.0.1:7070` (plain HTTP, for loopback or
    /// behind a TLS-terminating proxy), or `https://host[:port]`, whose certificate must chain to
    /// one of Mozilla's roots (compiled in) or a root given with [`ApiClient::with_trust_root`].
    pub fn new(base: &str) -> Result<Self, ClientError> {
        let bad = || ClientError::BadAddress(base.to_owned());
        let uri: hyper::Uri = base.parse().map_err(|_| bad())?;
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(bad());
        }
        let authority = uri.authority().ok_or_else(bad)?;
        let (address, tls) = match (uri.scheme_str(), authority.port_u16()) {
            (Some("http"), Some(_)) => (authority.to_string(), false),
            (Some("https"), Some(_)) => (authority.to_string(), true),
            (Some("https"), None) => (format!("{}:443", authority.host()), true),
            _ => return Err(bad()),
        };
        let mut client = ApiClient {
            authority: authority.to_string(),
            host: authority.host().to_owned(),
            address,
            tls: None,
            extra_roots: Vec::new(),
            bearer: None,
            timeout: TIMEOUT,
        };
        if tls {
            client.configure_tls()?;
        }
        Ok(client)
    }

    /// For `https`: also trusts certificates issued by `der` (a DER-encoded CA certificate),
    /// e.g. an operator's own authority for its model server.
    pub fn with_trust_root(mut self, der: Vec<u8>) -> Result<Self, ClientError> {
        self.extra_roots.push(der);
        if self.tls.is_some() {
            self.configure_tls()?;
        }
        Ok(self)
    }

    fn configure_tls(&mut self) -> Result<(), ClientError> {
        let name = crate::tls::server_name(&self.host)
            .ok_or_else(|| ClientError::BadAddress(self.authority.clone()))?;
        self.tls = Some((crate::tls::client_config(&self.extra_roots)?, name));
        Ok(())
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Sends `token` as a bearer token with every request.
    pub fn with_bearer(mut self, token: impl Into<String>) -> Self {
        self.bearer = Some(token.into());
        self
    }

    /// Waits this long for an answer (connection included) instead of 15 s.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// GETs `path` (with any query) and parses the JSON answer. A non-2xx status is an error
    /// carrying the message the host gave.
    pub async fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        self.exchange(hyper::Method::GET, path, None).await
    }

    /// GETs `path` and returns the answer as text (for `/metrics`, `/healthz`). A non-2xx
    /// status is an error carrying the message the host gave.
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let url = format!("{}://{}{path}", self.scheme(), self.authority);
        let (status, body) = self.timed(&url, hyper::Method::GET, path, None).await?;
        check_status(&url, status, &body)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// GETs `path` and returns the answer's bytes, refusing more than `max_bytes` (for blobs:
    /// components, inputs, transcripts). A non-2xx status is an error carrying the message the
    /// host gave.
    pub async fn get_bytes(&self, path: &str, max_bytes: usize) -> Result<Bytes, ClientError> {
        let url = format!("{}://{}{path}", self.scheme(), self.authority);
        let exchange = self.send(&url, hyper::Method::GET, path, None, max_bytes);
        let (status, body) = match tokio::time::timeout(BLOB_TIMEOUT, exchange).await {
            Ok(answer) => answer?,
            Err(_) => {
                return Err(ClientError::Timeout {
                    url,
                    after: BLOB_TIMEOUT,
                });
            }
        };
        check_status(&url, status, &body)?;
        Ok(body)
    }

    /// POSTs `body` as JSON to `path` and parses the JSON answer. A non-2xx status is an error
    /// carrying the message the host gave.
    pub async fn post_json(&self, path: &str, body: Vec<u8>) -> Result<Value, ClientError> {
        self.exchange(hyper::Method::POST, path, Some(body)).await
    }

    async fn exchange(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}://{}{path}", self.scheme(), self.authority);
        let (status, body) = self.timed(&url, method, path, body).await?;
        check_status(&url, status, &body)?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Malformed {
            url: url.to_owned(),
            reason: e.to_string(),
        })
    }

    /// One exchange under the client's timeout: the status and the body.
    async fn timed(
        &self,
        url: &str,
        method: hyper::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(hyper::StatusCode, Bytes), ClientError> {
        let exchange = self.send(url, method, path, body, MAX_RESPONSE_BYTES);
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(ClientError::Timeout {
                url: url.to_owned(),
                after: self.timeout,
            }),
        }
    }

    async fn send(
        &self,
        url: &str,
        method: hyper::Method,
        path: &str,
        body: Option<Vec<u8>>,
        max_bytes: usize,
    ) -> Result<(hyper::StatusCode, Bytes), ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            url: url.to_owned(),
            reason,
        };
        let tcp = tokio::net::TcpStream::connect(&self.address)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, driver) = match &self.tls {
            None => http1(tcp).await,
            Some((config, name)) => {
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| unreachable(format!("TLS: {e}")))?;
                http1(stream).await
            }
        }
        .map_err(|e| unreachable(e.to_string()))?;
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::ACCEPT, "application/json");
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = &self.bearer {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| unreachable(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        driver.abort();
        Ok((status, body))
    }
}

/// An HTTP/1.1 client connection over `stream`, for one exchange: the sender, and the task
/// driving the connection (abort it when done). The connection's errors are the exchange's,
/// which `send_request` reports.
pub(crate) async fn http1<S>(
    stream: S,
) -> hyper::Result<(
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<()>,
)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    Ok((sender, tokio::spawn(async move { drop(connection.await) })))
}

/// A non-2xx status as the error naming what the host said.
fn check_status(url: &str, status: hyper::StatusCode, body: &[u8]) -> Result<(), ClientError> {
    if status.is_success() {
        return Ok(());
    }
    let message = match serde_json::from_slice::<Value>(body) {
        Ok(value) => value["error"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string()),
        Err(_) => String::from_utf8_lossy(body).chars().take(200).collect(),
    };
    Err(ClientError::Status {
        url: url.to_owned(),
        status: status.as_u16(),
        message,
    })
}
