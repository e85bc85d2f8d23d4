//! Ed25519 identities: publishers, hosts and (later) callers.
//!
//! Key files hold a secret, so they are created with mode 0600 and their contents never reach a
//! log: [`SecretKey`] has no `Debug` that prints key material.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;
use crate::hash::Hex;

/// A public key that names a publisher or a host. Written as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// The raw key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses raw key bytes, rejecting points that are not valid keys and weak (small-order)
    /// keys, under which one signature can validate many messages.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, Error> {
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| Error::InvalidKey {
            key: hex::encode(bytes),
            reason: "not a point on the curve",
        })?;
        if key.is_weak() {
            return Err(Error::InvalidKey {
                key: hex::encode(bytes),
                reason: "weak (small-order) key",
            });
        }
        Ok(PublicKey(bytes))
    }

    /// The key as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        Hex::of(&self.0).as_str().to_owned()
    }

    /// The first 12 hex digits, for tables meant for people.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }

    /// Verifies `signature` over `tag ‖ 0x00 ‖ message` with strict verification.
    pub(crate) fn verify(&self, tag: &str, message: &[u8], signature: &[u8; 64]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        let signature = Signature::from_bytes(signature);
        key.verify_strict(&domain_separated(tag, message), &signature)
            .is_ok()
    }
}

impl FromStr for PublicKey {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| Error::InvalidKey {
            key: s.chars().take(80).collect(),
            reason: "expected 64 hex digits",
        })?;
        PublicKey::from_bytes(bytes)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Hex::of(&self.0).as_str())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short())
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(Hex::of(&self.0).as_str())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An ed25519 signing key. One per data dir: it signs the manifests its owner publishes and the
/// receipts its host issues, and (in the network layer) it is the host's node identity.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        SecretKey(SigningKey::generate(&mut rand::rng()))
    }

    /// A key from its 32 secret bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        SecretKey(SigningKey::from_bytes(bytes))
    }

    /// The 32 secret bytes. Handle with care: never log them.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// RFC 8032's signature over bytes already domain-separated (`tag ‖ 0x00 ‖ message`, see
    /// [`domain_separated`]), so a signature over one kind of record can never be replayed as
    /// another kind.
    pub(crate) fn sign_raw(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// Loads a key written by [`SecretKey::write_new`]. Refuses a key file that anyone but its
    /// owner may read or write.
    pub fn load(path: &Path) -> Result<Self, Error> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path).map_err(|source| Error::KeyFile {
                path: path.to_owned(),
                source,
            })?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(Error::KeyFileExposed {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        let text = std::fs::read_to_string(path).map_err(|source| Error::KeyFile {
            path: path.to_owned(),
            source,
        })?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| Error::MalformedKeyFile {
            path: path.to_owned(),
        })?;
        Ok(SecretKey::from_bytes(&bytes))
    }

    /// Writes the key to a new file readable only by its owner (mode 0600). Refuses to
    /// overwrite an existing file, since that would destroy an identity.
    pub fn write_new(&self, path: &Path) -> Result<(), Error> {
        let key_file_error = |source| Error::KeyFile {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(key_file_error)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(key_file_error)?;
        file.write_all(hex::encode(self.to_bytes()).as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all())
            .map_err(key_file_error)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public: {})", self.public().short())
    }
}

/// `tag ‖ 0x00 ‖ message`: what every signature in agora is over.
pub(crate) fn domain_separated(tag: &str, message: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(tag.len() + 1 + message.len());
    bytes.extend_from_slice(tag.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(message);
    bytes
}
