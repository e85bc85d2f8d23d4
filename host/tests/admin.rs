//! One data dir, one running host, and the CLI acts through it: with `agora host` running, the
//! CLI's commands on its data dir run in it over the admin socket (publish, agents, run,
//! receipts), what is published that way reaches the host's peers, a second host on the data
//! dir is refused, and a socket left by a killed host does not stand in the way.

mod common;

use std::time::{Duration, Instant};

use agora_host::client::ApiClient;
use agora_host::examples;
use agora_registry::Hash;
use common::{agora, agora_output, start_host};

const QUOTE: &str = r#"{"trip": {"distance_m": 4000, "duration_s": 660}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_a_host_runs_the_cli_acts_through_it_and_its_publishes_reach_peers() {
    let dir = tempfile::tempdir().unwrap();
    let (data, peer_data) = (dir.path().join("host"), dir.path().join("peer"));
    agora(&data, &["keygen"]);
    agora(&peer_data, &["keygen"]);
    let component = dir.path().join("ride-driver.wasm");
    std::fs::write(&component, examples::RIDE_DRIVER).unwrap();
    let running = start_host(&data, &[]);
    let peer = start_host(&peer_data, &["--peer", &running.ticket]);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(data.join("admin.sock"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "only the data dir's owner may use the admin socket"
        );
    }

    // The blob store admits one process: these only work because they run in the host.
    let published = agora_output(&data, &["publish", component.to_str().unwrap()]);
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let started = Instant::now();
    assert!(String::from_utf8_lossy(&published.stderr).contains("announced to this host's peers"));
    let manifest: Hash = String::from_utf8_lossy(&published.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("manifest  "))
        .unwrap()
        .parse()
        .unwrap();
    // The peer learns of the release from the running host's announcement.
    let peer_api = ApiClient::new(&peer.api).unwrap();
    let path = format!("/v1/agents/{manifest}");
    while peer_api.get_json(&path).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the peer never learned of the release published through the running host"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "a release published through a running host reached its peer in {:?}",
        started.elapsed()
    );

    assert!(agora(&data, &["agents"]).contains("ride-driver"));
    let output = agora(&data, &["run", "ride-driver", "-a", "quote", "-p", QUOTE]);
    let fare: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert!(fare["fare_cents"].as_u64().unwrap() > 0);
    assert!(agora(&data, &["receipts"]).contains("ride-driver@"));

    // A second host on the data dir is refused, saying why.
    let second = agora_output(&data, &["host"]);
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("a host is already running on"), "{stderr}");
}

#[test]
fn a_host_killed_with_its_socket_left_behind_does_not_block_the_cli_or_the_next_host() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("host");
    agora(&data, &["keygen"]);
    let component = dir.path().join("ride-driver.wasm");
    std::fs::write(&component, examples::RIDE_DRIVER).unwrap();
    agora(&data, &["publish", component.to_str().unwrap()]);

    let mut killed = start_host(&data, &[]);
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    assert!(
        data.join("admin.sock").exists(),
        "SIGKILL leaves the socket"
    );

    // Nothing answers on it: the CLI opens the data dir itself, and a new host takes over.
    assert!(agora(&data, &["agents"]).contains("ride-driver"));
    let _next = start_host(&data, &[]);
    assert!(agora(&data, &["agents"]).contains("ride-driver"));
}
