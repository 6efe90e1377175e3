#!/usr/bin/env bash
# Install everything Forge needs on a fresh Debian 12 machine, as root: the kernel-facing tools
# (runc, crun for `runtime = "crun"`, nftables, busybox-static for images, tini for
# `init = true`, clang + wasi-libc for WASM), peers used by the interoperability tests (skopeo,
# umoci), and a virtualenv at .venv with Forge installed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (Forge drives runc, network namespaces and nftables)" >&2
  exit 1
fi

packages=(runc crun busybox-static nftables iproute2 iputils-ping clang lld wasi-libc
          libclang-rt-14-dev-wasm32 skopeo umoci tini python3 python3-venv python3-pip)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[test]' --config-settings editable_mode=compat 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/forge version >/dev/null
