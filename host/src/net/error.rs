//! Why networking failed: typed errors that name the peer and the hash.

use std::net::SocketAddr;

use agora_registry::Hash;

/// A network failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The endpoint could not start.
    #[error("starting the iroh endpoint on {bind}: {message}")]
    Bind {
        /// The address.
        bind: SocketAddr,
        /// What failed.
        message: String,
    },
    /// Joining the marketplace gossip failed.
    #[error("joining the marketplace gossip: {0}")]
    Gossip(String),
    /// Catching up on a peer's evidence failed.
    #[error("catching up on the evidence of peer {peer}: {reason}")]
    CatchUp {
        /// The peer.
        peer: String,
        /// What failed.
        reason: String,
    },
    /// A peer address that does not parse.
    #[error("`{input}` is not a peer ticket")]
    BadTicket {
        /// The input (truncated).
        input: String,
    },
}

/// Why fetching an agent failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// No peers were given.
    #[error("no peers to fetch {hash} from")]
    NoPeers {
        /// The manifest hash.
        hash: Hash,
    },
    /// Every peer failed; each attempt says why.
    #[error("{hash} not found on any of {} peers:{}", attempts.len(), attempts.iter().map(|a| format!("\n  {a}")).collect::<String>())]
    NotFound {
        /// The manifest hash.
        hash: Hash,
        /// Why each peer failed, in the order tried.
        attempts: Vec<PeerFailure>,
    },
    /// The manifest is fine but names a component larger than this host accepts; nothing was
    /// downloaded.
    #[error("agent {agent} has a {size}-byte component; this host accepts at most {limit}")]
    TooLarge {
        /// The agent.
        agent: String,
        /// Its component size.
        size: u64,
        /// This host's limit.
        limit: u64,
    },
    /// Storing the verified blobs or manifest failed.
    #[error("storing {hash}: {message}")]
    Store {
        /// What was being stored.
        hash: Hash,
        /// What failed.
        message: String,
    },
}

/// One peer's failure during a fetch.
#[derive(Debug, Clone)]
pub struct PeerFailure {
    /// The peer.
    pub peer: iroh::EndpointId,
    /// The hash being fetched when it failed.
    pub hash: Hash,
    /// What went wrong.
    pub reason: String,
}

impl std::fmt::Display for PeerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "peer {}: {} ({})",
            self.peer.fmt_short(),
            self.reason,
            self.hash.short()
        )
    }
}
