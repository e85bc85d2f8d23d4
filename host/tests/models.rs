//! `agora model import` and `agora model list`, and `agora host --offer-model` with an imported
//! model, through the real binary.

mod common;

use common::{agora, agora_output, start_host};

#[test]
fn a_model_file_is_imported_only_if_it_loads() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    agora(&data, &["keygen"]);
    let file = dir.path().join("tiny.gguf");
    agora_embedded_model::fixture::write_tiny_model(&file, 3).unwrap();

    let imported = agora(
        &data,
        &["model", "import", file.to_str().unwrap(), "--name", "tiny"],
    );
    assert!(imported.starts_with("imported tiny: "), "{imported}");
    assert!(data.join("models/tiny.gguf").exists());
    let listed = agora(&data, &["model", "list"]);
    assert!(listed.starts_with("tiny "), "{listed}");

    let bogus = dir.path().join("bogus.gguf");
    std::fs::write(&bogus, b"not a model at all").unwrap();
    let refused = agora_output(
        &data,
        &[
            "model",
            "import",
            bogus.to_str().unwrap(),
            "--name",
            "bogus",
        ],
    );
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("bogus.gguf"), "{said}");
    assert!(!data.join("models/bogus.gguf").exists());

    // A host offers an imported model by its name, and refuses one it cannot find.
    let unknown = agora_output(&data, &["host", "--offer-model", "absent"]);
    assert!(!unknown.status.success());
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert!(said.contains("not imported"), "{said}");
    let host = start_host(&data, &["--offer-model", "tiny"]);
    assert!(host.api.starts_with("http://127.0.0.1:"), "{}", host.api);
    host.stop();
}
