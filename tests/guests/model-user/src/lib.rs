//! A guest that thinks on request, to test the `agora:agent/model` interface through a host:
//!
//! - `models` → the models the host offers it, `[{"name", "max_tokens_per_call"}]`;
//! - `ask` `{"model", "prompt", "max_tokens", "times"}` → completes `prompt` `times` times
//!   (default 1) and answers one entry per request: `{"text", "finish", "prompt_tokens",
//!   "generated_tokens"}` or `{"error": "<model-error>", "message"}`. A model error never stops
//!   it: it carries on and reports it;
//! - `embed` `{"model", "texts"}` → `{"vectors"}` or `{"error"}`.

wit_bindgen::generate!({ path: "../../../wit", world: "thinking-agent" });

use agora::agent::model::{self, FinishReason, Message, ModelError, Params, Role};
use agora::agent::types::{AgentError, AgentInfo, Request};
use serde_json::{Value, json};

struct ModelUser;

fn error(e: ModelError) -> Value {
    let (kind, message) = match e {
        ModelError::NotOffered(m) => ("not-offered", m),
        ModelError::BudgetExhausted => ("budget-exhausted", String::new()),
        ModelError::TooLong(m) => ("too-long", m),
        ModelError::Unavailable(m) => ("unavailable", m),
    };
    json!({"error": kind, "message": message})
}

fn field<'a>(payload: &'a Value, name: &str) -> Result<&'a Value, AgentError> {
    payload
        .get(name)
        .ok_or_else(|| AgentError::BadRequest(format!("payload has no {name}")))
}

impl exports::agora::agent::handler::Guest for ModelUser {
    fn info() -> AgentInfo {
        AgentInfo {
            name: "model-user".into(),
            version: "0.1.0".into(),
            description: "calls the host's models as asked".into(),
            actions: vec!["models".into(), "ask".into(), "embed".into()],
        }
    }

    fn handle(req: Request) -> Result<Vec<u8>, AgentError> {
        let payload: Value = serde_json::from_slice(&req.payload)
            .map_err(|e| AgentError::BadRequest(e.to_string()))?;
        let answer = match req.action.as_str() {
            "models" => Value::Array(
                model::models()
                    .into_iter()
                    .map(|m| json!({"name": m.name, "max_tokens_per_call": m.max_tokens_per_call}))
                    .collect(),
            ),
            "ask" => {
                let name = field(&payload, "model")?
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let prompt = field(&payload, "prompt")?
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let max_tokens = payload
                    .get("max_tokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(16);
                let times = payload.get("times").and_then(Value::as_u64).unwrap_or(1);
                let messages = [
                    Message {
                        role: Role::System,
                        content: "Answer briefly.".into(),
                    },
                    Message {
                        role: Role::User,
                        content: prompt,
                    },
                ];
                let params = Params {
                    max_tokens: u32::try_from(max_tokens).unwrap_or(u32::MAX),
                    temperature_milli: 0,
                    seed: 0,
                };
                let mut answers = Vec::new();
                for _ in 0..times {
                    answers.push(match model::complete(&name, &messages, params) {
                        Ok(done) => json!({
                            "text": done.text,
                            "finish": match done.finish {
                                FinishReason::Stop => "stop",
                                FinishReason::Length => "length",
                            },
                            "prompt_tokens": done.usage.prompt_tokens,
                            "generated_tokens": done.usage.generated_tokens,
                        }),
                        Err(e) => error(e),
                    });
                }
                Value::Array(answers)
            }
            "embed" => {
                let name = field(&payload, "model")?
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let texts: Vec<String> = field(&payload, "texts")?
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|t| t.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                match model::embed(&name, &texts) {
                    Ok(done) => {
                        json!({"vectors": done.vectors, "prompt_tokens": done.usage.prompt_tokens})
                    }
                    Err(e) => error(e),
                }
            }
            other => return Err(AgentError::BadRequest(format!("unknown action {other:?}"))),
        };
        Ok(answer.to_string().into_bytes())
    }
}

export!(ModelUser);
