//! What a guest's host calls reach outside the sandbox: agent memory, other agents, language
//! models and outbound HTTP.
//!
//! The sandbox asks one [`HostServices`] for every answer its input does not decide, and records
//! each answer in the call's [`Transcript`]. A host's node answers live (its registry, its other
//! agents); a re-execution answers from the transcript a receipt names, with [`Replay`], which
//! notices a guest whose calls are not the ones recorded. Publishing answers with
//! [`NoServices`]: `info()` must not depend on any host's state.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Instant;

use agora_registry::egress::{HttpAnswer, HttpErrorKind, http_request_hash};
use agora_registry::model::model_request_hash;
use agora_registry::{
    CallAnswer, ChatMessage, Hash, HostCall, ModelAnswer, ModelErrorKind, ModelParams, Transcript,
    request_hash,
};

use super::Request;

/// A host service's answer, on its way.
pub type ServiceFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A `call-agent` as the guest made it, with what the callee may have of the caller's budget.
pub struct AgentCall {
    /// The agent reference the guest named.
    pub agent: String,
    /// The action and payload.
    pub request: Request,
    /// Fuel left in the caller's budget: the most the callee may use.
    pub fuel: u64,
    /// The caller's deadline, which the callee inherits.
    pub deadline: Instant,
    /// The callee's call depth (the caller's plus one).
    pub depth: u32,
    /// The host's bound on call depth.
    pub max_depth: u32,
}

/// What a `call-agent` got: the callee's answer and what its call cost.
#[derive(Clone, Debug)]
pub struct AgentAnswer {
    /// The callee's receipt, if it ran.
    pub receipt: Option<Hash>,
    /// Fuel it used.
    pub fuel_used: u64,
    /// What it cost.
    pub charge: u64,
    /// What the guest gets back.
    pub answer: CallAnswer,
}

impl AgentAnswer {
    /// An answer from a call that never ran.
    pub fn refused(message: String) -> Self {
        AgentAnswer {
            receipt: None,
            fuel_used: 0,
            charge: 0,
            answer: CallAnswer::Refused(message),
        }
    }
}

/// A request to the `agora:agent/model` interface, as the guest made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelRequest {
    /// `models()`.
    Models,
    /// `complete(model, messages, params)`.
    Complete {
        /// The model named.
        model: String,
        /// The chat.
        messages: Vec<ChatMessage>,
        /// How to generate.
        params: ModelParams,
    },
    /// `embed(model, texts)`.
    Embed {
        /// The model named.
        model: String,
        /// The texts.
        texts: Vec<String>,
    },
}

impl ModelRequest {
    /// The operation's name in transcripts: `models`, `complete` or `embed`.
    pub fn op(&self) -> &'static str {
        match self {
            ModelRequest::Models => "models",
            ModelRequest::Complete { .. } => "complete",
            ModelRequest::Embed { .. } => "embed",
        }
    }

    /// The model named (empty for `models()`).
    pub fn model(&self) -> &str {
        match self {
            ModelRequest::Models => "",
            ModelRequest::Complete { model, .. } | ModelRequest::Embed { model, .. } => model,
        }
    }

    /// What the transcript records of the request: the hash of what was asked.
    pub fn hash(&self) -> Hash {
        match self {
            ModelRequest::Models => model_request_hash("models", "", &()),
            ModelRequest::Complete {
                model,
                messages,
                params,
            } => model_request_hash("complete", model, &(messages, params)),
            ModelRequest::Embed { model, texts } => model_request_hash("embed", model, texts),
        }
    }

    /// Bytes the guest handed over, for fuel.
    pub fn size(&self) -> usize {
        match self {
            ModelRequest::Models => 0,
            ModelRequest::Complete {
                model, messages, ..
            } => model.len() + messages.iter().map(|m| m.content.len() + 8).sum::<usize>(),
            ModelRequest::Embed { model, texts } => {
                model.len() + texts.iter().map(String::len).sum::<usize>()
            }
        }
    }
}

