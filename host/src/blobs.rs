//! Content-addressed storage for components and manifests.
//!
//! This is an iroh-blobs filesystem store, so the same blobs can be served to and fetched from
//! peers over iroh with BLAKE3-verified streaming, without a migration.

use std::path::{Path, PathBuf};

use agora_registry::Hash;
use bytes::Bytes;
use iroh_blobs::store::fs::FsStore;

/// A blob store failure.
#[derive(Debug, thiserror::Error)]
#[error("blob store {}: {message}", path.display())]
pub struct BlobError {
    path: PathBuf,
    message: String,
}

/// The host's blob store.
#[derive(Debug, Clone)]
pub struct BlobStore {
    store: FsStore,
    path: PathBuf,
}

impl BlobStore {
    /// Opens (creating if needed) the store in `dir`.
    pub async fn open(dir: &Path) -> Result<Self, BlobError> {
        let store = FsStore::load(dir).await.map_err(|e| BlobError {
            path: dir.to_owned(),
            message: format!("{e:#}"),
        })?;
        Ok(BlobStore {
            store,
            path: dir.to_owned(),
        })
    }

    fn error(&self, e: impl std::fmt::Display) -> BlobError {
        BlobError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Stores `data` under its BLAKE3 hash and returns the hash.
    pub async fn put(&self, data: impl Into<Bytes>) -> Result<Hash, BlobError> {
        let tag = self
            .store
            .add_bytes(data)
            .await
            .map_err(|e| self.error(e))?;
        Ok(Hash::from_bytes(*tag.hash.as_bytes()))
    }

    /// Whether the complete blob is present.
    pub async fn has(&self, hash: &Hash) -> Result<bool, BlobError> {
        self.store
            .has(iroh_blobs::Hash::from_bytes(*hash.as_bytes()))
            .await
            .map_err(|e| self.error(e))
    }

    /// The blob's bytes, or `None` if it is not (completely) present.
    pub async fn get(&self, hash: &Hash) -> Result<Option<Bytes>, BlobError> {
        if !self.has(hash).await? {
            return Ok(None);
        }
        let bytes = self
            .store
            .get_bytes(iroh_blobs::Hash::from_bytes(*hash.as_bytes()))
            .await
            .map_err(|e| self.error(e))?;
        Ok(Some(bytes))
    }

    /// The underlying iroh-blobs store, for serving and fetching over iroh.
    pub fn iroh_store(&self) -> &FsStore {
        &self.store
    }

    /// Flushes and closes the store.
    pub async fn shutdown(&self) -> Result<(), BlobError> {
        self.store.shutdown().await.map_err(|e| self.error(e))
    }
}
