//! The compiled-code cache on disk: components this host compiled, so a restart never compiles
//! them again.
//!
//! `Component::deserialize` runs whatever machine code it is given, so an entry is only loaded
//! after its tag checks out: a BLAKE3 keyed hash, under a key derived from the host's secret key,
//! of the engine key, the component's hash and the compiled bytes. Only this host can make a valid
//! tag, so a file copied from elsewhere, truncated, corrupted or made by another engine
//! configuration is a miss: it is deleted and the component compiled again.
//!
//! Layout: `<dir>/<engine key, 16 hex>/<component hash>.cwasm`, each file the 8-byte magic, the
//! 32-byte tag, then wasmtime's serialized component. Entries are written to a temporary file
//! and renamed into place, so a crash leaves no partial entry under the final name (and a torn one
//! would fail its tag anyway). Past the size cap the least recently used entries (by mtime, which
//! a hit refreshes) are deleted, including those of engine configurations no longer in use.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use agora_registry::Hash;

const MAGIC: &[u8; 8] = b"agoracw1";
const TAG_BYTES: usize = 32;
const HEADER_BYTES: usize = MAGIC.len() + TAG_BYTES;

/// An entry read from the cache whose tag verified: the compiled bytes, still behind the
/// header they were read with (a component's code is tens of megabytes; moving it to drop the
/// header cost a start-up as much as hashing it).
pub struct Entry {
    bytes: Vec<u8>,
}

impl AsRef<[u8]> for Entry {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[HEADER_BYTES..]
    }
}

/// Counters of what the cache did since the host started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Entries found, authenticated and loaded.
    pub hits: u64,
    /// Lookups with no entry.
    pub misses: u64,
    /// Entries found but refused (bad tag, truncated, wrong engine) and deleted.
    pub rejected: u64,
    /// Entries written.
    pub stored: u64,
    /// Entries deleted to stay under the size cap.
    pub evicted: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    rejected: AtomicU64,
    stored: AtomicU64,
    evicted: AtomicU64,
}

/// Where compiled code is kept, and the key that authenticates it.
pub struct CompiledCache {
    root: PathBuf,
    engine_dir: PathBuf,
    engine_key: [u8; 32],
    tag_key: [u8; 32],
    max_bytes: u64,
    counters: Counters,
}

impl std::fmt::Debug for CompiledCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The tag key is a secret.
        f.debug_struct("CompiledCache")
            .field("root", &self.root)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl CompiledCache {
    /// The cache in `root` for an engine with `engine_key`, authenticated with a key derived from
    /// `host_secret`. Creates the directory (mode 0700).
    pub fn open(
        root: &Path,
        host_secret: &[u8; 32],
        engine_key: [u8; 32],
        max_bytes: u64,
    ) -> std::io::Result<Self> {
        let engine_dir = root.join(&Hash::from_bytes(engine_key).to_hex()[..16]);
        create_private_dir(&engine_dir)?;
        Ok(CompiledCache {
            root: root.to_owned(),
            engine_dir,
            engine_key,
            tag_key: blake3::derive_key("agora 2026-12 compiled-code cache tag", host_secret),
            max_bytes,
            counters: Counters::default(),
        })
    }

    /// What the cache did so far.
    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            stored: c.stored.load(Ordering::Relaxed),
            evicted: c.evicted.load(Ordering::Relaxed),
        }
    }

    fn entry_path(&self, component: &Hash) -> PathBuf {
        self.engine_dir
            .join(format!("{}.cwasm", component.to_hex()))
    }

    fn tag(&self, component: &Hash, artifact: &[u8]) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new_keyed(&self.tag_key);
        hasher.update(&self.engine_key);
        hasher.update(component.as_bytes());
        hasher.update(artifact);
        hasher.finalize()
    }

    /// The compiled bytes of `component`, if this host stored them and they are intact. Anything
    /// else found under its name is deleted.
    pub fn load(&self, component: &Hash) -> Option<Entry> {
        let path = self.entry_path(component);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) => {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), %error, "cannot read a compiled-code cache entry");
                }
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let authentic = bytes.len() >= HEADER_BYTES
            && bytes[..MAGIC.len()] == MAGIC[..]
            // blake3::Hash compares in constant time.
            && blake3::Hash::from_slice(&bytes[MAGIC.len()..HEADER_BYTES])
                .is_ok_and(|tag| tag == self.tag(component, &bytes[HEADER_BYTES..]));
        if !authentic {
            self.reject(&path, "its tag does not verify");
            return None;
        }
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        // Least recently used is judged by mtime; failing to refresh it only makes eviction
        // less accurate.
        let _ = std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now()));
        Some(Entry { bytes })
    }

    /// Deletes an entry that failed to load and counts it.
    pub fn reject(&self, path_or_component: impl AsRef<Path>, why: &str) {
        let path = path_or_component.as_ref();
        tracing::warn!(path = %path.display(), why, "refusing a compiled-code cache entry; compiling again");
        self.counters.rejected.fetch_add(1, Ordering::Relaxed);
        let _ = std::fs::remove_file(path);
    }

    /// Deletes `component`'s entry after wasmtime refused it.
    pub fn reject_component(&self, component: &Hash, why: &str) {
        self.reject(self.entry_path(component), why);
    }

    /// Stores `artifact` as `component`'s compiled code, then evicts past the size cap. Failures
    /// are logged: the cache is an optimisation, never a reason for a call to fail.
    pub fn store(&self, component: &Hash, artifact: &[u8]) {
        if self.max_bytes == 0 {
            return;
        }
        let path = self.entry_path(component);
        let written = (|| -> std::io::Result<()> {
            let mut file = tempfile::NamedTempFile::new_in(&self.engine_dir)?;
            use std::io::Write as _;
            file.write_all(MAGIC)?;
            file.write_all(self.tag(component, artifact).as_bytes())?;
            file.write_all(artifact)?;
            file.persist(&path).map_err(|e| e.error)?;
            Ok(())
        })();
        match written {
            Ok(()) => {
                self.counters.stored.fetch_add(1, Ordering::Relaxed);
                self.evict();
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot write a compiled-code cache entry")
            }
        }
    }

    /// Deletes least recently used entries, of any engine configuration, until the cache is
    /// within its cap.
    fn evict(&self) {
        let mut entries = Vec::new();
        let Ok(engines) = std::fs::read_dir(&self.root) else {
            return;
        };
        for engine in engines.flatten() {
            let Ok(files) = std::fs::read_dir(engine.path()) else {
                continue;
            };
            for file in files.flatten() {
                if let Ok(meta) = file.metadata()
                    && meta.is_file()
                {
                    let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    entries.push((used, meta.len(), file.path()));
                }
            }
        }
        let mut total: u64 = entries.iter().map(|(_, size, _)| size).sum();
        if total <= self.max_bytes {
            return;
        }
        entries.sort();
        for (_, size, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total = total.saturating_sub(size);
                self.counters.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(path)
}
