#!/usr/bin/env bash
# Fuzzes the HTTP API against its OpenAPI document with schemathesis (from PyPI), with every
# check on, against a live `agora host --api` whose registry holds the demo's agents, receipts
# and feedback. Fails on any finding: a 5xx, a status or content type the document does not
# list, a schema-valid request refused as undocumented, a schema-invalid one accepted.
#
# Usage: tests/schemathesis/run.sh [MAX_EXAMPLES]   (default 50 per operation)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
max_examples=${1:-50}
version=4.32.5

venv=$target/toolchains/schemathesis-$version
if [ ! -x "$venv/bin/schemathesis" ]; then
    echo "installing schemathesis $version from PyPI into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "schemathesis==$version"
fi

cargo build --quiet --bin agora
agora=$target/debug/agora

work=$(mktemp -d)
host_pid=
cleanup() {
    if [ -n "$host_pid" ]; then kill "$host_pid" 2>/dev/null || true; wait "$host_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# A registry with agents, receipts and feedback in it: the demo's.
"$agora" demo --keep "$work/data" > "$work/demo.log"
"$agora" --data-dir "$work/data" host --api 127.0.0.1:0 > "$work/host.log" 2>&1 &
host_pid=$!
for _ in $(seq 1 100); do
    url=$(grep -o 'http://127.0.0.1:[0-9]*' "$work/host.log" || true)
    [ -n "$url" ] && break
    kill -0 "$host_pid" 2>/dev/null || { cat "$work/host.log"; exit 1; }
    sleep 0.1
done
[ -n "$url" ] || { echo "the host never printed its API address"; cat "$work/host.log"; exit 1; }

# Real hashes and keys, so that requests reach past the 404s to the endpoints' logic.
python3 - "$url" "$here/schemathesis.toml" "$work/schemathesis.toml" <<'PY'
import json, sys, urllib.request
url, template, out = sys.argv[1:]
agents = json.load(urllib.request.urlopen(f"{url}/v1/agents"))["agents"]
quote = lambda values: "[" + ", ".join(json.dumps(v) for v in sorted(set(values))) + "]"
text = open(template).read()
text = text.replace("@MANIFESTS@", quote(a["manifest"] for a in agents))
text = text.replace("@PUBLISHERS@", quote(a["publisher"] for a in agents))
open(out, "w").write(text)
PY

"$venv/bin/schemathesis" --config-file "$work/schemathesis.toml" run "$url/v1/openapi.json" \
    --url "$url" --checks all --max-examples "$max_examples" --seed 7 --no-color
kill -0 "$host_pid" || { echo "the host died under the fuzzer"; cat "$work/host.log"; exit 1; }
