//! Language models as the records see them: what a manifest declares it needs, what a receipt
//! says a call used and was charged, and what a model answered, as a transcript records it.
//!
//! A model is a capability: the agent's manifest declares each model it may call and how many
//! tokens one call may spend on it; the host's operator decides which models it offers and at
//! what price. The prompt, the parameters and the answer of each model call go into the call's
//! transcript, so a verifier replays them (and, for a deterministic model under greedy
//! decoding, can compute them again); the tokens and their charge go into the receipt.

use serde::{Deserialize, Serialize};

use crate::Hash;

/// Most models one manifest may declare.
pub const MAX_MODELS: usize = 8;
/// Longest model name, in bytes.
pub const MAX_MODEL_NAME_BYTES: usize = 64;
/// Most tokens a manifest may declare for one call on one model.
pub const MAX_TOKENS_PER_CALL: u32 = 1_000_000;

/// A model an agent's manifest says it calls, and the most tokens (prompt and generated
/// together) one of its calls may spend on it: the agent's own budget, which the host enforces
/// (a call past it gets `budget-exhausted`, not a trap).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDeclaration {
    /// The model's name as hosts offer it (`smollm2-135m-instruct`).
    pub name: String,
    /// Tokens per call, prompt and generated together.
    pub max_tokens_per_call: u32,
}

/// What one call spent on one model, as its receipt records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelUsage {
    /// The model.
    pub model: String,
    /// Prompt tokens over all the call's requests to it.
    pub prompt_tokens: u64,
    /// Generated tokens over all the call's requests to it.
    pub generated_tokens: u64,
    /// What the host charged for them, part of the receipt's charge.
    pub charge: u64,
}

/// Why a model call gave no answer, as the guest sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelErrorKind {
    /// The manifest does not declare the model, or this host does not offer it.
    NotOffered,
    /// The call's token budget for the model is spent.
    BudgetExhausted,
    /// The prompt does not fit the model's context or what is left of the budget.
    TooLong,
    /// The backend failed, refused (e.g. HTTP 429) or did not answer in time. Not charged.
    Unavailable,
}

impl ModelErrorKind {
    /// The name the guest's `model-error` variant uses.
    pub fn name(self) -> &'static str {
        match self {
            ModelErrorKind::NotOffered => "not-offered",
            ModelErrorKind::BudgetExhausted => "budget-exhausted",
            ModelErrorKind::TooLong => "too-long",
            ModelErrorKind::Unavailable => "unavailable",
        }
    }
}

/// How a completion ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FinishReason {
    /// The model ended its answer.
    Stop,
    /// The token limit was reached.
    Length,
}

/// What a model call answered, as a transcript records it. Embeddings are recorded as the bits
/// of each `f32`, so the record is exact and its bytes canonical.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum ModelAnswer {
    /// A completion.
    Completion {
        /// The generated text.
        text: String,
        /// How it ended.
        finish: FinishReason,
        /// Prompt tokens.
        prompt_tokens: u32,
        /// Generated tokens.
        generated_tokens: u32,
    },
    /// Embeddings, one vector per text, each `f32` as its bits.
    Embedding {
        /// The vectors.
        vectors: Vec<Vec<u32>>,
        /// Prompt tokens over all texts.
        prompt_tokens: u32,
    },
    /// What `models()` listed: the declared models this host offers, with their budgets.
    Offered {
        /// The models.
        models: Vec<ModelDeclaration>,
    },
    /// No answer.
    Error {
        /// Which error.
        kind: ModelErrorKind,
        /// What the host said, for people.
        message: String,
    },
}

impl ModelAnswer {
    /// Prompt and generated tokens the answer counts (none for an error).
    pub fn tokens(&self) -> (u32, u32) {
        match self {
            ModelAnswer::Completion {
                prompt_tokens,
                generated_tokens,
                ..
            } => (*prompt_tokens, *generated_tokens),
            ModelAnswer::Embedding { prompt_tokens, .. } => (*prompt_tokens, 0),
            ModelAnswer::Offered { .. } | ModelAnswer::Error { .. } => (0, 0),
        }
    }
}

/// A chat message of a model request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// How to generate, as the guest asked: integers only, so the request hashes canonically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelParams {
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Sampling temperature in thousandths; 0 is greedy.
    pub temperature_milli: u32,
    /// Sampling seed.
    pub seed: u64,
}

/// The hash a transcript records for a model request: BLAKE3 over a domain tag and the
/// request's canonical JSON (`op` is `complete` or `embed`), so a replay checks that the guest
/// asked the same thing without the transcript carrying every prompt in full.
pub fn model_request_hash<T: Serialize>(op: &str, model: &str, request: &T) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"agora/model-request/v1\0");
    hasher.update(&(op.len() as u64).to_le_bytes());
    hasher.update(op.as_bytes());
    hasher.update(&(model.len() as u64).to_le_bytes());
    hasher.update(model.as_bytes());
    // These request types have no maps and no floats: their JSON is canonical.
    hasher.update(&serde_json::to_vec(request).unwrap_or_default());
    Hash::from_bytes(*hasher.finalize().as_bytes())
}
