//! The component pre-checks a host runs on bytes it is asked to publish or has fetched: size cap,
//! header, compilation, imports, exports and linking. Every input must end in `Ok` or a typed
//! `CheckError`, never a panic.
#![no_main]

use std::sync::OnceLock;

use agora_host::{DataDir, Limits, Node, NodeConfig};
use libfuzzer_sys::fuzz_target;

struct Host {
    node: Node,
    _dir: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let data = DataDir::new(dir.path());
        data.keygen().expect("keygen");
        let limits = Limits {
            // Small enough that a mutated component compiles quickly.
            max_component_bytes: 1 << 20,
            pooled_instances: 0,
            ..Limits::default()
        };
        let node = runtime
            .block_on(Node::open(NodeConfig::new(data).limits(limits)))
            .expect("open a host");
        Host {
            node,
            _dir: dir,
            _runtime: runtime,
        }
    })
}

fuzz_target!(|bytes: &[u8]| {
    let _ = host().node.sandbox().check(bytes);
});
