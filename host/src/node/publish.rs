//! Publishing: checking a component, signing a manifest for it and storing both.

use std::path::Path;

use agora_registry::{
    AGENT_WORLD, ComponentRef, Hash, Inserted, Manifest, ManifestLimits, Signed, SignedManifest,
};

use crate::error::PublishError;

use super::{Node, unix_now};

/// What to put in a manifest besides what the component itself says.
#[derive(Clone, Debug, Default)]
pub struct PublishOptions {
    /// Agent name; defaults to the name from `info()`.
    pub name: Option<String>,
    /// Version; defaults to the version from `info()`.
    pub version: Option<String>,
    /// Description; defaults to the one from `info()`.
    pub description: Option<String>,
    /// Limits; default to this host's.
    pub limits: Option<ManifestLimits>,
    /// Price per million fuel.
    pub price_per_mfuel: u64,
    /// The language models the agent calls, with its tokens per call on each. Required (at
    /// least one) for a component that imports `agora:agent/model`.
    pub models: Vec<agora_registry::ModelDeclaration>,
    /// The origins the agent sends outbound HTTP requests to (`https://api.example.com`,
    /// `https://*.example.com:8443`); written into the manifest in their canonical form. A host
    /// sends an agent's request only to an origin declared here that its operator grants.
    pub egress: Vec<String>,
}

/// The result of publishing.
#[derive(Clone, Debug)]
pub struct Published {
    /// The signed manifest.
    pub manifest: SignedManifest,
    /// Whether the release is new (or the same release was already published).
    pub inserted: Inserted,
}

impl Node {
    /// Publishes the component in `path`; see [`Node::publish`].
    pub async fn publish_file(
        &self,
        path: &Path,
        options: PublishOptions,
    ) -> Result<Published, PublishError> {
        let limit = self.0.sandbox.limits().max_component_bytes;
        let size = std::fs::metadata(path)
            .map_err(|source| PublishError::Read {
                path: path.to_owned(),
                source,
            })?
            .len();
        if size > limit {
            return Err(crate::error::CheckError::TooLarge { size, limit }.into());
        }
        let bytes = std::fs::read(path).map_err(|source| PublishError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.publish(&bytes, options).await
    }

    /// Checks a component, signs a manifest for it with this node's key, and stores both.
    pub async fn publish(
        &self,
        component: &[u8],
        options: PublishOptions,
    ) -> Result<Published, PublishError> {
        let hash = Hash::of(component);
        let checked = self.check_hashed(hash, component.to_vec()).await?;
        let imports_model =
            (checked.capabilities.iter()).any(|c| c == crate::sandbox::MODEL_CAPABILITY);
        if imports_model && options.models.is_empty() {
            return Err(PublishError::UndeclaredModels);
        }
        let egress = (options.egress.iter())
            .map(|origin| {
                (origin.parse::<agora_registry::egress::OriginPattern>())
                    .map(|pattern| pattern.to_string())
                    .map_err(|e| PublishError::InvalidManifest(format!("egress {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let info = self.0.sandbox.info(&checked).await?;
        let limits = options
            .limits
            .unwrap_or_else(|| self.0.sandbox.limits().manifest_defaults());
        let manifest = Manifest {
            name: options.name.unwrap_or(info.name),
            version: options.version.unwrap_or(info.version),
            publisher: self.public_key(),
            component: ComponentRef {
                hash,
                size: component.len() as u64,
            },
            world: AGENT_WORLD.into(),
            actions: info.actions,
            capabilities: checked.capabilities.clone(),
            limits,
            price_per_mfuel: options.price_per_mfuel,
            description: options.description.unwrap_or(info.description),
            created_at: unix_now().as_secs(),
            models: options.models,
            egress,
        };
        // `info()` is untrusted output and options come from the operator: the same rules
        // every peer applies to a manifest it receives.
        manifest
            .check(unix_now().as_millis() as u64)
            .map_err(|e| match e {
                agora_registry::Error::Invalid { reason, .. } => {
                    PublishError::InvalidManifest(reason)
                }
                other => PublishError::Registry(other),
            })?;
        // Re-publishing a release returns it; a release is never signed twice, since two
        // manifests for one release are evidence against their publisher.
        if let Some(existing) =
            self.0
                .registry
                .release(&manifest.publisher, &manifest.name, &manifest.version)?
        {
            if existing.body().component.hash != hash {
                return Err(PublishError::Registry(
                    agora_registry::Error::ReleaseConflict {
                        name: manifest.name,
                        version: manifest.version,
                        publisher: manifest.publisher,
                        existing: existing.hash().to_hex(),
                    },
                ));
            }
            return Ok(Published {
                manifest: existing,
                inserted: Inserted::AlreadyPresent,
            });
        }
        let manifest = Signed::sign(manifest, &self.0.key)?;
        // Blobs first: a manifest in the registry must always have its component available.
        let stored = self
            .0
            .blobs
            .put(component.to_vec())
            .await
            .map_err(|e| PublishError::Blobs(e.to_string()))?;
        debug_assert_eq!(stored, hash);
        let inserted = self.0.registry.insert_manifest(&manifest)?;
        let manifest = match inserted {
            Inserted::New => {
                self.0
                    .blobs
                    .put(manifest.as_bytes().to_vec())
                    .await
                    .map_err(|e| PublishError::Blobs(e.to_string()))?;
                manifest
            }
            // Another process published the same manifest meanwhile.
            Inserted::AlreadyPresent | Inserted::Pending => manifest,
        };
        tracing::info!(
            agent = %manifest.body().name,
            version = %manifest.body().version,
            manifest = %manifest.hash(),
            component = %hash,
            "published"
        );
        Ok(Published { manifest, inserted })
    }
}
