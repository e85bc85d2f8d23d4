//! Compiles the hostile guests in `tests/guests/` to components for the system tests.

include!("../host/build_guests.rs");

fn main() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let guests_dir = manifest_dir.join("guests");
    println!("cargo:rerun-if-changed={}", guests_dir.display());
    let mut packages: Vec<String> = std::fs::read_dir(&guests_dir)
        .expect("tests/guests")
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().join("Cargo.toml").exists())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    packages.sort();
    let names: Vec<&str> = packages.iter().map(String::as_str).collect();
    let built = build_guests(&names, &out_dir);

    let mut code = String::new();
    for (package, path) in built {
        let constant = package.to_uppercase().replace('-', "_");
        code.push_str(&format!(
            "/// The test guest `tests/guests/{package}`, built as a component.\n\
             pub const {constant}: &[u8] = include_bytes!({path:?});\n"
        ));
    }
    std::fs::write(out_dir.join("guests.rs"), code).expect("writing guests.rs");
}
