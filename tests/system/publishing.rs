//! What a host accepts at publish time, and what the manifest says.

use agora_host::{CheckError, Limits, PublishError, PublishOptions, examples};
use agora_registry::{Error as RegistryError, Hash, SignedManifest};
use agora_tests::{FORBIDDEN_IMPORT, HOSTILE, HOSTILE_INFO, HUGE_MEMORY, TestHost, WASI_NEWER};

#[tokio::test]
async fn publishing_signs_a_manifest_naming_the_component_by_hash() {
    let host = TestHost::new().await;
    let manifest = host.publish(examples::RIDE_DRIVER).await;
    let body = manifest.body();
    assert_eq!(body.name, "ride-driver");
    assert_eq!(body.version, "1.0.0");
    assert_eq!(body.publisher, host.node.public_key());
    assert_eq!(body.component.hash, Hash::of(examples::RIDE_DRIVER));
    assert_eq!(body.component.size, examples::RIDE_DRIVER.len() as u64);
    assert_eq!(body.actions, ["quote", "counter", "configure"]);
    assert_eq!(body.world, "agora:agent/agent@0.1.0");
    assert!(body.capabilities.is_empty(), "{:?}", body.capabilities);

    // The manifest and the component are blobs, the manifest is in the registry, and all verify.
    let stored = host
        .node
        .blobs()
        .get(&manifest.hash())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        SignedManifest::from_bytes(&stored).unwrap().hash(),
        manifest.hash()
    );
    let component = host
        .node
        .blobs()
        .get(&body.component.hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&component[..], examples::RIDE_DRIVER);
    assert_eq!(
        host.node.resolve("ride-driver").unwrap().hash(),
        manifest.hash()
    );
}

#[tokio::test]
async fn a_component_importing_outside_the_world_is_rejected_naming_the_import() {
    let host = TestHost::new().await;
    let err = host
        .node
        .publish(FORBIDDEN_IMPORT, PublishOptions::default())
        .await
        .unwrap_err();
    let PublishError::Check(CheckError::ForbiddenImports { imports }) = &err else {
        panic!("expected forbidden imports, got {err}");
    };
    assert_eq!(imports, &["test:forbidden/exfiltrate"]);
    assert!(
        err.to_string().contains("test:forbidden/exfiltrate"),
        "{err}"
    );
    assert!(host.node.registry().manifests().unwrap().is_empty());
}

#[tokio::test]
async fn core_modules_garbage_and_oversized_components_are_rejected() {
    let host = TestHost::with_limits(Limits {
        max_component_bytes: 200_000,
        ..Limits::default()
    })
    .await;
    let core_module = wat::parse_str("(module (func (export \"handle\")))").unwrap();
    let cases: [(&[u8], &str); 4] = [
        (&core_module, "core WebAssembly module"),
        (b"#!/bin/sh\nrm -rf /\n", "component header"),
        (
            &[0, b'a', b's', b'm', 0x0d, 0, 1, 0, 0xff, 0xff],
            "invalid component",
        ),
        (&[0u8; 300_000], "accepts at most 200000"),
    ];
    for (bytes, expected) in cases {
        let err = host
            .node
            .publish(bytes, PublishOptions::default())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains(expected),
            "{err} should mention {expected}"
        );
    }
    let no_handler = wat::parse_str("(component)").unwrap();
    let err = host
        .node
        .publish(&no_handler, PublishOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PublishError::Check(CheckError::MissingHandler { .. })),
        "{err}"
    );
    // The host is unharmed.
    host.publish(examples::ENERGY_TRADER).await;
}

#[tokio::test]
async fn a_component_using_a_wasm_feature_agents_do_not_need_is_refused_naming_it() {
    let host = TestHost::new().await;
    let cases = [
        ("(memory i64 1)", "memory64"),
        ("(memory 1) (memory 1)", "multiple memories"),
        ("(type (struct)) ", "gc"),
        ("(tag) ", "exceptions"),
        ("(func (return_call 0))", "tail call"),
        (
            "(func (param v128) (result v128) local.get 0 local.get 0 i8x16.relaxed_swizzle)",
            "relaxed SIMD",
        ),
        ("(memory 1 1 shared)", "threads"),
    ];
    for (module, feature) in cases {
        let component = wat::parse_str(format!("(component (core module {module}))")).unwrap();
        let err = host
            .node
            .publish(&component, PublishOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, PublishError::Check(CheckError::Invalid(_))),
            "{feature}: {err}"
        );
        assert!(
            err.to_string()
                .to_lowercase()
                .contains(&feature.to_lowercase()),
            "{err} should name {feature}"
        );
    }
    assert!(host.node.registry().manifests().unwrap().is_empty());
}

