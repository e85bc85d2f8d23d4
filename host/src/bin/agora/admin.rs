//! The admin channel: while `agora host` runs on a data dir, the CLI's commands on that data dir
//! run inside it, so they work beside it (the blob store admits one process) and what they
//! publish is announced to its peers.
//!
//! The channel is a Unix socket in the data dir, `admin.sock`, mode 0600 in a 0700 directory:
//! only the data dir's owner can use it, as only they can read its key. One connection carries
//! one command: a JSON line with an [`AdminCommand`], answered by a JSON line with what the
//! command printed ([`Printed`]). A second `agora host` on the data dir finds the socket
//! answering and is refused; a socket left by a host that died answers nothing and is replaced.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agora_host::DataDir;
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::commands::{Printed, Work};

/// The socket's name in the data dir.
const SOCKET: &str = "admin.sock";
/// Longest command line read: a command names files by path, so it is small.
const MAX_COMMAND_BYTES: usize = 64 << 10;
/// Longest the CLI waits for a running host to take a connection before deciding there is none.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A CLI command, as the running host executes it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AdminCommand {
    /// `agora publish`, the component named by an absolute path.
    Publish(crate::commands::PublishSpec),
    /// `agora agents`.
    Agents {
        /// As JSON lines.
        json: bool,
    },
    /// `agora run`.
    Run(crate::commands::RunSpec),
    /// `agora receipts`.
    Receipts {
        /// Only about this agent.
        agent: Option<String>,
        /// At most this many.
        limit: usize,
        /// As JSON lines.
        json: bool,
    },
    /// `agora fetch`.
    Fetch {
        /// The manifest.
        manifest: agora_registry::Hash,
        /// Peer tickets.
        from: Vec<String>,
    },
}

fn socket_path(data_dir: &DataDir) -> PathBuf {
    data_dir.root().join(SOCKET)
}

/// A connection to the host running on `data_dir`, if one is.
pub(crate) async fn connect(data_dir: &DataDir) -> Option<UnixStream> {
    let path = socket_path(data_dir);
    if !path.exists() {
        return None;
    }
    tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(&path))
        .await
        .ok()?
        .ok()
}

/// Sends `command` to the running host and returns what it printed.
pub(crate) async fn send(stream: UnixStream, command: &AdminCommand) -> anyhow::Result<Printed> {
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(command)?;
    line.push(b'\n');
    write
        .write_all(&line)
        .await
        .context("sending the command to the running host")?;
    let mut answer = String::new();
    BufReader::new(read)
        .read_line(&mut answer)
        .await
        .context("reading the running host's answer")?;
    if answer.is_empty() {
        bail!("the running host closed the admin channel without answering");
    }
    let answer: Result<Printed, String> =
        serde_json::from_str(&answer).context("the running host's answer")?;
    answer.map_err(|e| anyhow::anyhow!(e))
}

/// The admin socket of a running host; removed when dropped.
pub(crate) struct AdminServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Claims `data_dir` for this host: refuses if another host runs on it, and otherwise makes
/// sure no stale socket is left. Call before opening the data dir.
pub(crate) async fn claim(data_dir: &DataDir) -> anyhow::Result<()> {
    if connect(data_dir).await.is_some() {
        bail!(
            "a host is already running on {}; stop it first, or give this one its own \
             --data-dir (the CLI's commands on this data dir go through the running host)",
            data_dir.root().display()
        );
    }
    let path = socket_path(data_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "removed the admin socket of a host that is gone")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    Ok(())
}

/// Serves the CLI's commands on the admin socket with `work` (the running host's node and
/// network) until dropped.
pub(crate) fn serve(data_dir: &DataDir, work: Work) -> anyhow::Result<AdminServer> {
    let path = socket_path(data_dir);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    restrict(&path)?;
    let task = tokio::spawn(async move {
        let work = std::sync::Arc::new(work);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let work = work.clone();
            tokio::spawn(async move {
                if let Err(error) = answer(stream, &work).await {
                    tracing::warn!(%error, "admin channel");
                }
            });
        }
    });
    Ok(AdminServer { path, task })
}

/// Only the owner may connect (the data dir is 0700 too).
fn restrict(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {} to its owner", path.display()))?;
    }
    Ok(())
}

async fn answer(stream: UnixStream, work: &Work) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut read = BufReader::new(read).take(MAX_COMMAND_BYTES as u64);
    read.read_until(b'\n', &mut line).await?;
    let answer: Result<Printed, String> = match serde_json::from_slice::<AdminCommand>(&line) {
        Ok(command) => {
            tracing::info!(?command, "command from the admin channel");
            work.execute(command).await.map_err(|e| format!("{e:#}"))
        }
        Err(e) => Err(format!("not a command: {e}")),
    };
    let mut bytes = serde_json::to_vec(&answer)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    Ok(())
}
