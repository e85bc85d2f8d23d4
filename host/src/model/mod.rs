//! Language models a host holds for the agents it runs (`agora:agent/model`).
//!
//! The operator offers models ([`ModelConfig`]), each answered by a [`ModelBackend`] and priced
//! per million tokens. An agent may call a model only if its manifest declares it, and one call
//! spends at most the tokens declared for it ([`ModelSession`]); past that the agent gets
//! `budget-exhausted` and carries on. A backend that fails, is busy (HTTP 429) or does not answer
//! within [`ModelConfig::timeout`] gives `unavailable`, which is not charged. Keys stay with the
//! backend: the guest names only a model, and neither its answer nor the call's transcript nor
//! its receipt carries a key.
//!
//! Backends: [`EmbeddedBackend`], a GGUF model run in this process on CPU (no server, no
//! network; greedy answers another host can compute again), and [`RemoteBackend`], an
//! OpenAI-compatible HTTP server (llama.cpp's server, Ollama, vLLM).

mod embedded;
mod remote;

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_registry::{
    ChatMessage, FinishReason, HostCall, ModelAnswer, ModelDeclaration, ModelErrorKind, ModelUsage,
    Transcript,
};

pub use embedded::EmbeddedBackend;
pub use remote::{RemoteBackend, RemoteError};

use crate::sandbox::ModelRequest;

/// A backend's answer, on its way.
pub type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BackendError>> + Send + 'a>>;

/// Where a host's model requests go.
pub trait ModelBackend: Send + Sync {
    /// Continues a chat with `model` (the backend's own name for it).
    fn complete<'a>(
        &'a self,
        model: &'a str,
        request: Completion<'a>,
    ) -> BackendFuture<'a, Completed>;
    /// Embeds `texts` with `model`.
    fn embed<'a>(&'a self, model: &'a str, texts: &'a [String]) -> BackendFuture<'a, Embedded>;
}

/// A completion request as a backend gets it.
#[derive(Clone, Copy, Debug)]
pub struct Completion<'a> {
    /// The chat.
    pub messages: &'a [ChatMessage],
    /// Most tokens to generate: the guest's ask, cut to what is left of its budget.
    pub max_tokens: u32,
    /// Temperature in thousandths; 0 is greedy.
    pub temperature_milli: u32,
    /// Sampling seed.
    pub seed: u64,
}

/// What a backend generated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completed {
    /// The text.
    pub text: String,
    /// How it ended.
    pub finish: FinishReason,
    /// Prompt tokens, as the backend counted them.
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub generated_tokens: u32,
}

/// What a backend embedded.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedded {
    /// One vector per text.
    pub vectors: Vec<Vec<f32>>,
    /// Prompt tokens over all texts.
    pub prompt_tokens: u32,
}

/// Why a backend gave no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// It failed, was busy or was not reachable; the agent may try again later.
    #[error("{0}")]
    Unavailable(String),
    /// The prompt does not fit the model.
    #[error("{0}")]
    TooLong(String),
}

/// A model a host offers: its name as agents call it, who answers it and at what price.
#[derive(Clone)]
pub struct OfferedModel {
    name: String,
    backend_model: String,
    backend: Arc<dyn ModelBackend>,
    price_per_mtoken: u64,
}

impl OfferedModel {
    /// Offers `name`, answered by `backend` under the same name, free of charge.
    pub fn new(name: impl Into<String>, backend: Arc<dyn ModelBackend>) -> Self {
        let name = name.into();
        OfferedModel {
            backend_model: name.clone(),
            name,
            backend,
            price_per_mtoken: 0,
        }
    }

    /// The backend's own name for the model (e.g. `llama3.2:1b` on Ollama). Default: `name`.
    pub fn backend_model(mut self, backend_model: impl Into<String>) -> Self {
        self.backend_model = backend_model.into();
        self
    }

