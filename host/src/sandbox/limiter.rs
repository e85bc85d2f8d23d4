//! The resource limiter: memory, tables and instances of one call, counted together.

use wasmtime::ResourceLimiter;

/// Bounds memory, tables and instances of one component instance, counting all of its
/// memories and tables together (wasmtime's own `StoreLimits` checks each memory alone).
pub(super) struct InstanceLimiter {
    max_memory_bytes: u64,
    memory_bytes: u64,
    max_table_elements: usize,
    table_elements: usize,
    max_instances: usize,
    /// Set once a request was refused: the trap that follows is a memory-limit outcome.
    pub(super) exceeded: bool,
}

impl InstanceLimiter {
    pub(super) fn new(
        max_memory_bytes: u64,
        max_table_elements: usize,
        max_instances: usize,
    ) -> Self {
        InstanceLimiter {
            max_memory_bytes,
            memory_bytes: 0,
            max_table_elements,
            table_elements: 0,
            max_instances,
            exceeded: false,
        }
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