#[tokio::test]
async fn runtimes_that_import_sockets_http_and_newer_wasi_still_publish_and_run() {
    let host = TestHost::new().await;
    let hostile = host.publish(HOSTILE).await;
    // The hostile guest uses std::fs, std::net and wasi:http, so it imports all three; the
    // manifest lists them so a listing shows what the agent could ask for.
    let capabilities = &hostile.body().capabilities;
    for expected in [
        "wasi:filesystem/preopens",
        "wasi:http/outgoing-handler",
        "wasi:sockets/tcp",
    ] {
        assert!(
            capabilities.iter().any(|c| c == expected),
            "{expected} missing from {capabilities:?}"
        );
    }

    let newer = host.publish(WASI_NEWER).await;
    let output = host
        .node
        .run(&newer.hash().to_hex(), "env", b"", None)
        .await
        .unwrap()
        .into_output()
        .unwrap();
    assert_eq!(output, b"0 vars");
}

#[tokio::test]
async fn releases_are_immutable() {
    let host = TestHost::new().await;
    let options = |version: &str| PublishOptions {
        name: Some("trader".into()),
        version: Some(version.into()),
        ..PublishOptions::default()
    };
    let first = host
        .node
        .publish(examples::ENERGY_TRADER, options("1.0.0"))
        .await
        .unwrap();
    let again = host
        .node
        .publish(examples::ENERGY_TRADER, options("1.0.0"))
        .await
        .unwrap();
    assert_eq!(
        again.manifest.hash(),
        first.manifest.hash(),
        "re-publishing is idempotent"
    );
    let err = host
        .node
        .publish(examples::RIDE_DRIVER, options("1.0.0"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PublishError::Registry(RegistryError::ReleaseConflict { .. })
        ),
        "{err}"
    );
    host.node
        .publish(examples::RIDE_DRIVER, options("1.0.1"))
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_names_are_refused() {
    let host = TestHost::new().await;
    for name in ["", "Ride Driver", "-x", &"a".repeat(65)] {
        let options = PublishOptions {
            name: Some(name.into()),
            ..PublishOptions::default()
        };
        let err = host
            .node
            .publish(examples::RIDE_DRIVER, options)
            .await
            .unwrap_err();
        assert!(
            matches!(err, PublishError::InvalidManifest(_)),
            "{name}: {err}"
        );
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_new_data_dir_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let data_dir = agora_host::DataDir::new(parent.path().join("agora"));
    data_dir.keygen().unwrap();
    let node = agora_host::Node::open(agora_host::NodeConfig::new(data_dir.clone()))
        .await
        .unwrap();
    node.publish(examples::RIDE_DRIVER, PublishOptions::default())
        .await
        .unwrap();
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(data_dir.root()), 0o700);
    assert_eq!(mode(&data_dir.registry_path()), 0o600);
    assert_eq!(mode(&data_dir.key_path()), 0o600);
    assert_eq!(mode(&data_dir.compiled_path()), 0o700);
}

#[tokio::test]
async fn an_info_that_hands_the_host_more_than_it_takes_is_refused_at_publish() {
    let host = TestHost::new().await;
    let err = host
        .node
        .publish(HOSTILE_INFO, PublishOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PublishError::Check(CheckError::Info(_))),
        "{err}"
    );
    assert!(err.to_string().contains("too much data"), "{err}");
    assert!(host.node.registry().manifests().unwrap().is_empty());
    host.publish(examples::ENERGY_TRADER).await;
}

#[tokio::test]
async fn a_component_declaring_more_initial_memory_than_a_call_may_have_is_refused() {
    let host = TestHost::new().await;
    let err = host
        .node
        .publish(HUGE_MEMORY, PublishOptions::default())
        .await
        .unwrap_err();
    // With the pooling allocator the pool's slot size refuses it when it is linked; allocating
    // on demand, the limiter refuses it when info() instantiates it.
    assert!(
        matches!(
            err,
            PublishError::Check(CheckError::Invalid(_) | CheckError::Info(_))
        ),
        "{err}"
    );
    assert!(err.to_string().contains("memory"), "{err}");
    host.publish(examples::ENERGY_TRADER).await;
}
