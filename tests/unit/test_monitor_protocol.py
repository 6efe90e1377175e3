"""A client never talks to a monitor of an older protocol: it says so instead of misbehaving."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from executor.monitor import PROTOCOL, Monitor, MonitorError, default_socket


def test_the_default_socket_is_named_by_the_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORGE_MONITOR_SOCKET", raising=False)
    assert default_socket().name == f"monitor-{PROTOCOL}.sock"


def test_an_older_monitor_on_the_socket_is_named_not_used(tmp_path: Path) -> None:
    """A monitor answering ping without the current protocol (one from an older Forge)."""
    path = tmp_path / "old.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)

    def answer() -> None:
        # As many pings as the client makes, until the test closes the socket.
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(
                    json.dumps({"ok": True, "pid": 4242, "supervised": 3}).encode() + b"\n"
                )

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        with pytest.raises(MonitorError, match=r"\(pid 4242\) is from an older Forge") as caught:
            Monitor(path).ensure_running()
        assert "FORGE_MONITOR_SOCKET" in caught.value.hint
    finally:
        server.shutdown(socket.SHUT_RDWR)  # wakes the accept
        server.close()
        thread.join(timeout=5)
