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
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::{EdwardsPoint, Scalar};
use ed25519_dalek::hazmat::ExpandedSecretKey;
use ed25519_dalek::{Digest, Sha512, SigningKey, VerifyingKey};

use crate::identity::{PublicKey, SecretKey};

/// Nonces kept ready: a burst of this many receipts signs without waiting for one.
const POOL_SIZE: usize = 1024;
/// The pool is refilled, in one go, once it holds fewer than this: waking the thread for every
/// nonce taken would cost the signer a system call each time, and the refill would contend for
/// a core with the calls at every receipt rather than now and then.
const REFILL_BELOW: usize = POOL_SIZE / 2;
/// Separates nonce derivation from every other use of SHA-512 with the key's prefix.
const NONCE_DOMAIN: &[u8] = b"agora 2026-12 ed25519 hedged nonce";

/// `r` and `R = r·B`, used for exactly one signature.
struct Nonce {
    r: Scalar,
    big_r: CompressedEdwardsY,
}

/// What the signer and the refilling thread share.
struct Shared {
    nonces: Mutex<Ready>,
    /// Signalled when the pool runs low, and when it is dropped.
    low: Condvar,
    /// Nonces the thread has put in the pool so far (tests wait for a full pool).
    made: AtomicU64,
}

struct Ready {
    nonces: Vec<Nonce>,
    /// The pool is gone: the thread stops.
    closed: bool,
}

/// One key's precomputed nonces, refilled by a thread that stops when the pool is dropped.
pub(crate) struct NoncePool {
    key: SecretKey,
    expanded: ExpandedSecretKey,
    verifying: VerifyingKey,
    shared: Arc<Shared>,
}

impl NoncePool {
    /// Starts filling a pool for `key`.
    pub(crate) fn start(key: &SecretKey) -> std::io::Result<Self> {
        let seed = key.to_bytes();
        let signing = SigningKey::from_bytes(&seed);
        let expanded = ExpandedSecretKey::from(&seed);
        let shared = Arc::new(Shared {
            nonces: Mutex::new(Ready {
                nonces: Vec::with_capacity(POOL_SIZE),
                closed: false,
            }),
            low: Condvar::new(),
            made: AtomicU64::new(0),
        });
        let prefix = expanded.hash_prefix;
        let filling = shared.clone();
        std::thread::Builder::new()
            .name("agora-nonces".into())
            .spawn(move || fill(&prefix, &filling))?;
        Ok(NoncePool {
            key: key.clone(),
            expanded,
            verifying: signing.verifying_key(),
            shared,
        })
    }

    /// The key this pool signs for.
    pub(crate) fn public(&self) -> PublicKey {
        self.key.public()
    }

    /// The key's Ed25519 signature over `message` (already domain-separated), with a
    /// precomputed nonce when one is ready.
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        let nonce = {
            let mut ready = self.shared.lock();
            let nonce = ready.nonces.pop();
            if ready.nonces.len() == REFILL_BELOW.saturating_sub(1) || nonce.is_none() {
                self.shared.low.notify_one();
            }
            nonce
        };
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

impl Drop for NoncePool {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.low.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Ready> {
        self.nonces.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Refills the pool whenever it runs low, until it is dropped. Nonces are computed outside the
/// lock, so the signer never waits for one.
fn fill(prefix: &[u8; 32], shared: &Shared) {
    lowest_priority();
    let mut counter = 0u64;
    loop {
        let missing = {
            let mut ready = shared.lock();
            while !ready.closed && ready.nonces.len() >= REFILL_BELOW {
                ready = shared.low.wait(ready).unwrap_or_else(|p| p.into_inner());
            }
            if ready.closed {
                return;
            }
            POOL_SIZE - ready.nonces.len()
        };
        // In slices, so a signer that drained the pool gets nonces back soon.
        for _ in 0..missing.div_ceil(64) {
            let slice: Vec<Nonce> = (0..64)
                .map(|_| {
                    counter += 1;
                    nonce(prefix, counter)
                })
                .collect();
            let mut ready = shared.lock();
            if ready.closed {
                return;
            }
            let room = POOL_SIZE.saturating_sub(ready.nonces.len());
            let added = slice.len().min(room);
            ready.nonces.extend(slice.into_iter().take(added));
            shared.made.fetch_add(added as u64, Ordering::Relaxed);
        }
    }
}

/// Runs this thread at the lowest priority: it only ever saves the signer time, so it takes the
/// cores the calls and the writer leave idle and never delays them (at normal priority a refill
/// took its share of a core for milliseconds, and a call's wait for the writer with it).
fn lowest_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority only read their arguments; on Linux a thread id
        // names this thread alone.
        let lowered = unsafe {
            let thread = libc::gettid() as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, thread, 19)
        };
        if lowered != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "cannot lower the nonce thread's priority"
            );
        }
    }
}

/// The `counter`th nonce: `r` from the key's secret prefix, fresh randomness and the counter.
fn nonce(prefix: &[u8; 32], counter: u64) -> Nonce {
    let random: [u8; 32] = rand::random();
    let mut h = Sha512::new();
    h.update(NONCE_DOMAIN);
    h.update(prefix);
    h.update(random);
    h.update(counter.to_le_bytes());
    let r = Scalar::from_hash(h);
    Nonce {
        r,
        big_r: EdwardsPoint::mul_base(&r).compress(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::{Duration, Instant};

    use ed25519_dalek::Signature;

    use super::*;

    /// A fresh key, its pool once the pool's thread has filled it, and its verifying key.
    fn filled_pool() -> (SecretKey, NoncePool, VerifyingKey) {
        let key = SecretKey::generate();
        let pool = NoncePool::start(&key).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while pool.shared.made.load(Ordering::Relaxed) < POOL_SIZE as u64
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let verifying = VerifyingKey::from_bytes(key.public().as_bytes()).unwrap();
        (key, pool, verifying)
    }

    #[test]
    fn signatures_with_precomputed_nonces_verify_strictly_and_never_share_a_nonce() {
        let (key, pool, verifying) = filled_pool();
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
        let (_key, pool, verifying) = filled_pool();
        let signature = Signature::from_bytes(&pool.sign(b"agora/receipt/v1\0{\"fuel\":1}"));
        assert!(
            verifying
                .verify_strict(b"agora/receipt/v1\0{\"fuel\":2}", &signature)
                .is_err()
        );
    }
}
