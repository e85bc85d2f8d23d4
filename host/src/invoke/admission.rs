//! Who may start a call, and when: per-caller token buckets and a fixed number of invocation
//! slots, shared by every transport a host is invoked over (HTTP, iroh, MCP), so a caller's rate
//! and the slots count its calls however they arrive.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agora_registry::PublicKey;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::HttpLimits;

/// The admission state of one host: signed callers' rates by key, unsigned (MCP) clients' by
/// address, and the invocation slots. Sized by the invocation fields of [`HttpLimits`].
pub struct Admission {
    rates: CallerRates<PublicKey>,
    /// MCP clients sign nothing: they are told apart, and rate-limited, by their address.
    client_rates: CallerRates<IpAddr>,
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("free_slots", &self.slots.available_permits())
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// Admission under `limits`' invocation bounds: `max_concurrent_invocations`,
    /// `invocations_per_caller_per_second`, `invocation_burst_per_caller` and
    /// `max_tracked_callers`.
    pub fn new(limits: &HttpLimits) -> Arc<Admission> {
        Arc::new(Admission {
            rates: CallerRates::new(limits),
            client_rates: CallerRates::new(limits),
            slots: Arc::new(Semaphore::new(limits.max_concurrent_invocations)),
        })
    }

    /// Takes one of `caller`'s tokens, or says how long until the next would be there.
    pub(crate) fn admit_caller(&self, caller: &PublicKey) -> Result<(), Duration> {
        self.rates.admit(caller, Instant::now())
    }

    /// Takes one token of the unsigned client at `address`, or says how long until the next.
    pub(crate) fn admit_client(&self, address: IpAddr) -> Result<(), Duration> {
        self.client_rates.admit(&address, Instant::now())
    }

    /// One invocation slot, held until the call has run and its receipt is stored; `None` at
    /// once when all are taken (nothing queues).
    pub(crate) fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }
}

/// Token buckets, one per caller (a key, or an address), in a bounded table.
pub(crate) struct CallerRates<K> {
    per_second: f64,
    burst: f64,
    max_tracked: usize,
    table: Mutex<RateTable<K>>,
}

struct RateTable<K> {
    buckets: HashMap<K, Bucket>,
    /// When the table is full of recent callers, no sweep can free a place before this.
    no_sweep_before: Option<Instant>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl<K: std::hash::Hash + Eq + Copy> CallerRates<K> {
    fn new(limits: &HttpLimits) -> CallerRates<K> {
        CallerRates::with_rate(
            limits.invocations_per_caller_per_second,
            limits.invocation_burst_per_caller,
            limits.max_tracked_callers,
        )
    }

    /// Buckets of `burst` tokens refilled at `per_second`, for at most `max_tracked` callers.
    pub(crate) fn with_rate(per_second: u32, burst: u32, max_tracked: usize) -> CallerRates<K> {
        CallerRates {
            per_second: f64::from(per_second),
            burst: f64::from(burst),
            max_tracked,
            table: Mutex::new(RateTable {
                buckets: HashMap::new(),
                no_sweep_before: None,
            }),
        }
    }

    /// The tokens a bucket holds at `now`.
    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.per_second).min(self.burst)
    }

    /// Takes a token from `caller`'s bucket, or returns how long until one is there.
    pub(crate) fn admit(&self, caller: &K, now: Instant) -> Result<(), Duration> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !table.buckets.contains_key(caller) && table.buckets.len() >= self.max_tracked {
            self.sweep(&mut table, now)?;
        }
        let burst = self.burst;
        let bucket = table.buckets.entry(*caller).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let tokens = self.refilled(bucket, now);
        bucket.at = now;
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            Ok(())
        } else {
            bucket.tokens = tokens;
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second))
        }
    }

    /// Forgets every caller whose bucket is full again (it is owed nothing, so forgetting it
    /// changes no answer). When none is, refuses until the first would be.
    fn sweep(&self, table: &mut RateTable<K>, now: Instant) -> Result<(), Duration> {
        if let Some(at) = table.no_sweep_before
            && now < at
        {
            return Err(at - now);
        }
        let mut soonest_full = Duration::MAX;
        let buckets = std::mem::take(&mut table.buckets);
        table.buckets = buckets
            .into_iter()
            .filter(|(_, bucket)| {
                let missing = self.burst - self.refilled(bucket, now);
                if missing <= 0.0 {
                    return false;
                }
                soonest_full = soonest_full.min(Duration::from_secs_f64(missing / self.per_second));
                true
            })
            .collect();
        if table.buckets.len() >= self.max_tracked {
            table.no_sweep_before = Some(now + soonest_full);
            return Err(soonest_full);
        }
        table.no_sweep_before = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::HttpLimits;
    use agora_registry::SecretKey;

    fn rates(per_second: u32, burst: u32, max_tracked: usize) -> CallerRates<PublicKey> {
        CallerRates::new(&HttpLimits {
            invocations_per_caller_per_second: per_second,
            invocation_burst_per_caller: burst,
            max_tracked_callers: max_tracked,
            ..HttpLimits::default()
        })
    }

    #[test]
    fn a_caller_gets_its_burst_then_one_call_per_interval() {
        let rates = rates(10, 3, 100);
        let caller = SecretKey::generate().public();
        let start = Instant::now();
        for _ in 0..3 {
            rates.admit(&caller, start).unwrap();
        }
        let wait = rates.admit(&caller, start).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        rates.admit(&caller, start + wait).unwrap();
        // Another caller is not held back by the first.
        rates.admit(&SecretKey::generate().public(), start).unwrap();
    }

    #[test]
    fn the_table_forgets_idle_callers_and_refuses_newcomers_while_it_is_full_of_recent_ones() {
        let rates = rates(10, 2, 2);
        let start = Instant::now();
        let (a, b, c) = (
            SecretKey::generate().public(),
            SecretKey::generate().public(),
            SecretKey::generate().public(),
        );
        rates.admit(&a, start).unwrap();
        rates.admit(&b, start).unwrap();
        let wait = rates.admit(&c, start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // Until then the table is not swept again; after it, a and b are full and forgotten.
        assert!(rates.admit(&c, start + Duration::from_millis(50)).is_err());
        rates.admit(&c, start + wait).unwrap();
        assert_eq!(rates.table.lock().unwrap().buckets.len(), 1);
    }
}
