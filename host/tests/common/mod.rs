//! What the process tests share: running the real `agora` binary on a data dir.
// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// Runs `agora --data-dir <data> <args>` to the end.
pub fn agora_output(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agora"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run agora")
}

/// Runs `agora --data-dir <data> <args>`, which must succeed; returns its stdout.
pub fn agora(data: &Path, args: &[&str]) -> String {
    let out = agora_output(data, args);
    assert!(
        out.status.success(),
        "agora {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A running `agora host --api` process, killed when dropped.
pub struct HostProcess {
    /// The process.
    pub child: Child,
    /// Its API, `http://127.0.0.1:<port>`.
    pub api: String,
    /// Its ticket.
    pub ticket: String,
}

impl HostProcess {
    /// Stops the host as an operator would (SIGTERM), and waits for it to exit.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `agora host --api 127.0.0.1:0 <extra>` on `data`; returns once it serves.
pub fn start_host(data: &Path, extra: &[&str]) -> HostProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agora"))
        .arg("--data-dir")
        .arg(data)
        .args(["host", "--api", "127.0.0.1:0"])
        .args(extra)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start agora host");
    let stdout = child.stdout.take().expect("stdout");
    let mut ticket = None;
    let mut api = None;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some(t) = line.strip_prefix("ticket ") {
            ticket = Some(t.to_owned());
        }
        if let Some(a) = line.strip_prefix("api ") {
            api = Some(a.to_owned());
            break;
        }
    }
    HostProcess {
        child,
        api: api.expect("the host printed its API address"),
        ticket: ticket.expect("the host printed its ticket"),
    }
}
