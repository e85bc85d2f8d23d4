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

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// A request signed by `caller` for `host` to run `action` with `payload` on `agent`, valid for
/// a minute.
pub fn sign_request(
    caller: &agora_registry::SecretKey,
    host: agora_registry::PublicKey,
    agent: agora_registry::Hash,
    action: &str,
    payload: &[u8],
) -> agora_registry::SignedRequest {
    agora_registry::Signed::sign(
        agora_registry::CallRequest {
            caller: caller.public(),
            host,
            agent,
            input_hash: agora_registry::request_hash(action, payload),
            fuel_limit: 50_000_000,
            nonce: agora_registry::CallRequest::new_nonce(),
            expires_at_ms: now_ms() + 60_000,
        },
        caller,
    )
    .expect("sign request")
}

/// Feedback signed by `rater` giving `receipt` a `score`.
pub fn sign_feedback(
    rater: &agora_registry::SecretKey,
    receipt: &agora_registry::SignedReceipt,
    score: u8,
) -> agora_registry::SignedFeedback {
    agora_registry::Signed::sign(
        agora_registry::Feedback {
            receipt: receipt.hash(),
            rater: rater.public(),
            score,
            tags: vec![],
            created_at_ms: now_ms(),
        },
        rater,
    )
    .expect("sign feedback")
}