/// An outbound HTTP request as the guest made it, whole: the sandbox has read its body and
/// refused credential headers (`authorization`, `cookie`, `proxy-*`) when the guest set them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    /// Which of the call's outbound requests, from 0, in the order the guest made them.
    pub index: u32,
    /// The method.
    pub method: String,
    /// `http` or `https` (anything else was refused).
    pub scheme: String,
    /// `host[:port]`.
    pub authority: String,
    /// `/path?query`.
    pub path_and_query: String,
    /// The headers the guest set, in order (with `host`).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// `scheme://authority/path?query`.
    pub fn url(&self) -> String {
        format!(
            "{}://{}{}",
            self.scheme, self.authority, self.path_and_query
        )
    }

    /// What the transcript records of the request.
    pub fn hash(&self) -> Hash {
        http_request_hash(&self.method, &self.url(), &self.headers, &self.body)
    }
}

/// What an outbound request got, and the bytes the exchange moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpExchange {
    /// Bytes sent (0 when the host refused the request).
    pub bytes_sent: u64,
    /// Bytes received, as far as they were read.
    pub bytes_received: u64,
    /// The answer.
    pub answer: HttpAnswer,
}

impl HttpExchange {
    /// A request that never left the host.
    pub fn refused(kind: HttpErrorKind, message: impl Into<String>) -> Self {
        HttpExchange {
            bytes_sent: 0,
            bytes_received: 0,
            answer: HttpAnswer::Error {
                kind,
                message: message.into(),
            },
        }
    }
}

/// A replayed guest made a host call its transcript does not record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("host call {index} diverges from the transcript: {reason}")]
pub struct Divergence {
    /// Which call, from 0.
    pub index: usize,
    /// What the guest asked and what the transcript has there.
    pub reason: String,
}

/// Where a call's host calls are answered. `Err` only from a replay whose guest diverged; the
/// call then ends.
pub trait HostServices: Send + Sync {
    /// The value under `key` in the agent's memory.
    fn kv_get(&self, key: String) -> ServiceFuture<'_, Result<Option<Vec<u8>>, Divergence>>;
    /// Stores `value` under `key`, or says why not.
    fn kv_set(
        &self,
        key: String,
        value: Vec<u8>,
    ) -> ServiceFuture<'_, Result<Result<(), String>, Divergence>>;
    /// Runs another agent.
    fn call_agent(&self, call: AgentCall) -> ServiceFuture<'_, Result<AgentAnswer, Divergence>>;
    /// Asks a language model the host holds.
    fn model(&self, request: ModelRequest) -> ServiceFuture<'_, Result<ModelAnswer, Divergence>>;
    /// Sends an outbound HTTP request, if the agent may send it where it goes.
    fn http(&self, request: HttpRequest) -> ServiceFuture<'_, Result<HttpExchange, Divergence>>;
}

/// No host state at all, for `info()` while publishing: memory is empty and cannot be written,
/// and no other agent can be called.
pub struct NoServices;

impl HostServices for NoServices {
    fn kv_get(&self, _key: String) -> ServiceFuture<'_, Result<Option<Vec<u8>>, Divergence>> {
        Box::pin(async { Ok(None) })
    }

    fn kv_set(
        &self,
        _key: String,
        _value: Vec<u8>,
    ) -> ServiceFuture<'_, Result<Result<(), String>, Divergence>> {
        Box::pin(async {
            Ok(Err(
                "agent memory is not available while publishing".to_string()
            ))
        })
    }

    fn call_agent(&self, _call: AgentCall) -> ServiceFuture<'_, Result<AgentAnswer, Divergence>> {
        Box::pin(async {
            Ok(AgentAnswer::refused(
                "call-agent is not available while publishing".into(),
            ))
        })
    }

    fn model(&self, _request: ModelRequest) -> ServiceFuture<'_, Result<ModelAnswer, Divergence>> {
        Box::pin(async {
            Ok(ModelAnswer::Error {
                kind: ModelErrorKind::NotOffered,
                message: "models are not available while publishing".into(),
            })
        })
    }

    fn http(&self, _request: HttpRequest) -> ServiceFuture<'_, Result<HttpExchange, Divergence>> {
        Box::pin(async {
            Ok(HttpExchange::refused(
                HttpErrorKind::Denied,
                "outbound HTTP is not available while publishing",
            ))
        })
    }
}

