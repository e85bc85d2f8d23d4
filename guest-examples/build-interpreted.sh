#!/usr/bin/env bash
# Builds the example agents written in Python and JavaScript into target/guests/{py,js}/.
#
# Installs pinned component toolchains from the package registries into target/toolchains/
# (componentize-py from PyPI, componentize-js from npm); needs Python 3.11+ with pip and
# Node 20+ with npm. The tests that run these agents fail, saying to run this, if they are missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
tools="$target/toolchains"
componentize_py_version=0.25.1
componentize_js_version=0.19.3

mkdir -p "$tools" "$target/guests/py" "$target/guests/js"
if [ ! -x "$tools/py/bin/componentize-py" ] || \
   [ "$("$tools/py/bin/componentize-py" --version)" != "componentize-py $componentize_py_version" ]; then
    python3 -m venv "$tools/py"
    "$tools/py/bin/pip" install --quiet "componentize-py==$componentize_py_version"
fi
if [ ! -x "$tools/js/node_modules/.bin/componentize-js" ] || \
   ! grep -q "\"version\": \"$componentize_js_version\"" "$tools/js/node_modules/@bytecodealliance/componentize-js/package.json"; then
    mkdir -p "$tools/js"
    (cd "$tools/js" && npm install --silent --no-audit --no-fund "@bytecodealliance/componentize-js@$componentize_js_version")
fi

(cd "$root/guest-examples/energy-trader-py" &&
    "$tools/py/bin/componentize-py" -d "$root/wit" -w agent componentize app \
        -o "$target/guests/py/energy-trader-py.wasm" >/dev/null)
(cd "$root/guest-examples/ride-driver-js" &&
    "$tools/js/node_modules/.bin/componentize-js" --wit "$root/wit" --world-name agent \
        --out "$target/guests/js/ride-driver-js.wasm" driver.js >/dev/null)
ls -l "$target/guests/py/energy-trader-py.wasm" "$target/guests/js/ride-driver-js.wasm"
