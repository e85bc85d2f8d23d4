//! Sending one agent's outbound request: the origin and address checks, the connection (TLS for
//! `https`), the credential, and a response read within its bounds.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use agora_registry::egress::{
    Header, HttpAnswer, HttpErrorKind, HttpScheme, Origin, OriginPattern,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::EgressConfig;
use crate::sandbox::{HttpExchange, HttpRequest};

/// A host's egress configuration with what it builds once: its TLS client.
pub(crate) struct EgressPolicy {
    config: EgressConfig,
    tls: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
    connections: Arc<tokio::sync::Semaphore>,
}

impl EgressPolicy {
    pub(crate) fn new(config: EgressConfig) -> Self {
        EgressPolicy {
            connections: Arc::new(tokio::sync::Semaphore::new(config.max_connections)),
            config,
            tls: OnceLock::new(),
        }
    }

    pub(crate) fn config(&self) -> &EgressConfig {
        &self.config
    }

    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.tls
            .get_or_init(|| {
                crate::tls::client_config(&self.config.extra_roots).map_err(|e| e.to_string())
            })
            .clone()
    }
}

/// One call's outbound HTTP: the origins its manifest declares, under the host's policy.
pub(crate) struct EgressSession {
    policy: Arc<EgressPolicy>,
    /// As the manifest writes them: parsed only when the agent sends a request, so a call that
    /// sends none pays nothing.
    declared: Vec<String>,
    max_response_bytes: u64,
    max_time: Duration,
}

impl EgressSession {
    /// A session for an agent whose manifest declares `declared` (patterns that do not parse
    /// were refused when the manifest was admitted; any left are ignored).
    pub(crate) fn new(
        policy: Arc<EgressPolicy>,
        declared: Vec<String>,
        limits: &crate::Limits,
    ) -> Self {
        EgressSession {
            policy,
            declared,
            max_response_bytes: limits.max_http_response_bytes,
            max_time: limits.max_http_time,
        }
    }

    /// Sends `request` if the agent may send it where it goes, and reads the response.
    pub(crate) async fn send(&self, request: HttpRequest) -> HttpExchange {
        let origin = match Origin::parse(&request.scheme, &request.authority) {
            Ok(origin) => origin,
            Err(e) => return HttpExchange::refused(HttpErrorKind::Denied, e.to_string()),
        };
        let mut declared = (self.declared.iter()).filter_map(|d| d.parse::<OriginPattern>().ok());
        if !declared.any(|d| d.matches(&origin)) {
            return HttpExchange::refused(
                HttpErrorKind::Denied,
                format!("the agent's manifest does not declare {origin}"),
            );
        }
        let config = self.policy.config();
        if !config.grants.iter().any(|g| g.matches(&origin)) {
            return HttpExchange::refused(
                HttpErrorKind::Denied,
                format!("this host does not grant {origin}"),
            );
        }
        let connections = self.policy.connections.clone();
        let Ok(Ok(_connection)) =
            tokio::time::timeout(super::CONNECTION_WAIT, connections.acquire_owned()).await
        else {
            return HttpExchange::refused(
                HttpErrorKind::TooManyRequests,
                format!(
                    "this host's {} outbound connections are all in use",
                    config.max_connections
                ),
            );
        };
        let mut sent = 0u64;
        let mut received = 0u64;
        let exchanged = tokio::time::timeout(
            self.max_time,
            self.exchange(&origin, request, &mut sent, &mut received),
        )
        .await;
        let answer = match exchanged {
            Ok(Ok(answer)) => answer,
            Ok(Err((kind, message))) => HttpAnswer::Error { kind, message },
            Err(_) => HttpAnswer::Error {
                kind: HttpErrorKind::Timeout,
                message: format!("{origin} took longer than {:?}", self.max_time),
            },
        };
        HttpExchange {
            bytes_sent: sent,
            bytes_received: received,
            answer,
        }
    }

