//! What a manifest may ask for beyond computing: language models, each declared once with a
//! token budget, and outbound HTTP origins, each a valid pattern.

use super::manifest;
use crate::*;

#[test]
fn a_manifest_declares_each_model_once_with_some_tokens() {
    let key = SecretKey::generate();
    let declare = |models: &[(&str, u32)]| Manifest {
        models: models
            .iter()
            .map(|(name, tokens)| ModelDeclaration {
                name: (*name).into(),
                max_tokens_per_call: *tokens,
            })
            .collect(),
        ..manifest(&key, "1.0.0", b"wasm")
    };
    let now = crate::rules::now_ms();
    assert!(
        declare(&[("smollm2", 256), ("embedder", 64)])
            .check(now)
            .is_ok()
    );
    for (models, says) in [
        (&[("smollm2", 0)][..], "tokens per call"),
        (&[("smollm2", 2_000_000)][..], "tokens per call"),
        (&[("smollm2", 1), ("smollm2", 2)][..], "declared twice"),
        (&[("small model", 1)][..], "printable"),
    ] {
        let error = declare(models).check(now).unwrap_err().to_string();
        assert!(error.contains(says), "{models:?}: {error}");
    }
    // A manifest without models keeps the bytes it had before models existed.
    let plain = Signed::sign(manifest(&key, "1.0.0", b"wasm"), &key).unwrap();
    assert!(!String::from_utf8_lossy(plain.as_bytes()).contains("models"));
}

#[test]
fn a_manifest_declares_at_most_sixteen_egress_origins_each_a_valid_pattern() {
    let key = SecretKey::generate();
    let declare = |origins: Vec<String>| Manifest {
        egress: origins,
        ..manifest(&key, "1.0.0", b"wasm")
    };
    let now = crate::rules::now_ms();
    let good = vec![
        "https://api.example.com".to_owned(),
        "http://127.0.0.1:8080".to_owned(),
    ];
    assert!(declare(good).check(now).is_ok());
    let many = (0..17)
        .map(|i| format!("https://h{i}.example.com"))
        .collect();
    let error = declare(many).check(now).unwrap_err().to_string();
    assert!(error.contains("egress origins"), "{error}");
    for bad in [
        "api.example.com",
        "https://example.com/path",
        "https://u@example.com",
    ] {
        let error = declare(vec![bad.into()])
            .check(now)
            .unwrap_err()
            .to_string();
        assert!(error.contains("egress"), "{bad}: {error}");
    }
    // A manifest without egress keeps the bytes it had before egress existed.
    let plain = Signed::sign(manifest(&key, "1.0.0", b"wasm"), &key).unwrap();
    assert!(!String::from_utf8_lossy(plain.as_bytes()).contains("egress"));
}
