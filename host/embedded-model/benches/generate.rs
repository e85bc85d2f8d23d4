//! The embedded model's figures on this machine: load time, prompt processing and generation in
//! tokens per second, greedy, for the model file named by `AGORA_MODEL_FILE` (the pinned
//! SmolLM2-135M-Instruct by default, fetched by `host/embedded-model/fetch-default.sh`).
//!
//! `cargo bench -p agora-embedded-model --bench generate`

use std::path::PathBuf;
use std::time::Instant;

use agora_embedded_model::{EmbeddedModel, Params};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::var_os("AGORA_MODEL_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(agora_embedded_model::default_model_path);
    if !path.exists() {
        return Err(format!(
            "no model at {}: run host/embedded-model/fetch-default.sh, or set AGORA_MODEL_FILE",
            path.display()
        )
        .into());
    }
    let started = Instant::now();
    let model = EmbeddedModel::load(&path)?;
    let load = started.elapsed();
    let prompt = model.chat_prompt(&[
        (
            "system",
            "You are a ride-share assistant. Answer in one short sentence.",
        ),
        (
            "user",
            "I need a ride from the central station to the airport by 6 pm, at most 25 euros. \
             What should I tell the driver?",
        ),
    ]);
    // Prompt processing alone: one token generated.
    let one = Params {
        max_tokens: 1,
        temperature_milli: 0,
        seed: 0,
    };
    let started = Instant::now();
    let first = model.generate(&prompt, one)?;
    let prefill = started.elapsed();
    let generate = Params {
        max_tokens: 64,
        temperature_milli: 0,
        seed: 0,
    };
    let started = Instant::now();
    let answer = model.generate(&prompt, generate)?;
    let total = started.elapsed();
    let decode = total.saturating_sub(prefill);
    let generated = answer.tokens.len().max(1);
    println!("## embedded model: {}", path.display());
    println!("| figure | value |");
    println!("|---|---|");
    println!("| load | {} ms |", load.as_millis());
    println!(
        "| prompt processing | {} tokens in {} ms: {:.0} tokens/s |",
        first.prompt_tokens,
        prefill.as_millis(),
        f64::from(first.prompt_tokens) / prefill.as_secs_f64()
    );
    println!(
        "| generation (greedy) | {} tokens in {} ms: {:.1} tokens/s (target ≥ 25) |",
        generated,
        decode.as_millis(),
        (generated.saturating_sub(1).max(1)) as f64 / decode.as_secs_f64()
    );
    println!("| answer | {:?} |", answer.text);
    Ok(())
}