    /// Price per million tokens (prompt and generated alike), in the marketplace's smallest
    /// unit. Default 0.
    pub fn price_per_mtoken(mut self, price: u64) -> Self {
        self.price_per_mtoken = price;
        self
    }

    /// The name agents call it by.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for OfferedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OfferedModel")
            .field("name", &self.name)
            .field("backend_model", &self.backend_model)
            .field("price_per_mtoken", &self.price_per_mtoken)
            .finish_non_exhaustive()
    }
}

/// The models a host offers. Default: none, so every model request is `not-offered`.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    models: Vec<OfferedModel>,
    /// Longest a backend may take over one request before the agent gets `unavailable`.
    /// Default 60 s. Model time does not count against the agent's wall-clock limit.
    pub timeout: Duration,
    /// Longest one call may spend waiting for models, all its requests together; past it every
    /// request is `unavailable` at once. Default 5 min. This bounds how long a call that keeps
    /// asking a failing or slow model (which costs it no tokens) can hold its instance.
    pub max_time_per_call: Duration,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            models: Vec::new(),
            timeout: Duration::from_secs(60),
            max_time_per_call: Duration::from_secs(300),
        }
    }
}

impl ModelConfig {
    /// Adds a model to those offered (a later offer of the same name replaces an earlier one).
    pub fn offer(mut self, model: OfferedModel) -> Self {
        self.models.retain(|m| m.name != model.name);
        self.models.push(model);
        self
    }

    /// Sets [`ModelConfig::max_time_per_call`].
    pub fn max_time_per_call(mut self, max: Duration) -> Self {
        self.max_time_per_call = max;
        self
    }

    /// Sets [`ModelConfig::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The models offered.
    pub fn offered(&self) -> impl Iterator<Item = &OfferedModel> {
        self.models.iter()
    }

    fn find(&self, name: &str) -> Option<&OfferedModel> {
        self.models.iter().find(|m| m.name == name)
    }

    /// What a call that made the host calls in `transcript` spent on models, and what it costs
    /// at this host's prices: one entry per model, in the order first used. Errors cost nothing.
    pub fn usage(&self, transcript: &Transcript) -> Vec<ModelUsage> {
        let mut usage: Vec<ModelUsage> = Vec::new();
        for call in &transcript.calls {
            let HostCall::Model { model, answer, .. } = call else {
                continue;
            };
            let (prompt, generated) = answer.tokens();
            if prompt == 0 && generated == 0 {
                continue;
            }
            let entry = match usage.iter_mut().position(|u| u.model == *model) {
                Some(index) => &mut usage[index],
                None => {
                    usage.push(ModelUsage {
                        model: model.clone(),
                        prompt_tokens: 0,
                        generated_tokens: 0,
                        charge: 0,
                    });
                    let last = usage.len() - 1;
                    &mut usage[last]
                }
            };
            entry.prompt_tokens += u64::from(prompt);
            entry.generated_tokens += u64::from(generated);
        }
        for entry in &mut usage {
            let price = self.find(&entry.model).map_or(0, |m| m.price_per_mtoken);
            let tokens = entry.prompt_tokens.saturating_add(entry.generated_tokens);
            entry.charge = agora_registry::rules::charge_for(tokens, price);
        }
        usage
    }
}

/// One call's use of the host's models: which it may call (declared by its manifest and offered
/// here) and how many tokens it has spent on each.
pub struct ModelSession {
    config: Arc<ModelConfig>,
    declared: Vec<ModelDeclaration>,
    spent: Mutex<HashMap<String, u64>>,
    waited: Mutex<Duration>,
}

impl ModelSession {
    /// A session for a call of an agent whose manifest declares `declared`.
    pub fn new(config: Arc<ModelConfig>, declared: Vec<ModelDeclaration>) -> Self {
        ModelSession {
            config,
            declared,
            spent: Mutex::new(HashMap::new()),
            waited: Mutex::new(Duration::ZERO),
        }
    }

