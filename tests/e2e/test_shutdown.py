"""Graceful shutdown: SIGTERM -> clients see 1001, the process exits 0, no thread left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest
from websockets.sync.client import connect

from server import DemoApp, Limits, Server

from ..helpers import ROOT, drain_in_background

pytestmark = pytest.mark.timeout(60)



def _start_cli(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--port", "0", "--log-level", "WARNING", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "WSRACE_CHECK_AFFINITY": "1"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("listening on ws://127.0.0.1:"), (line, proc.stderr.read() if proc.stderr and proc.poll() is not None else "")
    return proc, line.split()[-1]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_closes_clients_with_1001_and_exits_0(signum: int) -> None:
    proc, url = _start_cli("--publishers", "2", "--rate", "200", "--max-queue-bytes", "262144")
    try:
        with connect(f"{url}/broadcast") as sub, connect(f"{url}/stream?producers=2&count=1000000&size=64") as stream:
            sub.recv(timeout=5)
            stream.recv(timeout=5)
            readers = [drain_in_background(ws) for ws in (sub, stream)]
            proc.send_signal(signum)
            for ws, reader in zip((sub, stream), readers, strict=True):
                reader.join(20)
                assert ws.close_code == 1001, (ws.close_code, ws.close_reason)
        assert proc.wait(timeout=20) == 0
        assert proc.stderr is not None
        stderr = proc.stderr.read()
        assert "Traceback" not in stderr, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_in_process_shutdown_leaves_no_thread() -> None:
    before = set(threading.enumerate())
    srv = Server(DemoApp, port=0, workers=4, limits=Limits(max_queue_bytes=256 * 1024)).start()
    srv.router.hub.start_tickers(2, 100)  # type: ignore[attr-defined]
    with connect(f"{srv.url}/echo") as ws, connect(f"{srv.url}/stream?producers=3&count=1000000&size=32") as st:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"
        st.recv(timeout=5)
        readers = [drain_in_background(c) for c in (ws, st)]
        assert srv.shutdown(timeout=10)
        for reader in readers:
            reader.join(20)
        assert st.close_code == 1001 and ws.close_code == 1001
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not left, f"threads left behind: {left}"


def test_port_in_use_is_a_clear_error() -> None:
    srv = Server(DemoApp, port=0).start()
    try:
        proc = subprocess.run([sys.executable, "-m", "server", "--port", str(srv.port)], cwd=ROOT,
                              capture_output=True, text=True, timeout=20)
        assert proc.returncode == 2
        assert "cannot listen" in proc.stderr
    finally:
        srv.shutdown()
