//! The `agora:agent/model` interface a thinking agent imports: language models the host holds.
//!
//! Every request goes to the call's [`HostServices`], which answers it live (the node's model
//! backends, within the manifest's token budgets) or from a transcript; the request's hash and
//! the answer are recorded in the call's transcript either way. The time the host spends
//! answering is not counted against the agent's wall-clock limit: it is metered as tokens, and
//! the call's deadline moves on by as long as the model took.

use std::time::Instant;

use agora_registry::{ChatMessage, FinishReason, HostCall, ModelAnswer, ModelErrorKind};
use wasmtime::StoreContextMut;
use wasmtime::component::Linker;

use super::AgentState;
use super::bindings::agora::agent::model::{
    Completion, Embedding, FinishReason as WitFinish, Message, ModelError, ModelInfo, Params, Role,
    Usage,
};
use super::host_fns::{charge, diverge, record};
use super::services::ModelRequest;

/// Asks the call's services, records the exchange and charges the answer's bytes.
async fn ask(
    store: &mut StoreContextMut<'_, AgentState>,
    request: ModelRequest,
) -> wasmtime::Result<ModelAnswer> {
    charge(store, request.size())?;
    let services = store.data().call.services.clone();
    let (op, model, request_hash) = (request.op(), request.model().to_owned(), request.hash());
    let model_time = store.data().call.model_time.clone();
    let started = Instant::now();
    model_time.start();
    let answered = services.model(request).await;
    model_time.finish(started.elapsed());
    let answer = match answered {
        Ok(answer) => answer,
        Err(divergence) => return Err(diverge(store, divergence)),
    };
    record(
        store,
        HostCall::Model {
            op: op.to_owned(),
            model,
            request_hash,
            answer: answer.clone(),
        },
    )?;
    charge(store, answer_size(&answer))?;
    Ok(answer)
}

fn answer_size(answer: &ModelAnswer) -> usize {
    match answer {
        ModelAnswer::Completion { text, .. } => text.len(),
        ModelAnswer::Embedding { vectors, .. } => vectors.iter().map(|v| v.len() * 4).sum(),
        ModelAnswer::Offered { models } => models.iter().map(|m| m.name.len() + 4).sum(),
        ModelAnswer::Error { message, .. } => message.len(),
    }
}

fn error(kind: ModelErrorKind, message: String) -> ModelError {
    match kind {
        ModelErrorKind::NotOffered => ModelError::NotOffered(message),
        ModelErrorKind::BudgetExhausted => ModelError::BudgetExhausted,
        ModelErrorKind::TooLong => ModelError::TooLong(message),
        ModelErrorKind::Unavailable => ModelError::Unavailable(message),
    }
}

/// An answer of the wrong shape for its request: only a transcript made for another request
/// could hold one, and a replay has already checked the request's hash, so a host's own bug.
fn mismatched(op: &str) -> ModelError {
    ModelError::Unavailable(format!(
        "the host answered {op} with another kind of answer"
    ))
}

pub(super) fn add_model_interface(linker: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    let mut model = linker.instance("agora:agent/model@0.1.0")?;

    model.func_wrap_async(
        "models",
        |mut store: StoreContextMut<'_, AgentState>, (): ()| {
            Box::new(async move {
                let listed = match ask(&mut store, ModelRequest::Models).await? {
                    ModelAnswer::Offered { models } => models
                        .into_iter()
                        .map(|m| ModelInfo {
                            name: m.name,
                            max_tokens_per_call: m.max_tokens_per_call,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                Ok((listed,))
            })
        },
    )?;

    model.func_wrap_async(
        "complete",
        |mut store: StoreContextMut<'_, AgentState>,
         (model, messages, params): (String, Vec<Message>, Params)| {
            Box::new(async move {
                let messages = messages
                    .into_iter()
                    .map(|m| ChatMessage {
                        role: match m.role {
                            Role::System => "system",
                            Role::User => "user",
                            Role::Assistant => "assistant",
                        }
                        .to_owned(),
                        content: m.content,
                    })
                    .collect();
                let params = agora_registry::ModelParams {
                    max_tokens: params.max_tokens,
                    temperature_milli: params.temperature_milli,
                    seed: params.seed,
                };
                let request = ModelRequest::Complete {
                    model,
                    messages,
                    params,
                };
                let result = match ask(&mut store, request).await? {
                    ModelAnswer::Completion {
                        text,
                        finish,
                        prompt_tokens,
                        generated_tokens,
                    } => Ok(Completion {
                        text,
                        finish: match finish {
                            FinishReason::Stop => WitFinish::Stop,
                            FinishReason::Length => WitFinish::Length,
                        },
                        usage: Usage {
                            prompt_tokens,
                            generated_tokens,
                        },
                    }),
                    ModelAnswer::Error { kind, message } => Err(error(kind, message)),
                    _ => Err(mismatched("complete")),
                };
                Ok((result,))
            })
        },
    )?;

    model.func_wrap_async(
        "embed",
        |mut store: StoreContextMut<'_, AgentState>, (model, texts): (String, Vec<String>)| {
            Box::new(async move {
                let result = match ask(&mut store, ModelRequest::Embed { model, texts }).await? {
                    ModelAnswer::Embedding {
                        vectors,
                        prompt_tokens,
                    } => Ok(Embedding {
                        vectors: vectors
                            .into_iter()
                            .map(|v| v.into_iter().map(f32::from_bits).collect())
                            .collect(),
                        usage: Usage {
                            prompt_tokens,
                            generated_tokens: 0,
                        },
                    }),
                    ModelAnswer::Error { kind, message } => Err(error(kind, message)),
                    _ => Err(mismatched("embed")),
                };
                Ok((result,))
            })
        },
    )?;
    Ok(())
}
