//! A tiny llama model with random weights, written as a GGUF file in milliseconds, so that every
//! code path of the embedded model (loading, the tokenizer from GGUF metadata, the chat template,
//! generation, its determinism) runs in tests without downloading a real model.
//!
//! The vocabulary is GPT-2's 256 byte tokens and the three ChatML specials; the weights come
//! from a fixed seed, so one seed always writes the same file.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};

use crate::ModelError;

const DIM: usize = 32;
const HEADS: usize = 4;
const LAYERS: usize = 2;
const FFN: usize = 64;
const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// GPT-2's map from bytes to the printable characters its byte-level tokens are written in.
fn byte_tokens() -> Vec<String> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut shifted = 0u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                char::from(b).to_string()
            } else {
                let c = char::from_u32(256 + shifted).unwrap_or('?');
                shifted += 1;
                c.to_string()
            }
        })
        .collect()
}

/// Deterministic values in [-0.5, 0.5): splitmix64.
fn noise(seed: &mut u64, count: usize) -> Vec<f32> {
    (0..count)
        .map(|_| {
            *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = *seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Writes the tiny model for `seed` to `path`.
pub fn write_tiny_model(path: &Path, seed: u64) -> Result<(), ModelError> {
    let run = |e: candle_core::Error| ModelError::Run(e.to_string());
    let mut tokens = byte_tokens();
    tokens.extend(SPECIALS.iter().map(|s| s.to_string()));
    let vocab = tokens.len();
    let mut seed = seed;
    let mut tensor = |shape: &[usize], scale: f32| -> Result<QTensor, ModelError> {
        let count = shape.iter().product();
        let values: Vec<f32> = noise(&mut seed, count).iter().map(|v| v * scale).collect();
        let t = Tensor::from_vec(values, shape, &Device::Cpu).map_err(run)?;
        QTensor::quantize(&t, GgmlDType::F32).map_err(run)
    };
    let ones = |n: usize| -> Result<QTensor, ModelError> {
        let t = Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).map_err(run)?;
        QTensor::quantize(&t, GgmlDType::F32).map_err(run)
    };
    let mut named: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), tensor(&[vocab, DIM], 1.0)?),
        ("output_norm.weight".into(), ones(DIM)?),
        ("output.weight".into(), tensor(&[vocab, DIM], 1.0)?),
    ];
    for layer in 0..LAYERS {
        let p = format!("blk.{layer}");
        named.push((format!("{p}.attn_norm.weight"), ones(DIM)?));
        named.push((format!("{p}.ffn_norm.weight"), ones(DIM)?));
        for name in ["attn_q", "attn_k", "attn_v", "attn_output"] {
            named.push((format!("{p}.{name}.weight"), tensor(&[DIM, DIM], 0.3)?));
        }
        named.push((format!("{p}.ffn_gate.weight"), tensor(&[FFN, DIM], 0.3)?));
        named.push((format!("{p}.ffn_up.weight"), tensor(&[FFN, DIM], 0.3)?));
        named.push((format!("{p}.ffn_down.weight"), tensor(&[DIM, FFN], 0.3)?));
    }
    let token_types: Vec<Value> = (0..vocab)
        .map(|i| Value::I32(if i < 256 { 1 } else { 3 }))
        .collect();
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.attention.head_count", Value::U32(HEADS as u32)),
        ("llama.attention.head_count_kv", Value::U32(HEADS as u32)),
        ("llama.block_count", Value::U32(LAYERS as u32)),
        ("llama.embedding_length", Value::U32(DIM as u32)),
        (
            "llama.rope.dimension_count",
            Value::U32((DIM / HEADS) as u32),
        ),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.context_length", Value::U32(512)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.merges", Value::Array(Vec::new())),
        ("tokenizer.ggml.token_type", Value::Array(token_types)),
        ("tokenizer.ggml.bos_token_id", Value::U32(256)),
        ("tokenizer.ggml.eos_token_id", Value::U32(258)),
    ];
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = named.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).map_err(|source| ModelError::Read {
        path: path.to_owned(),
        source,
    })?;
    gguf_file::write(&mut file, &metadata, &tensors).map_err(run)
}
