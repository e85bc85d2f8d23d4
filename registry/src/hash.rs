//! BLAKE3 content hashes, the names of everything in the marketplace.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A BLAKE3-256 hash, the same function iroh-blobs uses, so a blob's hash is its marketplace name.
///
/// Written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash([u8; 32]);

impl Hash {
    /// Hashes `data`.
    pub fn of(data: &[u8]) -> Self {
        Hash(*blake3::hash(data).as_bytes())
    }

    /// Wraps raw hash bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Hash(bytes)
    }

    /// The raw hash bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The hash as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        Hex::of(&self.0).as_str().to_owned()
    }

    /// The first 12 hex digits, for tables meant for people.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }
}

/// 32 bytes as 64 lowercase hex digits, on the stack: hashes and keys are written as hex into
/// every stored row and every signed record, so this is on the path of every receipt.
pub(crate) struct Hex([u8; 64]);

impl Hex {
    pub(crate) fn of(bytes: &[u8; 32]) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0x0f)];
        }
        Hex(out)
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII digits were written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A string that is not a 64-digit hex hash.
#[derive(Debug, thiserror::Error)]
#[error("`{input}` is not a BLAKE3 hash (expected 64 hex digits)")]
pub struct ParseHashError {
    input: String,
}

impl FromStr for Hash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| ParseHashError {
            input: s.chars().take(80).collect(),
        })?;
        Ok(Hash(bytes))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Hex::of(&self.0).as_str())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.short())
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(Hex::of(&self.0).as_str())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_digits_that_parse_back() {
        for seed in [&b""[..], b"a", b"agora"] {
            let hash = Hash::of(seed);
            assert_eq!(hash.to_hex(), hex::encode(hash.as_bytes()));
            assert_eq!(hash.to_string(), hash.to_hex());
            assert_eq!(hash.to_hex().parse::<Hash>().unwrap(), hash);
        }
        assert_eq!(Hex::of(&[0xab; 32]).as_str(), "ab".repeat(32));
    }
}