    /// Answers one request of the guest's.
    pub async fn answer(&self, request: ModelRequest) -> ModelAnswer {
        let refuse = |kind, message: String| ModelAnswer::Error { kind, message };
        if let ModelRequest::Models = request {
            return ModelAnswer::Offered {
                models: self
                    .declared
                    .iter()
                    .filter(|d| self.config.find(&d.name).is_some())
                    .cloned()
                    .collect(),
            };
        }
        let name = request.model().to_owned();
        let Some(declared) = self.declared.iter().find(|d| d.name == name) else {
            return refuse(
                ModelErrorKind::NotOffered,
                format!("model {name:?} is not declared in this agent's manifest"),
            );
        };
        let Some(offered) = self.config.find(&name) else {
            return refuse(
                ModelErrorKind::NotOffered,
                format!("this host does not offer model {name:?}"),
            );
        };
        let budget = u64::from(declared.max_tokens_per_call);
        let spent = self.spent(&name);
        if spent >= budget {
            return refuse(
                ModelErrorKind::BudgetExhausted,
                format!("this call has spent its {budget} tokens on {name:?}"),
            );
        }
        let left = u32::try_from(budget - spent).unwrap_or(u32::MAX);
        let backend = &offered.backend;
        let model = offered.backend_model.as_str();
        let asked = async {
            match &request {
                ModelRequest::Complete {
                    messages, params, ..
                } => {
                    let max_tokens = params.max_tokens.min(left);
                    if max_tokens == 0 {
                        return Err(BackendError::TooLong(
                            "max-tokens is 0: nothing to generate".into(),
                        ));
                    }
                    let request = Completion {
                        messages,
                        max_tokens,
                        temperature_milli: params.temperature_milli,
                        seed: params.seed,
                    };
                    backend
                        .complete(model, request)
                        .await
                        .map(|done| ModelAnswer::Completion {
                            text: done.text,
                            finish: done.finish,
                            prompt_tokens: done.prompt_tokens,
                            generated_tokens: done.generated_tokens,
                        })
                }
                ModelRequest::Embed { texts, .. } => {
                    backend
                        .embed(model, texts)
                        .await
                        .map(|done| ModelAnswer::Embedding {
                            vectors: done
                                .vectors
                                .into_iter()
                                .map(|v| v.into_iter().map(f32::to_bits).collect())
                                .collect(),
                            prompt_tokens: done.prompt_tokens,
                        })
                }
                // Answered above, without a backend.
                ModelRequest::Models => Err(BackendError::Unavailable(
                    "models() needs no backend".into(),
                )),
            }
        };
        let waited = *self.waited.lock().unwrap_or_else(|p| p.into_inner());
        let time_left = self.config.max_time_per_call.saturating_sub(waited);
        if time_left.is_zero() {
            return refuse(
                ModelErrorKind::Unavailable,
                format!(
                    "this call has spent the {:?} it may wait for models",
                    self.config.max_time_per_call
                ),
            );
        }
        let started = std::time::Instant::now();
        let timeout = self.config.timeout.min(time_left);
        let answered = tokio::time::timeout(timeout, asked).await;
        *self.waited.lock().unwrap_or_else(|p| p.into_inner()) += started.elapsed();
        let answer = match answered {
            Ok(Ok(answer)) => answer,
            Ok(Err(BackendError::TooLong(message))) => refuse(ModelErrorKind::TooLong, message),
            Ok(Err(BackendError::Unavailable(message))) => {
                tracing::warn!(model = %name, %message, "model backend unavailable");
                refuse(ModelErrorKind::Unavailable, message)
            }
            Err(_) => refuse(
                ModelErrorKind::Unavailable,
                format!("model {name:?} did not answer within {timeout:?}"),
            ),
        };
        let (prompt, generated) = answer.tokens();
        *self
            .spent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name)
            .or_default() += u64::from(prompt) + u64::from(generated);
        answer
    }

    fn spent(&self, model: &str) -> u64 {
        self.spent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(model)
            .copied()
            .unwrap_or(0)
    }
}