/// Answers from a recorded transcript, in order, checking that each call asks what the record
/// says it asked: the same key, the same value written, the same callee and input. Outbound
/// HTTP requests are answered by their index, since they finish in the network's order.
pub struct Replay {
    calls: Vec<HostCall>,
    next: Mutex<usize>,
    /// Each recorded request by index: its place in the transcript and whether it was asked.
    http: Mutex<HashMap<u32, (usize, bool)>>,
    /// Index into `calls` of each non-HTTP call, in order.
    sequence: Vec<usize>,
}

impl Replay {
    pub fn new(transcript: Transcript) -> Self {
        let mut http = HashMap::new();
        let mut sequence = Vec::new();
        for (at, call) in transcript.calls.iter().enumerate() {
            match call {
                HostCall::Http { index, .. } => {
                    http.entry(*index).or_insert((at, false));
                }
                _ => sequence.push(at),
            }
        }
        Replay {
            calls: transcript.calls,
            next: Mutex::new(0),
            http: Mutex::new(http),
            sequence,
        }
    }

    /// Whether the guest made every call the transcript records (a guest that stops early
    /// diverges as surely as one that asks for something else).
    pub fn finish(&self) -> Result<(), Divergence> {
        let next = *super::lock(&self.next);
        if let Some(&at) = self.sequence.get(next) {
            return Err(Divergence {
                index: at,
                reason: format!(
                    "the guest made no more host calls, the transcript records {} more (next: {})",
                    self.sequence.len() - next,
                    self.calls[at].name()
                ),
            });
        }
        // A request the call ended before answering may never have been finished by the guest.
        let unasked = (super::lock(&self.http).values())
            .filter(|(at, asked)| {
                !asked
                    && !matches!(
                        &self.calls[*at],
                        HostCall::Http {
                            answer: HttpAnswer::Cancelled,
                            ..
                        }
                    )
            })
            .map(|(at, _)| *at)
            .min();
        match unasked {
            None => Ok(()),
            Some(at) => Err(Divergence {
                index: at,
                reason: "the guest made no such outbound request".into(),
            }),
        }
    }

    /// The answer `answer` reads from the next recorded call, if that call is the one the guest
    /// made (`answer` returns `None` otherwise); moves past it either way.
    fn take<T>(
        &self,
        asked: &str,
        answer: impl FnOnce(&HostCall) -> Option<T>,
    ) -> Result<T, Divergence> {
        let mut next = super::lock(&self.next);
        let position = *next;
        *next += 1;
        let Some(&index) = self.sequence.get(position) else {
            return Err(Divergence {
                index: self.calls.len(),
                reason: format!(
                    "the guest called {asked}, the transcript ends after {position} calls"
                ),
            });
        };
        let call = &self.calls[index];
        answer(call).ok_or_else(|| Divergence {
            index,
            reason: format!(
                "the guest called {asked}, the transcript records {}",
                describe(call)
            ),
        })
    }
}

fn describe(call: &HostCall) -> String {
    match call {
        HostCall::KvGet { key, .. } => format!("kv-get {key:?}"),
        HostCall::KvSet {
            key, value_hash, ..
        } => format!("kv-set {key:?} (value {value_hash})"),
        HostCall::CallAgent {
            agent, input_hash, ..
        } => format!("call-agent {agent:?} (input {input_hash})"),
        HostCall::Model {
            op,
            model,
            request_hash,
            ..
        } => format!("model {op} {model:?} (request {request_hash})"),
        HostCall::Http {
            method,
            url,
            request_hash,
            ..
        } => format!("{method} {url} (request {request_hash})"),
    }
}

