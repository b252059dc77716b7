"""The reproduction: unsafe disciplines are caught, the fixed server is clean, the guard is deterministic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from websockets.exceptions import ConnectionClosedError, ProtocolError
from websockets.sync.client import connect

from repro.checker import StreamSpec
from repro.client import ClientOptions, check_url
from repro.disciplines import serve
from repro.run import Workload, run_discipline

from .helpers import client_frame, pinging, raw_connect, read_server_frames, wait_until, ws_handshake

pytestmark = pytest.mark.timeout(120)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("discipline", ["direct", "locked", "simple-websocket", "simple-websocket+lock"])
def test_unsafe_disciplines_are_reported_corrupted(discipline: str) -> None:
    result = run_discipline(discipline, Workload())
    assert result.verdict == "CORRUPTED", result
    assert result.first_anomaly is not None and result.first_anomaly["hexdump"]


def test_queued_is_clean_on_the_same_workload() -> None:
    result = run_discipline("queued", Workload())
    assert result.verdict == "CLEAN", result
    assert result.valid == result.expected == 800
    assert result.close_code == 1000
    assert result.pongs > 0, "the client's pings were answered between data frames"


def test_queued_is_clean_with_deflate() -> None:
    result = run_discipline("queued", Workload(deflate=True, count=30))
    assert result.verdict == "CLEAN", result


def test_direct_with_deflate_breaks_the_shared_compressor() -> None:
    result = run_discipline("direct", Workload(deflate=True))
    assert result.verdict == "CORRUPTED", result


# -- the write guard: deterministic, no backpressure or luck needed ------------------


def _tiny_stream(port: int) -> None:
    check_url("127.0.0.1", port, "/stream?producers=2&count=3&size=64", StreamSpec(2, 3),
              ClientOptions(rcvbuf=None, ping_interval=None, time_limit=10))


@pytest.mark.parametrize("discipline", ["direct", "locked"])
def test_guard_catches_worker_writes_at_the_first_one(discipline: str) -> None:
    with serve(discipline, guard=True) as served:
        _tiny_stream(served.port)
        assert wait_until(lambda: len(served.violations()) >= 6, 5)
        first = served.violations()[0]
        assert first.kind == "wrong-thread"
        assert "producer" in first.thread and first.other == "wsrace-io"


def test_guard_catches_the_simple_websocket_reader_thread_pong() -> None:
    with serve("simple-websocket+lock", guard=True) as served:
        sock, _ = ws_handshake(served.port, "/echo")
        with sock:
            sock.sendall(client_frame(0x9, b"are you there"))  # no data at all: only the pong is written
            frames, _ = read_server_frames(sock, max_frames=1, timeout=5)
            assert frames == [(0xA, b"are you there")]
        violations = served.violations()
        assert len(violations) == 1, violations
        assert "simple_websocket.Base._thread" in violations[0].thread
        assert violations[0].other == "sws-conn"


def test_guard_finds_nothing_on_the_fixed_server() -> None:
    with serve("queued", guard=True) as served:
        _tiny_stream(served.port)
        summary, _ = check_url("127.0.0.1", served.port, "/stream?producers=8&count=50&size=65536", StreamSpec(8, 50),
                               ClientOptions(time_limit=30))
        assert summary.valid_messages == 400
        assert served.guards and sum(g.writes for g in served.guards) > 0
        assert served.violations() == []


# -- a third-party client agrees -----------------------------------------------------


def test_websockets_client_also_fails_against_direct() -> None:
    w = Workload()
    with serve("direct", sndbuf=w.sndbuf) as served:
        errors: list[BaseException] = []
        sock = raw_connect(served.port, rcvbuf=8192)  # a small window, so the server's writes block mid-frame
        try:
            with connect(f"ws://127.0.0.1:{served.port}{w.target}", sock=sock, max_size=None, compression=None) as ws, \
                    pinging(ws.ping, 0.0005):
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    ws.recv(timeout=10)  # websockets checks framing only: mixed payloads pass silently
        except (ConnectionClosedError, ProtocolError) as exc:
            errors.append(exc)
        assert errors, "websockets accepted a torn stream"
        text = f"{errors[0]} / cause: {errors[0].__cause__}"
        assert "1002" in text or "protocol" in text.lower(), text
        print("websockets said:", text)


# -- the command line -------------------------------------------------------------------


def test_cli_json_report_exits_0_when_everything_behaves_as_expected() -> None:
    proc = subprocess.run([sys.executable, "-m", "repro", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    verdicts = {r["discipline"]: r["verdict"] for r in report["results"]}
    assert verdicts == {"direct": "CORRUPTED", "locked": "CORRUPTED", "simple-websocket": "CORRUPTED",
                        "simple-websocket+lock": "CORRUPTED", "queued": "CLEAN"}
    assert "[5/5] queued" in proc.stderr  # progress is shown


def test_cli_exits_non_zero_with_the_reason_when_an_expectation_fails() -> None:
    # With one producer and tiny messages nothing can tear: 'direct' is not caught, and the report says so.
    proc = subprocess.run([sys.executable, "-m", "repro", "--disciplines", "direct", "--producers", "1", "--count", "5",
                           "--size", "64", "--ping-interval", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "expected to corrupt" in proc.stdout


def test_cli_rejects_unknown_discipline() -> None:
    proc = subprocess.run([sys.executable, "-m", "repro", "--disciplines", "nope"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2 and "unknown discipline" in proc.stderr


def test_serve_unsafe_mode_warns_and_serves() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "repro", "serve", "--mode", "direct", "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on ws://127.0.0.1:"), line
        port = int(line.split()[2].rsplit(":", 1)[1])
        with connect(f"ws://127.0.0.1:{port}/echo") as ws:
            ws.send("hi")
            assert ws.recv(timeout=5) == "hi"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert "UNSAFE ON PURPOSE" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
