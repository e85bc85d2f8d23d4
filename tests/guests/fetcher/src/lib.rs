//! A guest that makes outgoing HTTP requests through `wasi:http/outgoing-handler`, to test
//! granted egress through a host. One action, `fetch`, with the payload
//! `{"url", "method"?, "headers"?: [[name, value]], "body"?, "follow"?}`:
//!
//! - sends the request (headers the host forbids are reported in `"refused_headers"`, not sent);
//! - follows up to `follow` redirects itself, as a guest would: a new request to `Location`;
//! - answers `{"status", "headers", "body", "refused_headers", "redirects"}`, or, when a request
//!   fails, `{"error": "<wasi:http error-code>", "refused_headers", "redirects"}`. A failed
//!   request never traps: the agent carries on and reports it.

wit_bindgen::generate!({ path: "../../../wit", world: "agent" });

use agora::agent::types::{AgentError, AgentInfo, Request};
use serde_json::{Value, json};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

struct Fetcher;

/// What one request got back.
struct Fetched {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn split_url(url: &str) -> Result<(Scheme, String, String), AgentError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| AgentError::BadRequest(format!("{url:?} has no scheme")))?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_owned()),
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    Ok((scheme, authority.to_owned(), path.to_owned()))
}

fn send(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
    refused: &mut Vec<String>,
) -> Result<Result<Fetched, ErrorCode>, AgentError> {
    let (scheme, authority, path) = split_url(url)?;
    let fields = Fields::new();
    for (name, value) in headers {
        if let Err(e) = fields.append(name, value.as_bytes()) {
            refused.push(format!("{name}: {e:?}"));
        }
    }
    let request = OutgoingRequest::new(fields);
    let method = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        other => Method::Other(other.to_owned()),
    };
    let set = request.set_method(&method).is_ok()
        && request.set_scheme(Some(&scheme)).is_ok()
        && request.set_authority(Some(&authority)).is_ok()
        && request.set_path_with_query(Some(&path)).is_ok();
    if !set {
        return Err(AgentError::BadRequest(format!("{url:?} is not a request")));
    }
    let outgoing = request
        .body()
        .map_err(|()| AgentError::Internal("no request body".into()))?;
    let future = match outgoing_handler::handle(request, None) {
        Ok(future) => future,
        Err(code) => return Ok(Err(code)),
    };
    {
        let stream = outgoing
            .write()
            .map_err(|()| AgentError::Internal("no body stream".into()))?;
        for chunk in body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                break;
            }
        }
    }
    // A request the host refused has no one to take its body: the error is the response's.
    let _ = OutgoingBody::finish(outgoing, None);
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Ok(Err(code)),
        other => return Err(AgentError::Internal(format!("no response: {other:?}"))),
    };
    let status = response.status();
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
        .collect();
    let incoming = response
        .consume()
        .map_err(|()| AgentError::Internal("no response body".into()))?;
    let mut body = Vec::new();
    {
        let stream = incoming
            .stream()
            .map_err(|()| AgentError::Internal("no response body stream".into()))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Ok(Err(wasip2::http::types::http_error_code(&e)
                        .unwrap_or(ErrorCode::InternalError(Some(e.to_debug_string())))));
                }
            }
        }
    }
    Ok(Ok(Fetched {
        status,
        headers,
        body,
    }))
}

fn code_name(code: &ErrorCode) -> String {
    let debug = format!("{code:?}");
    let name = debug.split('(').next().unwrap_or_default();
    name.trim_start_matches("ErrorCode::").to_owned()
}

impl exports::agora::agent::handler::Guest for Fetcher {
    fn info() -> AgentInfo {
        AgentInfo {
            name: "fetcher".into(),
            version: "0.1.0".into(),
            description: "makes outgoing HTTP requests as asked".into(),
            actions: vec!["fetch".into()],
        }
    }

    fn handle(req: Request) -> Result<Vec<u8>, AgentError> {
        if req.action != "fetch" {
            return Err(AgentError::BadRequest(format!("no action {}", req.action)));
        }
        let payload: Value = serde_json::from_slice(&req.payload)
            .map_err(|e| AgentError::BadRequest(e.to_string()))?;
        let mut url = payload["url"]
            .as_str()
            .ok_or_else(|| AgentError::BadRequest("payload has no url".into()))?
            .to_owned();
        let method = payload["method"].as_str().unwrap_or("GET").to_owned();
        let headers: Vec<(String, String)> = (payload["headers"].as_array().into_iter())
            .flatten()
            .filter_map(|pair| Some((pair[0].as_str()?.into(), pair[1].as_str()?.into())))
            .collect();
        let body = payload["body"].as_str().unwrap_or("").as_bytes().to_vec();
        let follow = payload["follow"].as_u64().unwrap_or(0);
        let mut refused = Vec::new();
        let mut redirects = Vec::new();
        loop {
            let answer = match send(&method, &url, &headers, &body, &mut refused)? {
                Err(code) => json!({"error": code_name(&code), "detail": format!("{code:?}")}),
                Ok(fetched) => {
                    let location = (fetched.headers.iter())
                        .find(|(name, _)| name.eq_ignore_ascii_case("location"))
                        .map(|(_, value)| value.clone());
                    if let Some(location) = location
                        && (300..400).contains(&fetched.status)
                        && (redirects.len() as u64) < follow
                    {
                        redirects.push(location.clone());
                        url = location;
                        continue;
                    }
                    json!({
                        "status": fetched.status,
                        "headers": fetched.headers,
                        "body": String::from_utf8_lossy(&fetched.body),
                        "body_len": fetched.body.len(),
                    })
                }
            };
            let mut answer = answer;
            answer["refused_headers"] = json!(refused);
            answer["redirects"] = json!(redirects);
            return Ok(answer.to_string().into_bytes());
        }
    }
}

export!(Fetcher);
