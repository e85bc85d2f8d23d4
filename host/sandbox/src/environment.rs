//! What a guest sees of the world that its input does not decide — clocks and randomness —
//! made virtual, so that a re-execution from the receipt shows the guest the same world.
//!
//! Language runtimes read both at start-up (CPython seeds its string hashing from
//! `wasi:random`, SpiderMonkey reads the clock), so with the host's real clocks and randomness
//! the same call of a Python or JavaScript agent would spend different fuel on every run. See
//! [`agora_registry::CallEnvironment`] for what the receipt records.

use std::cell::Cell;
use std::convert::Infallible;
use std::time::Duration;

use agora_registry::CallEnvironment;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtxBuilder};

/// How far each read of a virtual clock advances it.
const TICK: Duration = Duration::from_micros(1);

/// Gives the WASI context `environment`'s clocks, and randomness from `seed`
/// ([`CallEnvironment::seed`]).
pub(super) fn virtualise(
    builder: &mut WasiCtxBuilder,
    environment: &CallEnvironment,
    seed: &[u8; 32],
) {
    builder
        .wall_clock(VirtualWallClock {
            start: Duration::from_millis(environment.clock_ms),
            reads: Cell::new(0),
        })
        .monotonic_clock(VirtualMonotonicClock {
            reads: Cell::new(0),
        })
        .secure_random(SeededRandom::new(seed, "secure"))
        .insecure_random(SeededRandom::new(seed, "insecure"));
    let mut insecure_seed = [0u8; 16];
    SeededRandom::new(seed, "insecure-seed").fill(&mut insecure_seed);
    builder.insecure_random_seed(u128::from_le_bytes(insecure_seed));
}

/// The wall clock: the call's start, plus a tick per read.
struct VirtualWallClock {
    start: Duration,
    reads: Cell<u32>,
}

impl HostWallClock for VirtualWallClock {
    fn resolution(&self) -> Duration {
        TICK
    }

    fn now(&self) -> Duration {
        let reads = self.reads.get().saturating_add(1);
        self.reads.set(reads);
        self.start + TICK * reads
    }
}

/// The monotonic clock, in nanoseconds: a tick per read from zero.
struct VirtualMonotonicClock {
    reads: Cell<u64>,
}

impl HostMonotonicClock for VirtualMonotonicClock {
    fn resolution(&self) -> u64 {
        TICK.as_nanos() as u64
    }

    fn now(&self) -> u64 {
        let reads = self.reads.get().saturating_add(1);
        self.reads.set(reads);
        reads.saturating_mul(TICK.as_nanos() as u64)
    }
}

/// A random stream: BLAKE3 in extendable-output mode, keyed by the call's seed and the
/// stream's name. Defined here rather than taken from `rand`, whose generators may change
/// their output between versions (a re-execution must read the same bytes for ever).
struct SeededRandom(blake3::OutputReader);

impl SeededRandom {
    fn new(seed: &[u8; 32], stream: &str) -> Self {
        let mut hasher = blake3::Hasher::new_keyed(seed);
        hasher.update(b"agora 2026-12 wasi:random stream ");
        hasher.update(stream.as_bytes());
        SeededRandom(hasher.finalize_xof())
    }

    fn fill(&mut self, bytes: &mut [u8]) {
        self.0.fill(bytes);
    }
}

impl rand::TryRng for SeededRandom {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut bytes = [0u8; 4];
        self.fill(&mut bytes);
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut bytes = [0u8; 8];
        self.fill(&mut bytes);
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.fill(dst);
        Ok(())
    }
}

impl rand::TryCryptoRng for SeededRandom {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_stream_and_another_seed_another() {
        let read = |seed: &[u8; 32], stream: &str| {
            let mut bytes = [0u8; 64];
            SeededRandom::new(seed, stream).fill(&mut bytes);
            bytes
        };
        assert_eq!(read(&[1; 32], "secure"), read(&[1; 32], "secure"));
        assert_ne!(read(&[1; 32], "secure"), read(&[2; 32], "secure"));
        assert_ne!(read(&[1; 32], "secure"), read(&[1; 32], "insecure"));
    }

    #[test]
    fn virtual_clocks_start_where_the_receipt_says_and_advance_a_tick_per_read() {
        let wall = VirtualWallClock {
            start: Duration::from_millis(1_700_000_000_000),
            reads: Cell::new(0),
        };
        assert_eq!(wall.now(), Duration::from_millis(1_700_000_000_000) + TICK);
        assert_eq!(
            wall.now(),
            Duration::from_millis(1_700_000_000_000) + TICK * 2
        );
        let monotonic = VirtualMonotonicClock {
            reads: Cell::new(0),
        };
        assert_eq!((monotonic.now(), monotonic.now()), (1_000, 2_000));
    }
}
