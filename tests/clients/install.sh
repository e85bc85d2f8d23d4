#!/usr/bin/env bash
# Installs the outside clients the tests speak to agora with, pinned, from their registries into
# target/toolchains/: the official Python MCP SDK (`mcp` on PyPI). Needs Python 3.11+ with pip.
# The tests that use a client fail, saying to run this, if it is missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
mcp_version=2.3.0

venv="$target/toolchains/mcp-$mcp_version"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import mcp" 2>/dev/null; then
    echo "installing the Python MCP SDK (mcp $mcp_version) from PyPI into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "mcp==$mcp_version"
fi
