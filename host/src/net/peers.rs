//! Peers remembered across restarts, so that a restarted host rejoins the marketplace without
//! being given a ticket again, and the peers it rejoins learn its new address from it.
//!
//! Every gossip neighbour this host has had, with the addresses it was reached at, is kept in
//! `peers.json` in the data dir (the newest [`MAX_REMEMBERED`], mode 0600, written whole and
//! renamed into place so a crash never leaves half a file). At start the host dials them all
//! with the peers it was given; while it has no neighbour it tries them again every
//! [`REJOIN_INTERVAL`]. A file that cannot be read is logged and started afresh: it is a cache,
//! never the only copy of anything.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use iroh::{EndpointAddr, EndpointId, TransportAddr};
use serde::{Deserialize, Serialize};

/// Most peers remembered; the longest unseen are forgotten first.
pub const MAX_REMEMBERED: usize = 64;
/// How often a host with no gossip neighbour tries its remembered peers again.
pub const REJOIN_INTERVAL: Duration = Duration::from_secs(10);

/// One remembered peer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Remembered {
    /// Its endpoint id (its key), hex.
    id: String,
    /// Where it was reached.
    addrs: Vec<SocketAddr>,
}

/// The peers a host remembers, newest first.
#[derive(Debug)]
pub(crate) struct PeerBook {
    path: PathBuf,
    peers: Mutex<Vec<Remembered>>,
}

impl PeerBook {
    /// The book kept at `path`; empty if there is none yet or it cannot be read.
    pub(crate) fn load(path: &Path) -> PeerBook {
        let peers = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice::<Vec<Remembered>>(&bytes).unwrap_or_else(|error| {
                tracing::warn!(path = %path.display(), %error, "remembered peers unreadable; starting afresh");
                Vec::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "remembered peers unreadable; starting afresh");
                Vec::new()
            }
        };
        PeerBook {
            path: path.to_owned(),
            peers: Mutex::new(peers),
        }
    }

    /// The remembered peers' addresses, newest first; entries that do not parse are skipped.
    pub(crate) fn addrs(&self) -> Vec<EndpointAddr> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .iter()
            .filter_map(|peer| {
                let id: EndpointId = peer.id.parse().ok()?;
                Some(EndpointAddr::from_parts(
                    id,
                    peer.addrs.iter().copied().map(TransportAddr::Ip),
                ))
            })
            .collect()
    }

    /// How many peers are remembered.
    pub(crate) fn len(&self) -> usize {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Remembers `peer` at its direct addresses (relay addresses change, and are not kept) as
    /// the newest, and writes the book. A peer with no direct address is not remembered.
    pub(crate) fn remember(&self, peer: &EndpointAddr) {
        let addrs: BTreeSet<SocketAddr> = peer.ip_addrs().copied().collect();
        if addrs.is_empty() {
            return;
        }
        let entry = Remembered {
            id: peer.id.to_string(),
            addrs: addrs.into_iter().collect(),
        };
        let snapshot = {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            peers.retain(|known| known.id != entry.id);
            peers.insert(0, entry);
            peers.truncate(MAX_REMEMBERED);
            peers.clone()
        };
        if let Err(error) = write_private(&self.path, &snapshot) {
            tracing::warn!(path = %self.path.display(), %error, "could not remember peers");
        }
    }
}

/// Writes `peers` to a temporary file beside `path` (mode 0600) and renames it into place.
fn write_private(path: &Path, peers: &[Remembered]) -> std::io::Result<()> {
    use std::io::Write as _;
    let bytes = serde_json::to_vec_pretty(peers).map_err(std::io::Error::other)?;
    let temporary = path.with_extension("json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> EndpointAddr {
        let id = iroh::SecretKey::generate().public();
        EndpointAddr::from_parts(id, [TransportAddr::Ip(([127, 0, 0, 1], port).into())])
    }

    #[test]
    fn peers_survive_a_reload_newest_first_with_their_latest_address() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.json");
        let book = PeerBook::load(&path);
        let (a, b) = (peer(1000), peer(2000));
        book.remember(&a);
        book.remember(&b);
        let moved =
            EndpointAddr::from_parts(a.id, [TransportAddr::Ip(([127, 0, 0, 1], 3000).into())]);
        book.remember(&moved);
        let reloaded = PeerBook::load(&path).addrs();
        assert_eq!(reloaded, vec![moved, b]);
    }

    #[test]
    fn the_book_is_bounded_and_a_corrupt_file_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.json");
        let book = PeerBook::load(&path);
        for port in 0..(MAX_REMEMBERED as u16 + 10) {
            book.remember(&peer(port + 1));
        }
        assert_eq!(PeerBook::load(&path).len(), MAX_REMEMBERED);
        std::fs::write(&path, b"{ not json").unwrap();
        assert_eq!(PeerBook::load(&path).len(), 0);
    }
}
