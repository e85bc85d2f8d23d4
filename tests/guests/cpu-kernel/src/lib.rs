//! A well-behaved guest that only computes, for measuring what metering and the host add to a
//! call: `echo` returns its payload (the trivial call), `hash` mixes a 4 KiB buffer the number
//! of rounds its payload names and returns the digest as hex (a CPU-bound kernel).

wit_bindgen::generate!({ path: "../../../wit", world: "agent" });

use agora::agent::types::{AgentError, AgentInfo, Request};

struct CpuKernel;

/// `rounds` passes of a multiply-xorshift mix over a 4 KiB buffer: integer work with loads,
/// stores and branches, like a hash or a numeric kernel, and the same result on every host.
fn hash(rounds: u64) -> u64 {
    let mut buffer = [0u64; 512];
    for (i, word) in buffer.iter_mut().enumerate() {
        *word = i as u64;
    }
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..rounds {
        for word in buffer.iter_mut() {
            state ^= *word;
            state = state.wrapping_mul(0xff51_afd7_ed55_8ccd);
            state ^= state >> 33;
            *word = state;
        }
    }
    state
}

impl exports::agora::agent::handler::Guest for CpuKernel {
    fn info() -> AgentInfo {
        AgentInfo {
            name: "cpu-kernel".into(),
            version: "0.1.0".into(),
            description: "computes on request".into(),
            actions: vec!["echo".into(), "hash".into()],
        }
    }

    fn handle(req: Request) -> Result<Vec<u8>, AgentError> {
        match req.action.as_str() {
            "echo" => Ok(req.payload),
            "hash" => {
                let rounds: u64 = std::str::from_utf8(&req.payload)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .ok_or_else(|| AgentError::BadRequest("payload: a number of rounds".into()))?;
                Ok(format!("{:016x}", hash(rounds)).into_bytes())
            }
            other => Err(AgentError::BadRequest(format!("unknown action {other}"))),
        }
    }
}

export!(CpuKernel);

#[cfg(test)]
mod tests {
    #[test]
    fn the_kernel_depends_on_every_round() {
        assert_ne!(super::hash(1), super::hash(2));
        assert_eq!(super::hash(3), super::hash(3));
    }
}
