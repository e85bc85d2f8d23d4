//! An OpenAI-compatible model server as a backend: `POST /v1/chat/completions` and
//! `POST /v1/embeddings`, as llama.cpp's server, Ollama and vLLM speak them.
//!
//! The key (if any) is the operator's (the `agora` command reads it from a file only its owner
//! can read), sent only as the `Authorization` header to that server, and never logged: `Debug`
//! shows only whether there is one. The HTTP exchange is the API client's ([`ApiClient`]), over HTTPS for a hosted API.

use std::time::Duration;

use serde_json::{Value, json};

use super::{BackendError, BackendFuture, Completed, Completion, Embedded, ModelBackend};
use crate::client::ApiClient;
use agora_registry::FinishReason;

/// The longest the HTTP client itself waits: a backstop only, since each request is bounded by
/// the shorter [`ModelConfig::timeout`](super::ModelConfig::timeout) and per-call model time.
const BACKSTOP: Duration = Duration::from_secs(600);

/// Why a [`RemoteBackend`] could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The address is not `http://host:port` or `https://host[:port]`.
    #[error("model server address {0:?} is not http://host:port or https://host[:port]")]
    BadAddress(String),
    /// A trust root for the server's certificate is not usable.
    #[error("model server trust root: {0}")]
    Tls(String),
}

/// An OpenAI-compatible server at a fixed address, with an optional bearer key (which the
/// client's `Debug` does not show).
#[derive(Debug)]
pub struct RemoteBackend {
    client: ApiClient,
}

impl RemoteBackend {
    /// The server at `base` (`http://127.0.0.1:8080`, `https://api.example.com`), without a
    /// key. Over HTTPS its certificate must chain to one of Mozilla's roots (compiled in) or to
    /// one given with [`RemoteBackend::with_trust_root`].
    pub fn new(base: &str) -> Result<Self, RemoteError> {
        let client = ApiClient::new(base).map_err(|_| RemoteError::BadAddress(base.to_owned()))?;
        Ok(RemoteBackend {
            client: client.with_timeout(BACKSTOP),
        })
    }

    /// Also trusts certificates issued by `der` (a DER-encoded CA certificate).
    pub fn with_trust_root(mut self, der: Vec<u8>) -> Result<Self, RemoteError> {
        self.client =
            (self.client.with_trust_root(der)).map_err(|e| RemoteError::Tls(e.to_string()))?;
        Ok(self)
    }

    /// Sends `key` as the bearer token.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.client = self.client.with_bearer(key);
        self
    }

    /// POSTs `body`; any failure (unreachable, an error status such as 429, an answer that is
    /// not JSON or too large) is `unavailable`.
    async fn post(&self, path: &str, body: Value) -> Result<Value, BackendError> {
        (self
            .client
            .post_json(path, body.to_string().into_bytes())
            .await)
            .map_err(|e| BackendError::Unavailable(format!("model server: {e}")))
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
