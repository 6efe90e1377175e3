#!/usr/bin/env bash
# Install the peers the container benchmarks compare Forge with: Debian's podman, configured as
# ../shared/PLATFORM.md says it runs on this machine kind, and podman-compose (PyPI) in a venv of
# its own, .venv-peers. Run as root. The benchmarks skip a comparison whose peer is missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export DEBIAN_FRONTEND=noninteractive
command -v podman >/dev/null || apt-get install -y -q podman
conf=/etc/containers/containers.conf
if [ ! -e "$conf" ]; then
  # nofile above runc's hard limit here fails every container; systemd's cgroup manager and
  # journald are not there in a container host like this one.
  cat > "$conf" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
CONF
fi
if [ ! -x "$root/.venv-peers/bin/podman-compose" ]; then
  python3 -m venv "$root/.venv-peers"
  "$root/.venv-peers/bin/pip" install -q podman-compose
fi
podman --version
"$root/.venv-peers/bin/podman-compose" --version | tail -1
