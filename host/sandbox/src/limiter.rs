//! The resource limiter: memory, tables and instances of one call, counted together, and the
//! linear memory of all calls at once, counted against one host-wide budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use wasmtime::ResourceLimiter;

/// The linear memory every running call holds, together, against the host's budget
/// ([`crate::Limits::max_guest_memory_bytes`]).
#[derive(Debug)]
pub struct GuestMemory {
    budget: u64,
    used: AtomicU64,
    /// Calls waiting in [`GuestMemory::admit`]: releases wake them only when there are any, so
    /// the common case (room to spare) takes no lock.
    waiting: AtomicUsize,
    released: tokio::sync::Notify,
}

impl GuestMemory {
    pub fn new(budget: u64) -> Self {
        GuestMemory {
            budget,
            used: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            released: tokio::sync::Notify::new(),
        }
    }

    /// Bytes held by running calls now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Waits up to `wait` until `headroom` bytes (at most the whole budget) are free. It reserves
    /// nothing: it keeps calls from starting into a host that has no room for them, and what
    /// they then grow is charged as it happens.
    pub async fn admit(&self, headroom: u64, wait: Duration) -> bool {
        let headroom = headroom.min(self.budget);
        let fits = || self.used.load(Ordering::SeqCst).saturating_add(headroom) <= self.budget;
        if fits() {
            return true;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + wait;
        let admitted = loop {
            let released = self.released.notified();
            if fits() {
                break true;
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                break false;
            }
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        admitted
    }

    /// Takes `bytes` from the budget, or says no.
    fn reserve(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes)
                    .filter(|total| *total <= self.budget)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::SeqCst);
            // A waiter counts itself before it checks `used`, so either it sees this release
            // or this sees it.
            if self.waiting.load(Ordering::SeqCst) > 0 {
                self.released.notify_waiters();
            }
        }
    }
}

/// Bounds memory, tables and instances of one component instance, counting all of its
/// memories and tables together (wasmtime's own `StoreLimits` checks each memory alone).
pub(super) struct InstanceLimiter {
    max_memory_bytes: u64,
    memory_bytes: u64,
    host: Arc<GuestMemory>,
    max_table_elements: usize,
    table_elements: usize,
    max_instances: usize,
    /// Set once a request was refused: the trap that follows is a memory-limit outcome.
    pub(super) exceeded: bool,
    /// Set once growth within this call's own limit was refused because the host's budget for
    /// all calls was spent: the host's load, not the agent's doing.
    pub(super) host_exhausted: bool,
}

impl InstanceLimiter {
    pub(super) fn new(
        max_memory_bytes: u64,
        host: Arc<GuestMemory>,
        max_table_elements: usize,
        max_instances: usize,
    ) -> Self {
        InstanceLimiter {
            max_memory_bytes,
            memory_bytes: 0,
            host,
            max_table_elements,
            table_elements: 0,
            max_instances,
            exceeded: false,
            host_exhausted: false,
        }
    }
}

impl Drop for InstanceLimiter {
    fn drop(&mut self) {
        self.host.release(self.memory_bytes);
    }
}

/// The error that stops a guest asking for more memory or table space than it may have.
#[derive(Debug, thiserror::Error)]
#[error("resource limit exceeded: {0}")]
struct ResourceLimitExceeded(&'static str);

impl ResourceLimiter for InstanceLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total =
            (self.memory_bytes.saturating_sub(current as u64)).saturating_add(desired as u64);
        if total > self.max_memory_bytes {
            self.exceeded = true;
            return Err(ResourceLimitExceeded("memory").into());
        }
        if total > self.memory_bytes && !self.host.reserve(total - self.memory_bytes) {
            self.host_exhausted = true;
            return Err(ResourceLimitExceeded("the host's memory for all calls").into());
        }
        self.host.release(self.memory_bytes.saturating_sub(total));
        self.memory_bytes = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .table_elements
            .saturating_sub(current)
            .saturating_add(desired);
        if total > self.max_table_elements {
            self.exceeded = true;
            return Err(ResourceLimitExceeded("table elements").into());
        }
        self.table_elements = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.max_instances
    }

    fn tables(&self) -> usize {
        self.max_instances
    }

    fn memories(&self) -> usize {
        self.max_instances
    }
}
