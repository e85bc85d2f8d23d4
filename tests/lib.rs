//! Test harness for agora's system tests: real hosts in temporary data dirs, running real
//! components built from `guest-examples/` and from the hostile guests in `tests/guests/`.

use agora_host::{DataDir, Limits, Node, NodeConfig, PublishOptions};
use agora_registry::SignedManifest;

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// A host in its own temporary data dir, removed when dropped.
pub struct TestHost {
    /// The host.
    pub node: Node,
    /// Keeps the data dir alive.
    pub dir: tempfile::TempDir,
}

impl TestHost {
    /// A host with default limits.
    pub async fn new() -> Self {
        Self::with_limits(Limits::default()).await
    }

    /// A host with the given limits.
    pub async fn with_limits(limits: Limits) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = DataDir::new(dir.path());
        data_dir.keygen().expect("keygen");
        let node = Node::open(NodeConfig::new(data_dir).limits(limits))
            .await
            .expect("open node");
        TestHost { node, dir }
    }

    /// Publishes `component` with default options.
    pub async fn publish(&self, component: &[u8]) -> SignedManifest {
        self.node
            .publish(component, PublishOptions::default())
            .await
            .expect("publish")
            .manifest
    }

    /// Publishes `component` under `name`.
    pub async fn publish_as(&self, component: &[u8], name: &str) -> SignedManifest {
        self.node
            .publish(
                component,
                PublishOptions {
                    name: Some(name.into()),
                    ..PublishOptions::default()
                },
            )
            .await
            .expect("publish")
            .manifest
    }
}
