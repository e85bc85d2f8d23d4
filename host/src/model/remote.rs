//! An OpenAI-compatible model server as a backend: `POST /v1/chat/completions` and
//! `POST /v1/embeddings`, as llama.cpp's server, Ollama and vLLM speak them.
//!
//! The key (if any) is read once from a file the operator names, sent only as the
//! `Authorization` header to that server, and never logged: this type's `Debug` shows only
//! whether there is one.

use std::fmt;
use std::path::Path;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::{BackendError, BackendFuture, Completed, Completion, Embedded, ModelBackend};
use agora_registry::FinishReason;

/// Largest answer read from the server, in bytes; a longer one is `unavailable`.
pub const MAX_RESPONSE_BYTES: usize = 8 << 20;

/// Why a [`RemoteBackend`] could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The address is not `http://host:port`.
    #[error("model server address {0:?} is not http://host:port")]
    BadAddress(String),
    /// The key file could not be read.
    #[error("reading the model server's key from {path}")]
    Key {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// An OpenAI-compatible server at a fixed address, with an optional bearer key.
pub struct RemoteBackend {
    authority: String,
    key: Option<String>,
}

impl fmt::Debug for RemoteBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteBackend")
            .field("authority", &self.authority)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl RemoteBackend {
    /// The server at `base` (`http://127.0.0.1:8080`), without a key.
    pub fn new(base: &str) -> Result<Self, RemoteError> {
        let bad = || RemoteError::BadAddress(base.to_owned());
        let uri: hyper::Uri = base.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("http") || !(uri.path().is_empty() || uri.path() == "/") {
            return Err(bad());
        }
        let authority = uri
            .authority()
            .filter(|a| a.port_u16().is_some())
            .ok_or_else(bad)?;
        Ok(RemoteBackend {
            authority: authority.to_string(),
            key: None,
        })
    }

    /// Sends `key` as the bearer token.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Reads the bearer token from the first line of `path`.
    pub fn with_key_file(self, path: &Path) -> Result<Self, RemoteError> {
        let text = std::fs::read_to_string(path).map_err(|source| RemoteError::Key {
            path: path.to_owned(),
            source,
        })?;
        Ok(self.with_key(text.lines().next().unwrap_or("").trim().to_owned()))
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, BackendError> {
        let unavailable = |what: String| BackendError::Unavailable(what);
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| unavailable(format!("cannot reach the model server: {e}")))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unavailable(format!("model server handshake: {e}")))?;
        let driver = tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(hyper::Method::POST)
            .uri(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(key) = &self.key {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| unavailable(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unavailable(format!("model server: {e}")))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| unavailable(format!("reading the model server's answer: {e}")))?
            .to_bytes();
        driver.abort();
        if !status.is_success() {
            return Err(unavailable(format!(
                "the model server answered HTTP {status}"
            )));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| unavailable(format!("the model server's answer is not JSON: {e}")))
    }
}

fn tokens(usage: &Value, field: &str) -> Result<u32, BackendError> {
    usage
        .get(field)
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            BackendError::Unavailable(format!("the model server's answer has no usage.{field}"))
        })
}

impl ModelBackend for RemoteBackend {
    fn complete<'a>(
        &'a self,
        model: &'a str,
        request: Completion<'a>,
    ) -> BackendFuture<'a, Completed> {
        Box::pin(async move {
            let messages: Vec<Value> = request
                .messages
                .iter()
                .map(|m| json!({"role": m.role, "content": m.content}))
                .collect();
            let answer = self
                .post(
                    "/v1/chat/completions",
                    json!({
                        "model": model,
                        "messages": messages,
                        "max_tokens": request.max_tokens,
                        "temperature": f64::from(request.temperature_milli) / 1000.0,
                        "seed": request.seed,
                        "stream": false,
                    }),
                )
                .await?;
            let choice = answer.pointer("/choices/0").ok_or_else(|| {
                BackendError::Unavailable("the model server's answer has no choices".into())
            })?;
            let text = choice
                .pointer("/message/content")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let finish = match choice.get("finish_reason").and_then(Value::as_str) {
                Some("length") => FinishReason::Length,
                _ => FinishReason::Stop,
            };
            let usage = answer.get("usage").cloned().unwrap_or(Value::Null);
            Ok(Completed {
                text,
                finish,
                prompt_tokens: tokens(&usage, "prompt_tokens")?,
                generated_tokens: tokens(&usage, "completion_tokens")?,
            })
        })
    }

    fn embed<'a>(&'a self, model: &'a str, texts: &'a [String]) -> BackendFuture<'a, Embedded> {
        Box::pin(async move {
            let answer = self
                .post("/v1/embeddings", json!({"model": model, "input": texts}))
                .await?;
            let data = answer
                .get("data")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    BackendError::Unavailable("the model server's answer has no data".into())
                })?;
            let mut vectors = Vec::with_capacity(data.len());
            for item in data {
                let vector = item
                    .get("embedding")
                    .and_then(Value::as_array)
                    .ok_or_else(|| BackendError::Unavailable("an embedding is not a list".into()))?
                    .iter()
                    .map(|x| x.as_f64().map(|x| x as f32))
                    .collect::<Option<Vec<f32>>>()
                    .ok_or_else(|| {
                        BackendError::Unavailable("an embedding holds a non-number".into())
                    })?;
                vectors.push(vector);
            }
            if vectors.len() != texts.len() {
                return Err(BackendError::Unavailable(format!(
                    "asked for {} embeddings, got {}",
                    texts.len(),
                    vectors.len()
                )));
            }
            let usage = answer.get("usage").cloned().unwrap_or(Value::Null);
            Ok(Embedded {
                vectors,
                prompt_tokens: tokens(&usage, "prompt_tokens")?,
            })
        })
    }
}
