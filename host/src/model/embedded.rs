//! The embedded model as a backend: generation on the blocking pool, off the async executor,
//! one request at a time per model (each starts from an empty cache).

use std::path::Path;
use std::sync::Arc;

use agora_embedded_model::{EmbeddedModel, ModelError, Params};
use agora_registry::FinishReason;

use super::{BackendError, BackendFuture, Completed, Completion, Embedded, ModelBackend};

/// A GGUF model run in this process (see [`agora_embedded_model`]).
#[derive(Debug, Clone)]
pub struct EmbeddedBackend {
    model: Arc<EmbeddedModel>,
}

impl EmbeddedBackend {
    /// Loads the model in `path`.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        Ok(EmbeddedBackend {
            model: Arc::new(EmbeddedModel::load(path)?),
        })
    }
}

impl ModelBackend for EmbeddedBackend {
    fn complete<'a>(
        &'a self,
        _model: &'a str,
        request: Completion<'a>,
    ) -> BackendFuture<'a, Completed> {
        let model = self.model.clone();
        let messages: Vec<(String, String)> = (request.messages.iter())
            .map(|m| (m.role.clone(), m.content.clone()))
            .collect();
        let params = Params {
            max_tokens: request.max_tokens,
            temperature_milli: request.temperature_milli,
            seed: request.seed,
        };
        Box::pin(async move {
            let generated = tokio::task::spawn_blocking(move || {
                let chat: Vec<(&str, &str)> = (messages.iter())
                    .map(|(role, content)| (role.as_str(), content.as_str()))
                    .collect();
                model.generate(&model.chat_prompt(&chat), params)
            })
            .await
            .map_err(|e| BackendError::Unavailable(format!("the model's thread failed: {e}")))?;
            match generated {
                Ok(done) => Ok(Completed {
                    text: done.text,
                    finish: if done.stopped {
                        FinishReason::Stop
                    } else {
                        FinishReason::Length
                    },
                    prompt_tokens: done.prompt_tokens,
                    generated_tokens: u32::try_from(done.tokens.len()).unwrap_or(u32::MAX),
                }),
                Err(too_long @ ModelError::TooLong { .. }) => {
                    Err(BackendError::TooLong(too_long.to_string()))
                }
                Err(other) => Err(BackendError::Unavailable(other.to_string())),
            }
        })
    }

    fn embed<'a>(&'a self, model: &'a str, _texts: &'a [String]) -> BackendFuture<'a, Embedded> {
        Box::pin(async move {
            Err(BackendError::Unavailable(format!(
                "{model} is a chat model; it does not embed"
            )))
        })
    }
}
