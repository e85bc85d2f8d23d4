//! Files that hold secrets an operator hands the host (a model server's key, a credential for an
//! egress origin): read only if no one but their owner can read them.

use std::path::Path;

use anyhow::{Context, bail};

/// The first line of a secret file that only its owner may read.
pub(crate) fn read(path: &Path) -> anyhow::Result<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "{} holds a secret but is readable by others (mode {:o}); `chmod 600` it",
                path.display(),
                mode & 0o777
            );
        }
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}
