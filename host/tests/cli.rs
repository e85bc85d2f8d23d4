//! The `agora` binary, driven as a user would drive it.

use std::path::Path;
use std::process::{Command, Output};

fn agora(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agora"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run agora")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn keygen_publish_run_and_list_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let component = dir.path().join("ride-driver.wasm");
    std::fs::write(&component, agora_host::examples::RIDE_DRIVER).unwrap();

    let out = agora(&data, &["publish", component.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("run `agora keygen` first"),
        "{}",
        stderr(&out)
    );

    let out = agora(&data, &["keygen"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let key = stdout(&out).trim().to_string();
    assert_eq!(key.len(), 64);
    let key_file = std::fs::read_to_string(data.join("keys/host.key")).unwrap();
    assert!(!stdout(&out).contains(key_file.trim()) && !stderr(&out).contains(key_file.trim()));
    assert!(
        !agora(&data, &["keygen"]).status.success(),
        "an existing key is never overwritten"
    );

    let out = agora(
        &data,
        &["publish", component.to_str().unwrap(), "--price", "100"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("published ride-driver@1.0.0"),
        "{}",
        stdout(&out)
    );
    let manifest = stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix("manifest  "))
        .unwrap()
        .to_string();

    let out = agora(&data, &["agents"]);
    assert!(stdout(&out).contains("ride-driver") && stdout(&out).contains(&manifest[..12]));

    let payload = r#"{"trip": {"distance_m": 5000, "duration_s": 600}}"#;
    let out = agora(
        &data,
        &["run", &manifest, "--action", "quote", "--payload", payload],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), r#"{"fare_cents":1150}"#);
    assert!(stderr(&out).contains("receipt "), "{}", stderr(&out));

    // A failing call exits non-zero with the typed error naming agent and limit.
    let out = agora(
        &data,
        &[
            "run",
            "ride-driver",
            "--action",
            "quote",
            "--payload",
            payload,
            "--fuel",
            "1000",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("agent ride-driver@1.0.0 ran out of fuel (limit 1000)"),
        "{}",
        stderr(&out)
    );
    let out = agora(
        &data,
        &[
            "run",
            "ride-driver",
            "--action",
            "quote",
            "--payload",
            "{not json",
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--payload is not JSON"),
        "{}",
        stderr(&out)
    );

    let out = agora(&data, &["receipts", "ride-driver"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(
        table.contains("fuel-exhausted") && table.contains(" ok "),
        "{table}"
    );

    let out = agora(&data, &["receipts", "--json"]);
    let json_lines = stdout(&out);
    let lines: Vec<&str> = json_lines.lines().collect();
    assert_eq!(lines.len(), 2);
    for line in lines {
        agora_registry::SignedReceipt::from_bytes(line.as_bytes()).expect("receipts verify");
    }
}

/// Runs `agora demo` with the embedded model looked for in `model_cache`.
fn demo(model_cache: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agora"))
        .args(["demo", "--keep", dir.path().join("demo").to_str().unwrap()])
        .env("AGORA_MODEL_CACHE", model_cache)
        .env_remove("RUST_LOG")
        .output()
        .expect("run agora demo");
    assert!(out.status.success(), "{}", stderr(&out));
    let report = stdout(&out);
    assert!(report.contains("agreed with driver-ben"), "{report}");
    assert!(report.contains("cleared 5000 Wh at 20 c/kWh"), "{report}");
    assert!(
        report.contains("receipts signed by this host (13)"),
        "{report}"
    );
    report
}

#[test]
fn the_demo_negotiates_a_ride_and_clears_an_energy_auction_and_says_plainly_it_has_no_model() {
    let empty = tempfile::tempdir().unwrap();
    let report = demo(empty.path());
    assert!(report.contains("model: none at "), "{report}");
    assert!(
        report.contains("concierge (written by rules: no model: "),
        "{report}"
    );
}

#[test]
fn the_demo_concierge_thinks_with_the_pinned_default_model() {
    let path = agora_embedded_model::default_model_path();
    assert!(
        path.exists(),
        "no default model at {}: run host/embedded-model/fetch-default.sh",
        path.display()
    );
    let cache = path.parent().unwrap();
    let report = demo(cache);
    assert!(
        report.contains("concierge (written by smollm2-135m-instruct, "),
        "{report}"
    );
    // Greedy decoding: the same message every time, on every host holding the same file.
    assert!(
        report.contains("Sam, I'm so glad to hear that Ben will take you to the airport"),
        "{report}"
    );
}

/// Kills the child process if the test ends without stopping it.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_host_serves_peers_and_stops_cleanly_on_sigterm() {
    use std::io::BufRead;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    for data in [&a, &b, &c] {
        assert!(agora(data, &["keygen"]).status.success());
    }
    let component = dir.path().join("ride-driver.wasm");
    std::fs::write(&component, agora_host::examples::RIDE_DRIVER).unwrap();
    let out = agora(&a, &["publish", component.to_str().unwrap()]);
    let manifest = stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix("manifest  "))
        .unwrap()
        .to_string();

    let operator_trusts = "a791e324f4921a28b64ab8ce80118f3d1e8ec16c03c21c8f69543ea80e7fc337";
    let mut host = Running(
        Command::new(env!("CARGO_BIN_EXE_agora"))
            .arg("--data-dir")
            .arg(&a)
            .args(["host", "--api", "127.0.0.1:0", "--anchor", operator_trusts])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = std::io::BufReader::new(host.0.stdout.take().unwrap()).lines();
    let ticket = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("ticket ").map(str::to_owned))
        .expect("the host prints its ticket");
    let api = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("api ").map(str::to_owned))
        .expect("the host prints its API address");

    // The reputation command asks the host's API, by name or by manifest hash.
    let out = agora(&c, &["reputation", "ride-driver", "--api", &api]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = stdout(&out);
    assert!(
        report.contains(&format!("manifest     {manifest}")),
        "{report}"
    );
    assert!(report.contains("evidence     0"), "{report}");
    let out = agora(&c, &["reputation", &manifest, "--api", &api, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let answer: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(answer["manifest"], manifest.as_str());
    assert!(
        answer["anchors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k == operator_trusts),
        "the operator's anchor is used: {answer}"
    );
    let out = agora(&c, &["reputation", "taxi-meter", "--api", &api]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("lists no agent named `taxi-meter`"),
        "{}",
        stderr(&out)
    );
    let out = agora(&c, &["reputation", "ride-driver", "--api", "ftp://example"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not an API address"),
        "{}",
        stderr(&out)
    );

    let out = agora(&c, &["fetch", &manifest, "--from", &ticket]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("fetched ride-driver@1.0.0"),
        "{}",
        stdout(&out)
    );

    let payload = r#"{"trip": {"distance_m": 5000, "duration_s": 600}}"#;
    let out = agora(
        &b,
        &[
            "run",
            &manifest,
            "--action",
            "quote",
            "--payload",
            payload,
            "--from",
            &ticket,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), r#"{"fare_cents":1150}"#);

    let status = Command::new("kill")
        .arg("-TERM")
        .arg(host.0.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = host.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "the host did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
    // Nothing was lost: the host's registry and blobs are intact after the shutdown.
    let out = agora(
        &a,
        &["run", &manifest, "--action", "quote", "--payload", payload],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn two_host_processes_with_the_same_evidence_report_bit_identical_scores() {
    use agora_registry::{
        AgentRef, CallRequest, Feedback, Outcome, Receipt, Registry, SecretKey, Signed,
        request_hash,
    };
    use std::io::BufRead;

    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for data in [&a, &b] {
        assert!(agora(data, &["keygen"]).status.success());
    }
    let component = dir.path().join("ride-driver.wasm");
    std::fs::write(&component, agora_host::examples::RIDE_DRIVER).unwrap();
    let out = agora(
        &a,
        &["publish", component.to_str().unwrap(), "--price", "1000"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let key = |data: &Path| SecretKey::load(&data.join("keys/host.key")).unwrap();
    let (key_a, key_b) = (key(&a), key(&b));

    // Evidence from a third host and its callers, given to both hosts in opposite orders.
    let registry_a = Registry::open(&a.join("registry.db")).unwrap();
    let driver = registry_a.manifests().unwrap().pop().unwrap();
    let third = SecretKey::generate();
    let callers: Vec<SecretKey> = (0..5).map(|_| SecretKey::generate()).collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut prev = None;
    let mut evidence = Vec::new();
    for (seq, caller) in callers.iter().enumerate() {
        let input_hash = request_hash("quote", caller.public().to_hex().as_bytes());
        // Calls an hour apart, so that the evidence has aged differently.
        let at = now - seq as u64 * 3_600_000;
        let request = Signed::sign(
            CallRequest {
                caller: caller.public(),
                host: third.public(),
                agent: driver.hash(),
                input_hash,
                fuel_limit: 10_000_000,
                nonce: CallRequest::new_nonce(),
                expires_at_ms: at + 60_000,
            },
            caller,
        )
        .unwrap();
        let fuel_used = 1_000_000 + seq as u64 * 77_777;
        let receipt = Signed::sign(
            Receipt {
                agent: AgentRef {
                    manifest: driver.hash(),
                    component: driver.body().component.hash,
                },
                request: Some(request.hash()),
                caller: Some(caller.public()),
                input_hash,
                output_hash: None,
                outcome: Outcome::Ok,
                fuel_limit: 10_000_000,
                fuel_used,
                charge: agora_registry::rules::charge_for(fuel_used, 1000),
                wall_time_us: 1,
                nested: vec![],
                parent_call: None,
                host: third.public(),
                runtime: agora_host::RUNTIME_VERSION.into(),
                profile: None,
                environment: None,
                input_size: None,
                transcript: None,
                seq: seq as u64,
                prev,
                timestamp_ms: at,
                limits: None,
                model_usage: vec![],
                egress: None,
            },
            &third,
        )
        .unwrap();
        prev = Some(receipt.hash());
        let rating = Signed::sign(
            Feedback {
                receipt: receipt.hash(),
                rater: caller.public(),
                score: 60 + 7 * seq as u8,
                tags: vec![],
                created_at_ms: now,
            },
            caller,
        )
        .unwrap();
        evidence.push((receipt, request, rating));
    }
    for (receipt, request, rating) in &evidence {
        registry_a.insert_receipt(receipt, Some(request)).unwrap();
        registry_a.insert_feedback(rating).unwrap();
    }
    drop(registry_a);
    let registry_b = Registry::open(&b.join("registry.db")).unwrap();
    for (receipt, request, rating) in evidence.iter().rev() {
        registry_b.insert_feedback(rating).unwrap();
        registry_b.insert_receipt(receipt, Some(request)).unwrap();
    }
    registry_b.insert_manifest(&driver).unwrap();
    drop(registry_b);

    // Each host anchors the other and the callers, so both use one set of anchors.
    let start = |data: &Path, other: &SecretKey| {
        let mut args = vec![
            "host".to_owned(),
            "--api".into(),
            "127.0.0.1:0".into(),
            "--anchor".into(),
            other.public().to_hex(),
        ];
        for caller in &callers {
            args.extend(["--anchor".into(), caller.public().to_hex()]);
        }
        let mut host = Running(
            Command::new(env!("CARGO_BIN_EXE_agora"))
                .arg("--data-dir")
                .arg(data)
                .args(&args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let api = std::io::BufReader::new(host.0.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("api ").map(str::to_owned))
            .expect("the host prints its API address");
        (host, api)
    };
    let (_host_a, api_a) = start(&a, &key_b);
    let (_host_b, api_b) = start(&b, &key_a);
    let manifest = driver.hash().to_hex();
    let ask = |api: &str| -> serde_json::Value {
        let out = agora(&a, &["reputation", &manifest, "--api", api, "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str(stdout(&out).trim()).unwrap()
    };
    // Both compute at a clock read to the minute; ask again if a minute turned in between.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(150);
    let (at_a, at_b) = loop {
        let (at_a, at_b) = (ask(&api_a), ask(&api_b));
        if at_a["computed_at_ms"] == at_b["computed_at_ms"] {
            break (at_a, at_b);
        }
        assert!(std::time::Instant::now() < deadline, "{at_a} / {at_b}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert_eq!(at_a["evidence"], 5, "{at_a}");
    for field in ["quality", "uncertainty", "lower_bound", "evidence"] {
        // serde_json writes the shortest text that reads back as the same f64: equal text is
        // equal bits.
        assert_eq!(
            at_a[field].to_string(),
            at_b[field].to_string(),
            "{field}: {at_a} / {at_b}"
        );
    }
}

#[test]
fn publish_declares_egress_origins_and_a_host_refuses_secret_files_others_can_read() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(agora(&data, &["keygen"]).status.success());
    let component = dir.path().join("ride-driver.wasm");
    std::fs::write(&component, agora_host::examples::RIDE_DRIVER).unwrap();
    let component = component.to_str().unwrap();

    let out = agora(
        &data,
        &["publish", component, "--egress", "fares.example.com"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("fares.example.com"),
        "{}",
        stderr(&out)
    );
    let out = agora(
        &data,
        &["publish", component, "--egress", "https://*.example.com"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out)
            .contains("egress    https://*.example.com:443 (sent only where a host grants)"),
        "{}",
        stdout(&out)
    );

    // A credential file anyone may read is refused before the host starts, without its value.
    let credential = dir.path().join("fares.header");
    std::fs::write(&credential, "Authorization: Bearer sk-fares-0123").unwrap();
    std::fs::set_permissions(&credential, std::fs::Permissions::from_mode(0o644)).unwrap();
    let grant = format!("https://api.example.com={}", credential.display());
    let host = [
        "host",
        "--grant-egress",
        "https://api.example.com",
        "--egress-credential",
        &grant,
    ];
    let out = agora(&data, &host);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("sk-fares"), "{}", stderr(&out));
    let out = agora(
        &data,
        &["host", "--grant-egress", "https://api.example.com/v1"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no path"), "{}", stderr(&out));
}