impl HostServices for Replay {
    fn kv_get(&self, key: String) -> ServiceFuture<'_, Result<Option<Vec<u8>>, Divergence>> {
        let taken = self.take(&format!("kv-get {key:?}"), |call| match call {
            HostCall::KvGet { key: k, value } if *k == key => Some(value.clone()),
            _ => None,
        });
        Box::pin(async move { taken })
    }

    fn kv_set(
        &self,
        key: String,
        value: Vec<u8>,
    ) -> ServiceFuture<'_, Result<Result<(), String>, Divergence>> {
        let hash = Hash::of(&value);
        let taken = self.take(
            &format!("kv-set {key:?} (value {hash})"),
            |call| match call {
                HostCall::KvSet {
                    key: k,
                    value_hash,
                    error,
                } if *k == key && *value_hash == hash => Some(error.clone().map_or(Ok(()), Err)),
                _ => None,
            },
        );
        Box::pin(async move { taken })
    }

    fn call_agent(&self, call: AgentCall) -> ServiceFuture<'_, Result<AgentAnswer, Divergence>> {
        let input = request_hash(&call.request.action, &call.request.payload);
        let taken = self.take(
            &format!("call-agent {:?} (input {input})", call.agent),
            |recorded| match recorded {
                HostCall::CallAgent {
                    agent,
                    input_hash,
                    receipt,
                    fuel_used,
                    charge,
                    answer,
                } if *agent == call.agent && *input_hash == input => Some(AgentAnswer {
                    receipt: *receipt,
                    fuel_used: *fuel_used,
                    charge: *charge,
                    answer: answer.clone(),
                }),
                _ => None,
            },
        );
        Box::pin(async move { taken })
    }

    fn model(&self, request: ModelRequest) -> ServiceFuture<'_, Result<ModelAnswer, Divergence>> {
        let (op, hash) = (request.op(), request.hash());
        let taken = self.take(
            &format!("model {op} {:?} (request {hash})", request.model()),
            |recorded| match recorded {
                HostCall::Model {
                    op: recorded_op,
                    model,
                    request_hash,
                    answer,
                } if recorded_op == op && model == request.model() && *request_hash == hash => {
                    Some(answer.clone())
                }
                _ => None,
            },
        );
        Box::pin(async move { taken })
    }

    fn http(&self, request: HttpRequest) -> ServiceFuture<'_, Result<HttpExchange, Divergence>> {
        let hash = request.hash();
        let asked = format!("{} {} (request {hash})", request.method, request.url());
        let found = super::lock(&self.http)
            .get_mut(&request.index)
            .map(|(at, taken)| (*at, std::mem::replace(taken, true)));
        let answer = match found {
            None => Err(Divergence {
                index: self.calls.len(),
                reason: format!(
                    "the guest sent outbound request {} ({asked}), the transcript records none",
                    request.index
                ),
            }),
            Some((at, true)) => Err(Divergence {
                index: at,
                reason: format!("outbound request {} was sent twice", request.index),
            }),
            Some((at, false)) => match &self.calls[at] {
                HostCall::Http {
                    request_hash,
                    answer: HttpAnswer::Cancelled,
                    ..
                } if *request_hash == hash => {
                    // The guest never saw an answer to it; neither does this one.
                    return Box::pin(std::future::pending());
                }
                HostCall::Http {
                    request_hash: recorded,
                    bytes_sent,
                    bytes_received,
                    answer,
                    ..
                } if *recorded == hash => Ok(HttpExchange {
                    bytes_sent: *bytes_sent,
                    bytes_received: *bytes_received,
                    answer: answer.clone(),
                }),
                other => Err(Divergence {
                    index: at,
                    reason: format!(
                        "the guest sent {asked}, the transcript records {}",
                        describe(other)
                    ),
                }),
            },
        };
        Box::pin(async move { answer })
    }
}
