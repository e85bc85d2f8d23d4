//! Compiles the example agents in `guest-examples/` to components and embeds them, so that
//! `agora demo` works from a single binary.

include!("build_guests.rs");

const EXAMPLES: &[(&str, &str)] = &[
    ("energy-trader", "ENERGY_TRADER"),
    ("ride-driver", "RIDE_DRIVER"),
    ("ride-rider", "RIDE_RIDER"),
    ("ride-concierge", "RIDE_CONCIERGE"),
];

fn main() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let guest_examples = manifest_dir.join("../guest-examples");
    println!("cargo:rerun-if-changed={}", guest_examples.display());
    let packages: Vec<&str> = EXAMPLES.iter().map(|(package, _)| *package).collect();
    let built = build_guests(&packages, &out_dir);

    let mut code = String::new();
    for ((package, path), (_, constant)) in built.iter().zip(EXAMPLES) {
        code.push_str(&format!(
            "/// The `{package}` example agent: a wasm32-wasip2 component built from `guest-examples/{package}`.\n\
             pub const {constant}: &[u8] = include_bytes!({path:?});\n"
        ));
    }
    std::fs::write(out_dir.join("examples.rs"), code).expect("writing examples.rs");
}
