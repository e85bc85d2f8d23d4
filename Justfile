# Everyday recipes. `just` lists them.

default:
    @just --list

# Build the example agents as wasm32-wasip2 components into target/guests.
guests:
    rustup target add wasm32-wasip2
    for g in energy-trader ride-driver ride-rider; do \
        cargo rustc --quiet --locked --lib --crate-type cdylib -p $g --target wasm32-wasip2 --profile guest --target-dir target/guests; \
    done
    ls -l target/guests/wasm32-wasip2/guest/*.wasm

# Run every test (the README's test command).
test:
    cargo test --workspace

# Formatting and lints, as CI checks them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# The marketplace demo.
demo:
    cargo run --release -- demo

# Format the code.
fmt:
    cargo fmt --all

# Evidence ingest and HTTP reputation queries with a million receipts (installs wrk if missing).
bench-reputation:
    command -v wrk >/dev/null || sudo apt-get install -y wrk || apt-get install -y wrk
    cargo bench -p agora-tests --bench reputation
