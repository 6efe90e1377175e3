#!/usr/bin/env bash
# Set up, then run the linters and the whole test suite (as root, the integration tests drive
# real runc, wasmtime, network namespaces and nftables; without root they skip with a reason).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy forge forgefile compiler executor stdlib
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
