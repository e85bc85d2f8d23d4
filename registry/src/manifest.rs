//! Agent manifests: a publisher's signed statement of what an agent is.

use serde::{Deserialize, Serialize};

use crate::Hash;
use crate::identity::PublicKey;
use crate::signed::{Record, Signed};

/// The WIT world every manifest currently targets.
pub const AGENT_WORLD: &str = "agora:agent/agent@0.1.0";

/// A release of an agent. Signed by its publisher; identified by the hash of the signed bytes.
///
/// A release is immutable: a publisher cannot publish a different component under a name and
/// version it has already used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The agent's name, lowercase kebab-case (`ride-driver`).
    pub name: String,
    /// The release version, e.g. semver (`1.2.0`).
    pub version: String,
    /// The key that signs this manifest.
    pub publisher: PublicKey,
    /// The code: a component named by its content hash.
    pub component: ComponentRef,
    /// The WIT world the component targets, e.g. [`AGENT_WORLD`].
    pub world: String,
    /// The actions the agent listed from `info()` when it was published.
    pub actions: Vec<String>,
    /// Interfaces that carry authority (sockets, filesystem, outgoing HTTP) that the component
    /// imports. A host denies them unless it grants the capability, and may refuse to run an
    /// agent that asks for what it will not grant.
    pub capabilities: Vec<String>,
    /// The most one call may use.
    pub limits: ManifestLimits,
    /// Price per million units of fuel, in the marketplace's smallest unit.
    pub price_per_mfuel: u64,
    /// What the agent does, for people.
    pub description: String,
    /// When the publisher signed the manifest, in seconds since the Unix epoch.
    pub created_at: u64,
    /// The language models the agent calls through `agora:agent/model`, each with its token
    /// budget per call. An agent importing that interface must declare at least one; a host
    /// answers `not-offered` for any model not declared here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<crate::ModelDeclaration>,
    /// The origins the agent sends outbound HTTP requests to, as
    /// [`OriginPattern`](crate::egress::OriginPattern)s (`https://api.example.com`,
    /// `https://*.example.com:8443`). A host sends a request only to an origin declared here that
    /// its operator grants; every other request is denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<String>,
}

/// A component named by its content hash, with its size so that a fetcher can refuse an
/// oversized blob before downloading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentRef {
    /// BLAKE3 of the component bytes.
    pub hash: Hash,
    /// Size in bytes.
    pub size: u64,
}

/// Per-call ceilings a publisher promises its agent stays under. A host applies the lower of
/// these and its own limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestLimits {
    /// Fuel per call.
    pub max_fuel: u64,
    /// Bytes of linear memory, all memories of the instance together.
    pub max_memory_bytes: u64,
    /// Wall-clock milliseconds per call.
    pub max_wall_ms: u64,
    /// Bytes of output per call.
    pub max_output_bytes: u64,
}

impl Record for Manifest {
    const TAG: &'static str = "agora/manifest/v1";
    const KIND: &'static str = "manifest";

    fn signer(&self) -> &PublicKey {
        &self.publisher
    }
}

/// A manifest with a verified publisher signature.
pub type SignedManifest = Signed<Manifest>;
