//! Language models: `agora model import` and `agora model list`, and `agora host`'s options for
//! which models the host offers its agents, where they are answered, and at what price.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use agora_host::DataDir;
use agora_host::model::{EmbeddedBackend, ModelBackend, ModelConfig, OfferedModel, RemoteBackend};
use anyhow::{Context, bail};

/// The environment variable a model server's key may come from, when no key file is named.
/// Read by the host, never shown in `--help` or logs.
const KEY_VARIABLE: &str = "AGORA_MODEL_KEY";

/// `agora model …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ModelCommand {
    /// Check a GGUF model file (it loads and its tokenizer builds) and copy it into this data
    /// dir as `models/NAME.gguf`, for `agora host --offer-model NAME` to run in process. Nothing
    /// is downloaded.
    Import {
        /// The GGUF file.
        file: PathBuf,
        /// The name agents call it by.
        #[arg(long)]
        name: String,
    },
    /// List the models imported into this data dir.
    List,
}

/// Runs `agora model …`.
pub(crate) fn run(data_dir: &DataDir, command: ModelCommand) -> anyhow::Result<ExitCode> {
    match command {
        ModelCommand::Import { file, name } => {
            agora_registry::rules::check_name(&name)
                .with_context(|| format!("model name {name:?}"))?;
            let started = std::time::Instant::now();
            // Loading proves the file is a model this host can run, before it is kept.
            EmbeddedBackend::load(&file)?;
            let loaded = started.elapsed();
            let dir = data_dir.models_path();
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let target = dir.join(format!("{name}.gguf"));
            let partial = dir.join(format!(".{name}.gguf.partial"));
            std::fs::copy(&file, &partial)
                .with_context(|| format!("copying {} into {}", file.display(), dir.display()))?;
            std::fs::rename(&partial, &target)
                .with_context(|| format!("moving the copy to {}", target.display()))?;
            let bytes = std::fs::read(&target)?;
            println!(
                "imported {name}: {} bytes, blake3 {}, loaded in {} ms",
                bytes.len(),
                blake3::hash(&bytes),
                loaded.as_millis()
            );
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::List => {
            for (name, path) in imported(data_dir)? {
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                println!("{name:<24} {size:>12} bytes  {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The models imported into `data_dir`: `(name, file)`, by name.
fn imported(data_dir: &DataDir) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let dir = data_dir.models_path();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut found: Vec<(String, PathBuf)> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter_map(|path| {
            let name = path
                .file_name()?
                .to_str()?
                .strip_suffix(".gguf")?
                .to_owned();
            (!name.starts_with('.')).then_some((name, path))
        })
        .collect();
    found.sort();
    Ok(found)
}

fn embedded(path: &Path) -> anyhow::Result<Arc<dyn ModelBackend>> {
    let backend = EmbeddedBackend::load(path)?;
    Ok(Arc::new(backend))
}

/// The models a host offers to agents whose manifests declare them.
#[derive(Debug, clap::Args)]
pub(crate) struct ModelArgs {
    /// Offer this model to agents (repeatable): one imported with `agora model import`, run in
    /// process; else `NAME` or `NAME=SERVER_NAME` answered by --model-server.
    #[arg(long = "offer-model", value_name = "NAME[=SERVER_NAME]")]
    offered: Vec<String>,
    /// An OpenAI-compatible server answering the offered models (llama.cpp's server, Ollama,
    /// vLLM), e.g. http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    model_server: Option<String>,
    /// A file whose first line is the model server's key, sent as a bearer token (the file must
    /// not be readable by group or others); else the AGORA_MODEL_KEY environment variable, if
    /// set. Never shown to agents or logged.
    #[arg(long, value_name = "PATH")]
    model_key_file: Option<PathBuf>,
    /// For an https:// model server: also trust certificates issued by the CA certificates in
    /// this PEM file (Mozilla's roots are always trusted).
    #[arg(long, value_name = "PEM")]
    model_server_ca: Option<PathBuf>,
    /// Price per million tokens of every offered model, in the marketplace's smallest unit.
    #[arg(long, value_name = "PRICE", default_value_t = 0)]
    model_price: u64,
}

impl ModelArgs {
    /// The configuration these options describe: no models without --offer-model.
    pub(crate) fn config(&self, data_dir: &DataDir) -> anyhow::Result<ModelConfig> {
        let mut config = ModelConfig::default();
        let imported = imported(data_dir)?;
        let mut server: Option<Arc<dyn ModelBackend>> = None;
        for offer in &self.offered {
            let (name, server_name) = offer.split_once('=').unwrap_or((offer, offer));
            let local = imported.iter().find(|(n, _)| n == name && offer == name);
            let backend = match (local, &self.model_server) {
                (Some((_, path)), _) => {
                    embedded(path).with_context(|| format!("loading model {name}"))?
                }
                (None, Some(url)) => match &server {
                    Some(backend) => backend.clone(),
                    None => server.insert(self.remote(url)?).clone(),
                },
                (None, None) => bail!(
                    "model {name} is not imported into this data dir (`agora model import`) and \
                     no --model-server is given"
                ),
            };
            let model = OfferedModel::new(name, backend).price_per_mtoken(self.model_price);
            config = config.offer(model.backend_model(server_name));
        }
        Ok(config)
    }

    fn remote(&self, url: &str) -> anyhow::Result<Arc<dyn ModelBackend>> {
        let mut backend = RemoteBackend::new(url)?;
        if let Some(path) = &self.model_server_ca {
            for der in agora_host::tls::read_pem_certificates(path)? {
                backend = backend.with_trust_root(der)?;
            }
        }
        if let Some(path) = &self.model_key_file {
            backend = backend.with_key(crate::secret_file::read(path)?.trim());
        } else if let Ok(key) = std::env::var(KEY_VARIABLE) {
            backend = backend.with_key(key);
        }
        Ok(Arc::new(backend))
    }
}
