# Everyday recipes. `just` lists them.

default:
    @just --list

# Build the example agents as wasm32-wasip2 components into target/guests.
guests:
    rustup target add wasm32-wasip2
    for g in energy-trader ride-driver ride-rider ride-concierge; do \
        cargo rustc --quiet --locked --lib --crate-type cdylib -p $g --target wasm32-wasip2 --profile guest --target-dir target/guests; \
    done
    ls -l target/guests/wasm32-wasip2/guest/*.wasm

# Build the Python and JavaScript example agents into target/guests/{py,js}
# (installs componentize-py from PyPI and componentize-js from npm into target/toolchains).
guests-interpreted:
    ./guest-examples/build-interpreted.sh

# Run every test (the README's test command).
test: guests-interpreted
    tests/clients/install.sh
    host/embedded-model/fetch-default.sh
    cargo test --workspace
    tests/schemathesis/run.sh

# Fuzz the HTTP API against its OpenAPI document with schemathesis (installed from PyPI);
# more examples per operation than the test run's 50.
fuzz-api examples="500":
    tests/schemathesis/run.sh {{examples}}

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

# The fast path: warm calls against raw wasmtime, metering cost, process start, loaded agents,
# HTTP invocation against `wasmtime serve`.
bench: guests-interpreted
    cargo bench -p agora-tests --bench fast_path
    cargo bench -p agora-host --bench start
    cargo bench -p agora-host --bench calls
    just bench-http

# HTTP invocation under wrk beside `wasmtime serve` of the same wasmtime (installs wrk from
# Debian and wasmtime-cli 48.0.8 with cargo into target/toolchains, once: about 15 min on 2 cores).
bench-http:
    command -v wrk >/dev/null || sudo apt-get install -y wrk || apt-get install -y wrk
    test -x target/toolchains/wasmtime-48.0.8/bin/wasmtime || cargo install --locked wasmtime-cli --version 48.0.8 --root target/toolchains/wasmtime-48.0.8
    cargo bench -p agora-tests --bench http_invoke

# Fuzz every decoder of untrusted bytes (records, catch-up frames, HTTP bodies against a live
# host, component pre-checks) for `seconds` each with cargo-fuzz (nightly, libFuzzer; installs
# cargo-fuzz from crates.io if missing; the guests still build with stable). Not part of CI.
fuzz seconds="30":
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    for t in records catch_up http_bodies component_check; do \
        AGORA_GUEST_TOOLCHAIN=stable cargo +nightly fuzz run --fuzz-dir tests/fuzz --sanitizer none -O $t -- -max_total_time={{seconds}} -print_final_stats=1 2>&1 | grep -E 'stat::number_of_executed_units|Done|ERROR|panicked' ; \
    done

# Reach figures against the release binary: a release spreading to ten hosts and healing after
# the bootstrap restarts, `agora call` over HTTP and iroh beside `agora run`, MCP tools/call.
reach-figures:
    cargo build --release --quiet --bin agora
    cargo rustc --quiet --locked --lib --crate-type cdylib -p ride-driver --target wasm32-wasip2 --profile guest --target-dir target/guests
    tests/clients/install.sh
    python3 tests/reach/figures.py target/release/agora target/guests/wasm32-wasip2/guest/ride_driver.wasm target/toolchains/mcp-2.3.0/bin/python

# Hostile-input figures against the release binary: peak RSS of `agora run` under each memory
# attack, and the HTTP edge under slowloris and overload (default limits).
attack-figures:
    cargo build --release --quiet --bin agora
    cargo rustc --quiet --lib --crate-type cdylib -p hostile --target wasm32-wasip2 --profile guest --target-dir target/guests
    python3 tests/attacks/figures.py target/release/agora target/guests/wasm32-wasip2/guest/hostile.wasm
