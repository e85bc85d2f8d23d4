//! The envelope every signed record travels in.
//!
//! A record is encoded as compact JSON with fields in declaration order, which is deterministic
//! for the types in this crate (no maps, no floats). The signature covers
//! `tag ‖ 0x00 ‖ body`, where the tag names the record type and version (`agora/manifest/v1`),
//! and the record's identity is the BLAKE3 hash of the whole envelope. Parsing accepts only the
//! canonical encoding, so one record has exactly one byte string and one hash, and any changed
//! byte is caught: it breaks the JSON, the canonical form or the signature.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::identity::{PublicKey, SecretKey, domain_separated};
use crate::nonces::NoncePool;
use crate::{Error, Hash};

/// A record type that travels signed.
pub trait Record: Serialize + DeserializeOwned {
    /// The domain-separation tag of the record type's newest version, e.g. `agora/manifest/v1`.
    const TAG: &'static str;
    /// What the record is called in error messages.
    const KIND: &'static str;
    /// The key that must have signed this record (the publisher of a manifest, the host of a receipt).
    fn signer(&self) -> &PublicKey;
    /// The tag this record is signed under: [`Record::TAG`] unless the type keeps an older
    /// version readable, whose bodies (told apart by what they carry) keep their older tag. A
    /// record arriving under any other tag is refused, so a body can never be read as a version
    /// its signer did not sign.
    fn tag(&self) -> &'static str {
        Self::TAG
    }
}

/// A record together with a verified signature by the key the record names.
///
/// The only ways to get one are [`Signed::sign`] and [`Signed::from_bytes`], so holding a
/// `Signed<T>` means the signature has been checked.
#[derive(Clone, Debug)]
pub struct Signed<T> {
    body: T,
    signature: [u8; 64],
    bytes: Vec<u8>,
    hash: Hash,
}

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    tag: &'a str,
    body: &'a T,
    signature: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeIn<T> {
    tag: String,
    body: T,
    signature: String,
}

impl<T: Record> Signed<T> {
    /// Signs `body` with `key`, which must be the key the body names as its signer.
    pub fn sign(body: T, key: &SecretKey) -> Result<Self, Error> {
        Self::sign_by(body, key.public(), |message| key.sign_raw(message))
    }

    /// Signs `body` with the pool's key and one of its precomputed nonces (see [`NoncePool`]).
    pub(crate) fn sign_with_pool(body: T, pool: &NoncePool) -> Result<Self, Error> {
        Self::sign_by(body, pool.public(), |message| pool.sign(message))
    }

    fn sign_by(
        body: T,
        signer: PublicKey,
        sign: impl FnOnce(&[u8]) -> [u8; 64],
    ) -> Result<Self, Error> {
        if signer != *body.signer() {
            return Err(Error::WrongSigner {
                kind: T::KIND,
                expected: *body.signer(),
                found: signer,
            });
        }
        let tag = body.tag();
        let body_bytes = canonical(&body, T::KIND)?;
        let signature = sign(&domain_separated(tag, &body_bytes));
        let bytes = canonical(
            &EnvelopeOut {
                tag,
                body: &body,
                signature: hex::encode(signature),
            },
            T::KIND,
        )?;
        let hash = Hash::of(&bytes);
        Ok(Signed {
            body,
            signature,
            bytes,
            hash,
        })
    }

    /// Parses and verifies a record received from anywhere: a peer, a blob store, an HTTP body.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let record = Self::decode(bytes)?;
        record.verify()?;
        Ok(record)
    }

    /// Parses and verifies many records at once, spreading the signature checks over the
    /// machine's cores. Each record gets its own result, exactly what [`Signed::from_bytes`]
    /// would return for it.
    ///
    /// Every signature is checked on its own with `verify_strict`. ed25519-dalek's
    /// `verify_batch` is not used: it checks one random linear combination without the strict
    /// checks, so a signer can craft a pair of signatures (with small-order components in `R`)
    /// that passes in one batch and fails alone, and whether a record is accepted would depend
    /// on which batch it arrived in. Hosts must agree on what evidence is valid.
    pub fn from_bytes_batch(records: &[&[u8]]) -> Vec<Result<Self, Error>>
    where
        T: Send,
    {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = records.len().div_ceil(threads).max(64);
        if records.len() <= chunk {
            return records
                .iter()
                .map(|bytes| Self::from_bytes(bytes))
                .collect();
        }
        std::thread::scope(|scope| {
            let workers: Vec<_> = records
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|bytes| Self::from_bytes(bytes))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|worker| match worker.join() {
                    Ok(results) => results,
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect()
        })
    }

    /// Parses a record this host verified before it stored it, without checking the signature
    /// again. Only for bytes read back from the host's own registry.
    pub(crate) fn from_stored(bytes: &[u8]) -> Result<Self, Error> {
        Self::decode(bytes)
    }

    /// Parses the canonical envelope, leaving the signature unchecked.
    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let malformed = |reason: String| Error::Malformed {
            kind: T::KIND,
            reason,
        };
        let envelope: EnvelopeIn<T> =
            serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        let tag = envelope.body.tag();
        if envelope.tag != tag {
            return Err(Error::WrongTag {
                kind: T::KIND,
                expected: tag,
                found: envelope.tag.chars().take(64).collect(),
            });
        }
        let mut signature = [0u8; 64];
        hex::decode_to_slice(&envelope.signature, &mut signature)
            .map_err(|_| malformed("signature is not 128 hex digits".into()))?;
        let canonical_bytes = canonical(
            &EnvelopeOut {
                tag,
                body: &envelope.body,
                signature: hex::encode(signature),
            },
            T::KIND,
        )?;
        if canonical_bytes != bytes {
            return Err(Error::NotCanonical { kind: T::KIND });
        }
        Ok(Signed {
            body: envelope.body,
            signature,
            hash: Hash::of(bytes),
            bytes: bytes.to_vec(),
        })
    }

    fn verify(&self) -> Result<(), Error> {
        let body_bytes = canonical(&self.body, T::KIND)?;
        if self
            .body
            .signer()
            .verify(self.body.tag(), &body_bytes, &self.signature)
        {
            Ok(())
        } else {
            Err(Error::BadSignature {
                kind: T::KIND,
                signer: *self.body.signer(),
            })
        }
    }

    /// The record.
    pub fn body(&self) -> &T {
        &self.body
    }

    /// The key that signed the record.
    pub fn signer(&self) -> &PublicKey {
        self.body.signer()
    }

    /// The signature over `tag ‖ 0x00 ‖ body`.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    /// The canonical signed bytes: what is stored, shared and hashed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The record's identity: the BLAKE3 hash of [`Signed::as_bytes`].
    pub fn hash(&self) -> Hash {
        self.hash
    }
}

fn canonical<S: Serialize>(value: &S, kind: &'static str) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| Error::Malformed {
        kind,
        reason: e.to_string(),
    })
}
