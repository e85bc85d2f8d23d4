//! `wasi:http/outgoing-handler`: outbound HTTP, which the call's [`HostServices`] sends only
//! where the agent's manifest and the host's operator both allow, and refuses everywhere else.
//!
//! The sandbox reads the guest's request whole (within [`Limits::max_http_request_bytes`]),
//! hands it to the services, and gives the guest the answer as a response or a `wasi:http`
//! error code. Credential headers are the host's to add: a guest that sets `authorization`,
//! `cookie` or a `proxy-*` header is refused at `fields.set`, so none reaches the services.
//! The host never follows redirects; a guest that follows one makes a new request, checked like
//! any other.
//!
//! wasmtime runs each request as its own task, so requests finish in the network's order, not
//! the guest's: each is numbered when the guest makes it, recorded when it ends (or as
//! cancelled, if the call ends first), and the call's transcript lists them after its other host
//! calls in that order. A replay answers each by its number.

use std::sync::{Arc, Mutex};

use agora_registry::egress::{HttpAnswer, HttpErrorKind};
use agora_registry::{Hash, HostCall};
use bytes::Bytes;
use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::limits::Limits;
use super::services::{Divergence, HostServices, HttpRequest};

/// Whether a header (its name in lower case) carries a credential: `authorization`, `cookie`
/// or `proxy-*`. A guest may not set one; only the host adds them.
pub fn is_credential_header(name: &str) -> bool {
    name == "authorization" || name == "cookie" || name.starts_with("proxy-")
}

/// What a call's outbound requests produced, shared between the requests' tasks and the call.
#[derive(Default)]
pub(crate) struct HttpRecord {
    /// Requests handed to the services: number, method, URL and hash.
    issued: Vec<(u32, String, String, Hash)>,
    /// Their exchanges as they finish.
    exchanges: Vec<(u32, HostCall)>,
    /// Set when a replayed request is not the one the transcript records.
    diverged: Option<Divergence>,
    /// Set when the call has ended: what finishes later is not the call's.
    closed: bool,
}

impl HttpRecord {
    /// Ends the call's outbound HTTP: its exchanges in the order the guest made the requests,
    /// a request still under way recorded as cancelled, and any divergence.
    pub(crate) fn close(&mut self) -> (Vec<HostCall>, Option<Divergence>) {
        self.closed = true;
        let mut calls = std::mem::take(&mut self.exchanges);
        for (index, method, url, request_hash) in self.issued.drain(..) {
            if !calls.iter().any(|(i, _)| *i == index) {
                let cancelled = HostCall::Http {
                    index,
                    method,
                    url,
                    request_hash,
                    bytes_sent: 0,
                    bytes_received: 0,
                    answer: HttpAnswer::Cancelled,
                };
                calls.push((index, cancelled));
            }
        }
        calls.sort_by_key(|(index, _)| *index);
        (
            calls.into_iter().map(|(_, call)| call).collect(),
            self.diverged.take(),
        )
    }

    fn finish(&mut self, index: u32, call: HostCall) {
        if !self.closed {
            self.exchanges.push((index, call));
        }
    }
}

/// The `wasi:http` hooks of one call.
pub(crate) struct GuestHttp {
    services: Arc<dyn HostServices>,
    next_index: u32,
    max_requests: u32,
    max_request_bytes: u64,
    pub(crate) record: Arc<Mutex<HttpRecord>>,
}

impl GuestHttp {
    pub(crate) fn new(services: Arc<dyn HostServices>, limits: &Limits) -> Self {
        GuestHttp {
            services,
            next_index: 0,
            max_requests: limits.max_http_requests,
            max_request_bytes: limits.max_http_request_bytes,
            record: Arc::default(),
        }
    }
}

type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

