//! An agent built against a newer WASI 0.2 release than the Rust standard library uses (0.2.12,
//! as newer toolchains emit), which a host must accept and run.

wit_bindgen::generate!({
    inline: r#"
        package test:newer;

        world newer {
            import wasi:cli/environment@0.2.12;
            include agora:agent/agent@0.1.0;
        }

        package wasi:cli@0.2.12 {
            interface environment {
                get-environment: func() -> list<tuple<string, string>>;
                get-arguments: func() -> list<string>;
                initial-cwd: func() -> option<string>;
            }
        }
    "#,
    path: ["../../../wit"],
    world: "test:newer/newer",
    generate_all,
});

use agora::agent::types::{AgentError, AgentInfo, Request};

struct Newer;

impl exports::agora::agent::handler::Guest for Newer {
    fn info() -> AgentInfo {
        AgentInfo {
            name: "wasi-newer".into(),
            version: "0.1.0".into(),
            description: "imports WASI 0.2.12".into(),
            actions: vec!["env".into()],
        }
    }

    fn handle(_req: Request) -> Result<Vec<u8>, AgentError> {
        let vars = wasi::cli::environment::get_environment();
        Ok(format!("{} vars", vars.len()).into_bytes())
    }
}

export!(Newer);
