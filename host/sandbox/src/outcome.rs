//! How a call that did not return ended, in the stable terms receipts use.

use agora_registry::{Outcome, TrapCode};
use wasmtime::Trap;

use super::{AgentState, MAX_MESSAGE_BYTES, TRANSFER_LIMIT_MESSAGE};

/// The outcome of a call whose guest trapped or whose host call failed with `error`: a limit
/// the call's state recorded first (those are why the guest stopped, whatever wasmtime says),
/// then wasmtime's trap, named by a stable [`TrapCode`].
pub(super) fn classify_trap(error: &wasmtime::Error, state: &AgentState) -> Outcome {
    if state.limiter.host_exhausted {
        return Outcome::HostMemory;
    }
    if state.limiter.exceeded {
        return Outcome::MemoryLimit;
    }
    if state.call.log.exceeded
        || state.stdout.contents().len() >= state.call.log.max_total
        || state.stderr.contents().len() >= state.call.log.max_total
    {
        return Outcome::LogLimit;
    }
    if state.call.transcript.exceeded
        || error
            .chain()
            .any(|cause| cause.to_string().starts_with(TRANSFER_LIMIT_MESSAGE))
    {
        return Outcome::OutputLimit;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Outcome::FuelExhausted,
        Some(Trap::Interrupt) => Outcome::Timeout,
        Some(Trap::StackOverflow) => Outcome::StackOverflow,
        // The cause, not wasmtime's context: its wasm backtrace would crowd out the reason.
        Some(trap) => Outcome::Trap {
            code: Some(trap_code(*trap)),
            message: truncate(&trap.to_string(), MAX_MESSAGE_BYTES),
        },
        None => Outcome::Trap {
            code: Some(TrapCode::HostError),
            message: truncate(&error.root_cause().to_string(), MAX_MESSAGE_BYTES),
        },
    }
}

/// The stable name of a wasmtime trap. Traps of features the profile turns off (GC,
/// exceptions, the component model's async) cannot happen; they, and any trap a later wasmtime
/// adds, are `other`.
fn trap_code(trap: Trap) -> TrapCode {
    match trap {
        Trap::UnreachableCodeReached => TrapCode::Unreachable,
        Trap::MemoryOutOfBounds => TrapCode::MemoryOutOfBounds,
        Trap::HeapMisaligned => TrapCode::UnalignedAtomic,
        Trap::TableOutOfBounds => TrapCode::TableOutOfBounds,
        Trap::IndirectCallToNull => TrapCode::IndirectCallToNull,
        Trap::BadSignature => TrapCode::IndirectCallTypeMismatch,
        Trap::IntegerOverflow => TrapCode::IntegerOverflow,
        Trap::IntegerDivisionByZero => TrapCode::IntegerDivisionByZero,
        Trap::BadConversionToInteger => TrapCode::InvalidConversionToInteger,
        Trap::CannotEnterComponent => TrapCode::CannotEnterComponent,
        Trap::InvalidChar
        | Trap::StringOutOfBounds
        | Trap::ListOutOfBounds
        | Trap::InvalidDiscriminant
        | Trap::UnalignedPointer => TrapCode::InvalidValue,
        Trap::AllocationTooLarge => TrapCode::AllocationTooLarge,
        _ => TrapCode::Other,
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
