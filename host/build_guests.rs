// Builds guest crates of this workspace as wasm32-wasip2 components, for build scripts.
//
// Shared by host/build.rs (the example agents) and tests/build.rs (adversarial guests) through
// `include!`, so there is one place that knows how guests are built. Modelled on wasmtime's
// crates/test-programs/artifacts/build.rs: a nested cargo with its own target dir, so it never
// waits on the outer build's lock, and with the outer build's flags removed, since they are
// meant for the host target.

use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "wasm32-wasip2";

/// Builds `packages` (workspace members) and copies each component into `out_dir`, returning
/// `(package, path)` pairs.
fn build_guests(packages: &[&str], out_dir: &Path) -> Vec<(String, PathBuf)> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().expect("crate is inside the workspace").to_owned();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("guests");
    println!("cargo:rerun-if-changed={}", workspace.join("wit").display());
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let toolchain = guest_toolchain();
    ensure_guest_target(toolchain.as_deref());

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut built = Vec::new();
    for package in packages {
        let status = rust_tool(toolchain.as_deref(), &cargo)
            .current_dir(&workspace)
            .args(["rustc", "--quiet", "--locked", "--lib", "--crate-type", "cdylib"])
            .args(["-p", package, "--target", GUEST_TARGET, "--profile", "guest"])
            .arg("--target-dir")
            .arg(&target_dir)
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .unwrap_or_else(|e| panic!("could not run {cargo} to build guest {package}: {e}"));
        assert!(status.success(), "building guest {package} for {GUEST_TARGET} failed");
        let file = format!("{}.wasm", package.replace('-', "_"));
        let source = target_dir.join(GUEST_TARGET).join("guest").join(&file);
        let destination = out_dir.join(&file);
        std::fs::copy(&source, &destination)
            .unwrap_or_else(|e| panic!("copying {} failed: {e}", source.display()));
        built.push((package.to_string(), destination));
    }
    built
}

/// `AGORA_GUEST_TOOLCHAIN` (e.g. `stable`) builds the guests with that rustup toolchain rather
/// than the one building this crate: the fuzz targets build with nightly, which may lack the
/// wasm32-wasip2 standard library.
fn guest_toolchain() -> Option<String> {
    println!("cargo:rerun-if-env-changed=AGORA_GUEST_TOOLCHAIN");
    std::env::var("AGORA_GUEST_TOOLCHAIN")
        .ok()
        .filter(|toolchain| !toolchain.is_empty())
}

/// `tool` (cargo or rustc) as the outer build runs it, or from `toolchain` through rustup.
fn rust_tool(toolchain: Option<&str>, tool: &str) -> Command {
    match toolchain {
        None => Command::new(tool),
        Some(toolchain) => {
            let name = Path::new(tool)
                .file_name()
                .map_or_else(|| tool.to_owned(), |n| n.to_string_lossy().into_owned());
            let mut command = Command::new("rustup");
            command
                .args(["run", toolchain, &name])
                .env_remove("RUSTC")
                .env_remove("RUSTDOC")
                .env_remove("CARGO")
                .env_remove("RUSTUP_TOOLCHAIN");
            command
        }
    }
}

/// Installs the wasm32-wasip2 standard library with rustup if the guest toolchain lacks it.
fn ensure_guest_target(toolchain: Option<&str>) {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = rust_tool(toolchain, &rustc)
        .args(["--print", "target-libdir", "--target", GUEST_TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if libdir.is_some_and(|dir| dir.exists()) {
        return;
    }
    println!("cargo:warning=installing the {GUEST_TARGET} target with rustup to build the guests");
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", GUEST_TARGET]);
    if let Some(toolchain) = toolchain {
        rustup.args(["--toolchain", toolchain]);
    }
    let status = rustup
        .status()
        .unwrap_or_else(|e| panic!("the {GUEST_TARGET} target is missing and rustup could not run: {e}"));
    assert!(status.success(), "`rustup target add {GUEST_TARGET}` failed");
}
