//! Ed25519 signing with its costly half done ahead of time, for the receipt chain.
//!
//! An Ed25519 signature is `(R, S)` with `R = r·B` and `S = r + H(R ‖ A ‖ M)·a`. RFC 8032
//! derives `r` from the message, so all of the work waits for the message. But verification
//! does not see how `r` was chosen: any secret, uniformly distributed `r`, never used twice,
//! gives a signature every strict verifier accepts. `r·B`, nine tenths of the cost of a
//! signature, does not depend on the message, so a background thread computes `(r, R)` pairs in
//! advance, and the registry's writer — which signs one receipt at a time, since each names the
//! hash of the one before — only hashes the message and does one multiply-add.
//!
//! Each `r` is hedged: SHA-512 over a domain tag, the key's secret hash prefix, 32 bytes from
//! the operating system's random source and a counter. A random source that failed would still
//! not repeat an `r` within a process, and without the secret prefix nobody can predict one. A
//! nonce is moved out of the pool once and is neither `Clone` nor `Copy`, so none signs twice.
//! When the pool is empty (a burst longer than it holds), signing falls back to RFC 8032's
//! deterministic signature: the pool only ever saves time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::{EdwardsPoint, Scalar};
use ed25519_dalek::hazmat::ExpandedSecretKey;
use ed25519_dalek::{Digest, Sha512, SigningKey, VerifyingKey};

use crate::identity::{PublicKey, SecretKey};

/// Nonces kept ready: a burst of this many receipts signs without waiting for one.
const POOL_SIZE: usize = 1024;
/// Separates nonce derivation from every other use of SHA-512 with the key's prefix.
const NONCE_DOMAIN: &[u8] = b"agora 2026-12 ed25519 hedged nonce";

/// `r` and `R = r·B`, used for exactly one signature.
struct Nonce {
    r: Scalar,
    big_r: CompressedEdwardsY,
}

/// One key's precomputed nonces, refilled by a thread that stops when the pool is dropped.
pub(crate) struct NoncePool {
    key: SecretKey,
    expanded: ExpandedSecretKey,
    verifying: VerifyingKey,
    ready: Mutex<Receiver<Nonce>>,
    /// Nonces the thread has put in the pool so far (tests wait for a full pool).
    #[cfg_attr(not(test), expect(dead_code, reason = "read by the tests"))]
    made: Arc<AtomicU64>,
}

impl NoncePool {
    /// Starts filling a pool for `key`.
    pub(crate) fn start(key: &SecretKey) -> std::io::Result<Self> {
        let seed = key.to_bytes();
        let signing = SigningKey::from_bytes(&seed);
        let expanded = ExpandedSecretKey::from(&seed);
        let (sender, ready) = sync_channel(POOL_SIZE);
        let prefix = expanded.hash_prefix;
        let made = Arc::new(AtomicU64::new(0));
        let counter = made.clone();
        std::thread::Builder::new()
            .name("agora-nonces".into())
            .spawn(move || fill(&prefix, &sender, &counter))?;
        Ok(NoncePool {
            key: key.clone(),
            expanded,
            verifying: signing.verifying_key(),
            ready: Mutex::new(ready),
            made,
        })
    }

    /// The key this pool signs for.
    pub(crate) fn public(&self) -> PublicKey {
        self.key.public()
    }

    /// The key's Ed25519 signature over `message` (already domain-separated), with a
    /// precomputed nonce when one is ready.
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        let nonce = self
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_recv()
            .ok();
        let Some(Nonce { r, big_r }) = nonce else {
            return self.key.sign_raw(message);
        };
        let mut h = Sha512::new();
        h.update(big_r.as_bytes());
        h.update(self.verifying.as_bytes());
        h.update(message);
        let k = Scalar::from_hash(h);
        let s = k * self.expanded.scalar + r;
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(big_r.as_bytes());
        signature[32..].copy_from_slice(s.as_bytes());
        signature
    }
}

/// Computes nonces into `sender` until the pool is dropped.
fn fill(prefix: &[u8; 32], sender: &SyncSender<Nonce>, made: &AtomicU64) {
    for counter in 0u64.. {
        let random: [u8; 32] = rand::random();
        let mut h = Sha512::new();
        h.update(NONCE_DOMAIN);
        h.update(prefix);
        h.update(random);
        h.update(counter.to_le_bytes());
        let r = Scalar::from_hash(h);
        let nonce = Nonce {
            r,
            big_r: EdwardsPoint::mul_base(&r).compress(),
        };
        // Blocks while the pool is full; fails once nobody will take from it.
        match sender.try_send(nonce) {
            Ok(()) => {}
            Err(TrySendError::Full(nonce)) => {
                if sender.send(nonce).is_err() {
                    return;
                }
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
        made.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::{Duration, Instant};

    use ed25519_dalek::Signature;

    use super::*;

    /// Waits until the pool's thread has filled it.
    fn filled(pool: &NoncePool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while pool.made.load(Ordering::Relaxed) < POOL_SIZE as u64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn signatures_with_precomputed_nonces_verify_strictly_and_never_share_a_nonce() {
        let key = SecretKey::generate();
        let pool = NoncePool::start(&key).unwrap();
        filled(&pool);
        let verifying = VerifyingKey::from_bytes(key.public().as_bytes()).unwrap();
        let mut nonces = HashSet::new();
        let mut precomputed = 0;
        for i in 0..3 * POOL_SIZE {
            let message = format!("agora/receipt/v1\0{{\"seq\":{i}}}");
            let signature = pool.sign(message.as_bytes());
            verifying
                .verify_strict(message.as_bytes(), &Signature::from_bytes(&signature))
                .unwrap_or_else(|e| panic!("signature {i} does not verify: {e}"));
            assert!(nonces.insert(signature[..32].to_vec()), "R repeated at {i}");
            if signature != key.sign_raw(message.as_bytes()) {
                precomputed += 1;
            }
        }
        // Signing faster than the thread computes drains the pool: the rest are RFC 8032's.
        assert!(precomputed >= POOL_SIZE / 2, "{precomputed} from the pool");
    }

    #[test]
    fn a_signature_over_other_bytes_does_not_verify() {
        let key = SecretKey::generate();
        let pool = NoncePool::start(&key).unwrap();
        filled(&pool);
        let verifying = VerifyingKey::from_bytes(key.public().as_bytes()).unwrap();
        let signature = Signature::from_bytes(&pool.sign(b"agora/receipt/v1\0{\"fuel\":1}"));
        assert!(
            verifying
                .verify_strict(b"agora/receipt/v1\0{\"fuel\":2}", &signature)
                .is_err()
        );
    }
}