    async fn exchange(
        &self,
        origin: &Origin,
        request: HttpRequest,
        sent: &mut u64,
        received: &mut u64,
    ) -> Result<HttpAnswer, (HttpErrorKind, String)> {
        let address = self.resolve(origin).await?;
        let tcp = TcpStream::connect(address).await.map_err(|e| {
            (
                HttpErrorKind::ConnectionRefused,
                format!("{origin} at {address}: {e}"),
            )
        })?;
        let _ = tcp.set_nodelay(true);
        match origin.scheme {
            HttpScheme::Http => self.over(tcp, origin, request, sent, received).await,
            HttpScheme::Https => {
                let tls = self
                    .policy
                    .tls()
                    .map_err(|e| (HttpErrorKind::Protocol, e))?;
                let name = crate::tls::server_name(&origin.host).ok_or_else(|| {
                    (
                        HttpErrorKind::Denied,
                        format!("{origin} is not a name a certificate can carry"),
                    )
                })?;
                let stream = tokio_rustls::TlsConnector::from(tls)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| {
                        let certificate = e
                            .get_ref()
                            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                            .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)));
                        let kind = if certificate {
                            HttpErrorKind::TlsCertificate
                        } else {
                            HttpErrorKind::Protocol
                        };
                        (kind, format!("TLS with {origin}: {e}"))
                    })?;
                self.over(stream, origin, request, sent, received).await
            }
        }
    }

    /// The address to connect to: one the policy lets requests reach.
    async fn resolve(&self, origin: &Origin) -> Result<SocketAddr, (HttpErrorKind, String)> {
        let addresses: Vec<IpAddr> = match origin.ip() {
            Some(ip) => vec![ip],
            None => tokio::net::lookup_host((origin.host.as_str(), origin.port))
                .await
                .map_err(|e| (HttpErrorKind::DnsError, format!("{}: {e}", origin.host)))?
                .map(|a| a.ip())
                .collect(),
        };
        let config = self.policy.config();
        match addresses.iter().find(|ip| config.address_allowed(**ip)) {
            Some(ip) => Ok(SocketAddr::new(*ip, origin.port)),
            None if addresses.is_empty() => Err((
                HttpErrorKind::DnsError,
                format!("{} resolves to no address", origin.host),
            )),
            None => Err((
                HttpErrorKind::DestinationProhibited,
                format!(
                    "{} resolves only to addresses this host does not reach ({})",
                    origin.host,
                    (addresses.iter().map(IpAddr::to_string))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// One HTTP/1.1 exchange over `stream`.
    async fn over<S>(
        &self,
        stream: S,
        origin: &Origin,
        request: HttpRequest,
        sent: &mut u64,
        received: &mut u64,
    ) -> Result<HttpAnswer, (HttpErrorKind, String)>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let protocol = |e: hyper::Error| (HttpErrorKind::Protocol, format!("{origin}: {e}"));
        let (mut sender, driver) = crate::client::http1(stream).await.map_err(protocol)?;
        // The connection is this request's alone; it ends when the exchange does.
        let _stop = AbortOnDrop(driver);

        let outgoing = self.build(origin, request, sent)?;
        let response = sender.send_request(outgoing).await.map_err(protocol)?;
        let max = self.max_response_bytes;
        let too_large = |read: u64| {
            (
                HttpErrorKind::ResponseTooLarge,
                format!(
                    "{origin} sent more than the {max} bytes a response may have (read {read})"
                ),
            )
        };
        let (parts, mut body) = response.into_parts();
        // `HTTP/1.1 200 OK\r\n`, each header line, the blank line.
        *received = 17 + parts.status.canonical_reason().map_or(0, str::len) as u64;
        let mut headers = Vec::new();
        for (name, value) in &parts.headers {
            *received += (name.as_str().len() + 2 + value.len() + 2) as u64;
            if let Ok(value) = value.to_str() {
                headers.push(Header {
                    name: name.as_str().to_owned(),
                    value: value.to_owned(),
                });
            }
        }
        if *received > max {
            return Err(too_large(*received));
        }
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(protocol)?;
            if let Ok(data) = frame.into_data() {
                *received += data.len() as u64;
                if *received > max {
                    return Err(too_large(*received));
                }
                bytes.extend_from_slice(&data);
            }
        }
        Ok(HttpAnswer::Response {
            status: parts.status.as_u16(),
            headers,
            body: bytes,
        })
    }

    /// The request as it goes out: the guest's headers without credentials, the operator's
    /// credential for the origin, an exact length. Counts its bytes into `sent`.
    fn build(
        &self,
        origin: &Origin,
        request: HttpRequest,
        sent: &mut u64,
    ) -> Result<http::Request<Full<Bytes>>, (HttpErrorKind, String)> {
        let invalid = |what: String| (HttpErrorKind::Protocol, what);
        let mut builder = http::Request::builder()
            .method(request.method.as_str())
            .uri(request.path_and_query.as_str());
        // `GET /path HTTP/1.1\r\n` and the blank line after the headers.
        *sent = (request.method.len() + request.path_and_query.len() + 14) as u64;
        let config = self.policy.config();
        let credentials: Vec<_> = (config.credentials.iter())
            .filter(|c| c.origin.matches(origin))
            .collect();
        let mut has_host = false;
        for (name, value) in &request.headers {
            let lower = name.to_ascii_lowercase();
            // The sandbox refused these already; a credential is the host's whatever the caller.
            let credential = crate::sandbox::is_credential_header(&lower);
            let replaced = credentials.iter().any(|c| c.name.as_str() == lower);
            if credential || replaced || lower == "content-length" || lower == "transfer-encoding" {
                continue;
            }
            has_host |= lower == "host";
            *sent += (name.len() + 2 + value.len() + 2) as u64;
            builder = builder.header(name.as_str(), value.as_slice());
        }
        if !has_host {
            *sent += (6 + request.authority.len() + 2) as u64;
            builder = builder.header("host", request.authority.as_str());
        }
        for credential in credentials {
            *sent += (credential.name.as_str().len() + 2 + credential.value.len() + 2) as u64;
            builder = builder.header(credential.name.clone(), credential.value.clone());
        }
        let what = format!("{} {}", request.method, request.url());
        let length = request.body.len().to_string();
        *sent += (18 + length.len()) as u64 + request.body.len() as u64;
        builder
            .header("content-length", length)
            .body(Full::new(Bytes::from(request.body)))
            .map_err(|e| invalid(format!("{what}: {e}")))
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
