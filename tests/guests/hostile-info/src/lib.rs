//! A guest whose `info()` answers with 200,000 action names: a list the host would have to copy
//! entry by entry at publish. The host counts what it lifts and refuses it instead.

wit_bindgen::generate!({ path: "../../../wit", world: "agent" });

use agora::agent::types::{AgentError, AgentInfo, Request};

struct HostileInfo;

impl exports::agora::agent::handler::Guest for HostileInfo {
    fn info() -> AgentInfo {
        AgentInfo {
            name: "hostile-info".into(),
            version: "0.1.0".into(),
            description: "x".repeat(1 << 10),
            actions: (0..200_000).map(|i| format!("a{i}")).collect(),
        }
    }

    fn handle(req: Request) -> Result<Vec<u8>, AgentError> {
        Ok(req.payload)
    }
}

export!(HostileInfo);
