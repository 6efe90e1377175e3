#!/usr/bin/env bash
# The main job: set up, then build, plan, sign and apply examples/hello for real, and show
# the page served from the container, the job's line and exit code, the WASM module's result
# and `forge ps`. Run it again and the apply changes nothing; `forge destroy` removes it all.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh"

cd "$root/examples/hello"
forge() { "$root/.venv/bin/forge" "$@"; }

mkdir -p build
clang --target=wasm32-wasi -O2 -o build/greet.wasm wasm/greet.c

forge key list | grep -q default || forge key generate default
forge validate
forge build
forge plan -o build/hello.forgeplan
forge apply build/hello.forgeplan

url="$(forge output web_url)"
echo
echo "== the page, fetched from this host at $url"
"$root/.venv/bin/python" - "$url" <<'PY'
import sys, time, urllib.request
for attempt in range(50):
    try:
        print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode(), end="")
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit(f"could not fetch {sys.argv[1]}")
PY
echo
echo "== job.hello: its output, then its exit code"
forge logs job.hello
forge ps --json | "$root/.venv/bin/python" -c \
  'import json,sys; [print(w["address"], w["detail"]) for w in json.load(sys.stdin)["workloads"] if w["kind"] == "job"]'
echo
echo "== wasm.greet: its result"
forge logs wasm.greet
echo
forge ps