fn error_code(kind: HttpErrorKind) -> Error {
    match kind {
        HttpErrorKind::Denied => Error::HttpRequestDenied,
        HttpErrorKind::DestinationProhibited => Error::DestinationIpProhibited,
        HttpErrorKind::DnsError => Error::DnsError {
            rcode: None,
            info_code: None,
        },
        HttpErrorKind::ConnectionRefused => Error::ConnectionRefused,
        HttpErrorKind::Timeout => Error::ConnectionTimeout,
        HttpErrorKind::RequestTooLarge => Error::HttpRequestBodySize(None),
        HttpErrorKind::ResponseTooLarge => Error::HttpResponseBodySize(None),
        HttpErrorKind::TooManyRequests => Error::ConnectionLimitReached,
        HttpErrorKind::TlsCertificate => Error::TlsCertificateError,
        HttpErrorKind::Protocol => Error::HttpProtocolError,
    }
}

/// The guest's request body, whole, or the error it gets when there is too much of it.
async fn read_body(mut body: WasiBody, max: u64) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if bytes.len() as u64 + data.len() as u64 > max {
                return Err(Error::HttpRequestBodySize(Some(max)));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

fn response(answer: HttpAnswer) -> SendResult {
    let (status, headers, body) = match answer {
        HttpAnswer::Response {
            status,
            headers,
            body,
        } => (status, headers, body),
        HttpAnswer::Error { kind, .. } => return Err(error_code(kind)),
        HttpAnswer::Cancelled => return Err(Error::HttpResponseIncomplete),
    };
    let mut builder = http::Response::builder().status(status);
    for header in headers {
        builder = builder.header(header.name, header.value);
    }
    let body = http_body_util::Full::new(Bytes::from(body))
        .map_err(|never| match never {})
        .boxed_unsync();
    let response = builder
        .body(body)
        .map_err(|e| Error::InternalError(Some(e.to_string())))?;
    let io: Box<dyn Future<Output = Result<(), Error>> + Send> = Box::new(async { Ok(()) });
    Ok((response, io))
}

impl WasiHttpHooks for GuestHttp {
    fn forbidden_header_filter(&mut self) -> wasmtime_wasi_http::ForbiddenHeaderFilter {
        Arc::new(|name| {
            is_credential_header(name.as_str())
                || wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(name)
        })
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let index = self.next_index;
        self.next_index = self.next_index.saturating_add(1);
        if index >= self.max_requests {
            let max = self.max_requests;
            tracing::debug!(index, max, "outbound request over the call's limit");
            return Box::new(async { Err(Error::ConnectionLimitReached) });
        }
        let (parts, body) = request.into_parts();
        let scheme = parts.uri.scheme_str().unwrap_or("https").to_owned();
        let authority = (parts.uri.authority())
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let path_and_query = (parts.uri.path_and_query())
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        let method = parts.method.as_str().to_owned();
        let headers = (parts.headers.iter())
            .filter(|(name, _)| !is_credential_header(name.as_str()))
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect();
        let record = self.record.clone();
        let services = self.services.clone();
        let max_body = self.max_request_bytes;
        Box::new(async move {
            // Decided by the guest alone, so a replay refuses it the same way: not recorded.
            let body = read_body(body, max_body).await?;
            let request = HttpRequest {
                index,
                method,
                scheme,
                authority,
                path_and_query,
                headers,
                body,
            };
            let (method, url, request_hash) =
                (request.method.clone(), request.url(), request.hash());
            let issued = (index, method.clone(), url.clone(), request_hash);
            super::lock(&record).issued.push(issued);
            match services.http(request).await {
                Ok(exchange) => {
                    let call = HostCall::Http {
                        index,
                        method,
                        url,
                        request_hash,
                        bytes_sent: exchange.bytes_sent,
                        bytes_received: exchange.bytes_received,
                        answer: exchange.answer.clone(),
                    };
                    super::lock(&record).finish(index, call);
                    response(exchange.answer)
                }
                Err(divergence) => {
                    super::lock(&record).diverged.get_or_insert(divergence);
                    Err(Error::InternalError(Some(
                        "the request is not the one the transcript records".into(),
                    )))
                }
            }
        })
    }
}
