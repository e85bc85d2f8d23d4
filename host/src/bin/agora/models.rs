//! `agora host`'s language-model options: which models the host offers its agents, where they
//! are answered, and at what price.

use std::path::PathBuf;
use std::sync::Arc;

use agora_host::model::{ModelConfig, OfferedModel, RemoteBackend};
use anyhow::Context;

/// The environment variable a model server's key may come from, when no key file is named.
/// Read by the host, never shown in `--help` or logs.
const KEY_VARIABLE: &str = "AGORA_MODEL_KEY";

/// The models a host offers to agents whose manifests declare them.
#[derive(Debug, clap::Args)]
pub(crate) struct ModelArgs {
    /// Offer this model to agents (repeatable): `NAME`, or `NAME=SERVER_NAME` when the model
    /// server calls it otherwise. Needs --model-server.
    #[arg(long = "offer-model", value_name = "NAME[=SERVER_NAME]")]
    offered: Vec<String>,
    /// An OpenAI-compatible server answering the offered models (llama.cpp's server, Ollama,
    /// vLLM), e.g. http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    model_server: Option<String>,
    /// A file whose first line is the model server's key, sent as a bearer token; else the
    /// AGORA_MODEL_KEY environment variable, if set. Never shown to agents or logged.
    #[arg(long, value_name = "PATH")]
    model_key_file: Option<PathBuf>,
    /// Price per million tokens of every offered model, in the marketplace's smallest unit.
    #[arg(long, value_name = "PRICE", default_value_t = 0)]
    model_price: u64,
}

impl ModelArgs {
    /// The configuration these options describe: no models without --offer-model.
    pub(crate) fn config(&self) -> anyhow::Result<ModelConfig> {
        let mut config = ModelConfig::default();
        if self.offered.is_empty() {
            return Ok(config);
        }
        let server = self
            .model_server
            .as_deref()
            .context("--offer-model needs --model-server")?;
        let mut backend = RemoteBackend::new(server)?;
        if let Some(path) = &self.model_key_file {
            backend = backend.with_key_file(path)?;
        } else if let Ok(key) = std::env::var(KEY_VARIABLE) {
            backend = backend.with_key(key);
        }
        let backend = Arc::new(backend);
        for offer in &self.offered {
            let (name, server_name) = offer.split_once('=').unwrap_or((offer, offer));
            config = config.offer(
                OfferedModel::new(name, backend.clone())
                    .backend_model(server_name)
                    .price_per_mtoken(self.model_price),
            );
        }
        Ok(config)
    }
}
