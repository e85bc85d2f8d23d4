//! A guest whose module declares 256 MiB of initial linear memory (a zeroed static): more than a
//! call may have, so every instantiation is refused before any of its code runs.

wit_bindgen::generate!({ path: "../../../wit", world: "agent" });

use agora::agent::types::{AgentError, AgentInfo, Request};

/// Zeroed, so it lands in the initial memory size rather than in a data segment.
static mut HOARD: [u8; 256 << 20] = [0; 256 << 20];

struct HugeMemory;

impl exports::agora::agent::handler::Guest for HugeMemory {
    fn info() -> AgentInfo {
        AgentInfo {
            name: "huge-memory".into(),
            version: "0.1.0".into(),
            description: "declares 256 MiB of initial memory".into(),
            actions: vec!["touch".into()],
        }
    }

    fn handle(_req: Request) -> Result<Vec<u8>, AgentError> {
        // SAFETY: a guest is single-threaded; this only reads one byte of the static.
        let first = unsafe { std::ptr::addr_of!(HOARD).cast::<u8>().read_volatile() };
        Ok(vec![first])
    }
}

export!(HugeMemory);
