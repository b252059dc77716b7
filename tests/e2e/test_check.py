"""``wsrace-check``: real servers, no mocks. Detection rates and times are a measurement
(bench/check_detection.py, figures in the README), not asserted here: these tests do a few runs each
and assert what a broken checker could not produce.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from repro.check import check

from ..check_servers import ROOT, flask_sock_server, repro_server, websockets_echo_server
from ..helpers import running_server

pytestmark = pytest.mark.timeout(90)

FRAMING_OR_ECHO = {"masked-frame", "reserved-bits", "unknown-opcode", "non-minimal-length", "implausible-length",
                   "control-too-long", "invalid-utf8", "echo-mismatch", "echo-duplicate", "expected-continuation",
                   "unexpected-continuation", "control-fragmented", "bad-close", "deflate-error"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "repro", "check", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _assert_detected(result) -> None:
    assert result.verdict == "CORRUPTED", result.report()
    assert set(result.anomalies) & FRAMING_OR_ECHO, result.anomalies
    first = result.first_anomaly
    assert first is not None and first["hexdump"], result.report()
    assert "first anomaly" in result.report() and "|" in str(first["hexdump"])
    assert result.exit_code == 1


# -- echo mode against real servers --------------------------------------------------------


def test_our_fixed_server_is_clean(server) -> None:
    result = check(f"ws://127.0.0.1:{server.port}/echo", runs=2, time_limit=40)
    assert result.clean, result.report()
    assert len(result.runs) == 2 and all(r.valid == r.expected == 400 for r in result.runs)
    assert all(r.pongs > 0 and r.close_code == 1000 for r in result.runs), "pings were answered; the close handshake finished"
    assert result.exit_code == 0


def test_websockets_asyncio_echo_server_is_clean() -> None:
    with websockets_echo_server() as port:
        result = check(f"ws://127.0.0.1:{port}/", runs=2, time_limit=40)
    assert result.clean, result.report()
    assert sum(r.valid for r in result.runs) == 800


@pytest.mark.timing  # under coverage 1 of 8 runs showed it (measured); at full speed 8 of 8
@pytest.mark.parametrize("attempt", [1, 2])
def test_flask_sock_app_replying_from_a_pool_is_detected(attempt: int) -> None:
    with flask_sock_server() as port:
        result = check(f"ws://127.0.0.1:{port}/echo")  # the defaults
    _assert_detected(result)


@pytest.mark.timing  # under coverage's tracing the race showed in 0-5 of 8 runs (measured); at full speed 8 of 8
def test_flask_sock_app_with_a_lock_is_still_detected() -> None:
    """The lock keeps the pool's workers apart, not the reader thread's pongs."""
    with flask_sock_server(lock=True) as port:
        result = check(f"ws://127.0.0.1:{port}/echo")
    _assert_detected(result)


# -- the command line --------------------------------------------------------------------


def test_cli_against_repro_direct_exits_1_with_the_hexdump() -> None:
    with repro_server("direct") as port:
        proc = _cli(f"ws://127.0.0.1:{port}/echo", "--runs", "3", "--time-limit", "30")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "CORRUPTED" in proc.stdout and "run 1: first anomaly:" in proc.stdout
    assert re.search(r"\[[0-9a-f]{2}\]", proc.stdout.split("first anomaly", 1)[1]), "the hex dump marks the first bad byte"
    assert "[run 1/3]" in proc.stderr  # progress on stderr


def test_cli_json_against_our_server_exits_0() -> None:
    with running_server() as srv:
        proc = _cli(f"ws://127.0.0.1:{srv.port}/echo", "--runs", "1", "--messages", "100", "--json", "--header", "X-Token: s3cret")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["verdict"] == "CLEAN" and report["runs"][0]["valid"] == 100
    assert "s3cret" not in proc.stdout


def test_cli_connection_and_usage_errors_exit_2() -> None:
    refused = subprocess.run([os.path.join(os.path.dirname(sys.executable), "wsrace-check"), f"ws://127.0.0.1:{_free_port()}/echo"],
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "cannot connect" in refused.stderr, refused.stderr
    wss = _cli(f"wss://127.0.0.1:{_free_port()}/echo")
    assert wss.returncode == 2 and "cannot connect" in wss.stderr, wss.stderr
    plain_with_ca = _cli("ws://127.0.0.1:1/echo", "--insecure")
    assert plain_with_ca.returncode == 2 and "for wss:// URLs" in plain_with_ca.stderr, plain_with_ca.stderr
    bad = _cli("ws://127.0.0.1:1/echo", "--min-size", "1m", "--max-size", "1k")
    assert bad.returncode == 2 and "min size" in bad.stderr


def test_a_push_endpoint_in_echo_mode_is_incomplete_not_clean_nor_corrupted() -> None:
    with running_server() as srv:
        result = check(f"ws://127.0.0.1:{srv.port}/stream?producers=2&count=5&size=64", runs=1, messages=20, time_limit=20)
    assert result.verdict == "INCOMPLETE" and result.exit_code == 2, result.report()
    assert "none of the 10 message(s)" in result.sentence and "--mode drain" in result.sentence


# -- drain mode ----------------------------------------------------------------------------


def test_drain_mode_clean_on_our_stream_and_corrupted_on_direct() -> None:
    target = "/stream?producers=8&count=40&size=262144"
    with running_server() as srv:
        clean = check(f"ws://127.0.0.1:{srv.port}{target}", mode="drain", runs=1, time_limit=20)
    assert clean.clean, clean.report()
    assert clean.runs[0].valid == 320 and clean.runs[0].close_code == 1000
    with repro_server("direct") as port:
        broken = check(f"ws://127.0.0.1:{port}{target}", mode="drain", runs=3, time_limit=20)
    _assert_detected(broken)


# -- the pytest plugin in a user's project ---------------------------------------------------


def test_pytest_plugin_gives_a_user_project_the_fixture(tmp_path) -> None:
    (tmp_path / "test_user.py").write_text(textwrap.dedent("""
        import os

        def test_clean_server(wsrace_check):
            result = wsrace_check(os.environ["CLEAN_URL"], runs=1, messages=50)
            assert result.clean, result.report()

        def test_broken_server(wsrace_check):
            result = wsrace_check(os.environ["BROKEN_URL"], runs=3)
            assert result.clean, result.report()
    """))
    with running_server() as srv, repro_server("direct") as port:
        env = os.environ | {"CLEAN_URL": f"ws://127.0.0.1:{srv.port}/echo", "BROKEN_URL": f"ws://127.0.0.1:{port}/echo"}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=60)
    out = proc.stdout
    assert proc.returncode == 1, out[-3000:]
    assert "1 failed, 1 passed" in out, out[-3000:]
    assert "AssertionError: wsrace-check ws://127.0.0.1" in out and "run 1: first anomaly:" in out, out[-3000:]
    assert "CORRUPTED" in out and re.search(r"\[[0-9a-f]{2}\]", out.split("first anomaly", 1)[1]), "the message carries the hex dump"


def _tls_server_that_splices_into_its_record_stream(tls_files, garbage: bytes) -> tuple[socket.socket, threading.Thread]:
    """A TLS server that answers the upgrade, then writes ``garbage`` under the SSL layer (as a racing thread would)."""
    listener = socket.create_server(("127.0.0.1", 0))
    context = tls_files.server_context()

    def serve() -> None:
        with listener:
            raw, _ = listener.accept()
            with context.wrap_socket(raw, server_side=True) as sock:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += sock.recv(4096)
                key = re.search(rb"(?i)sec-websocket-key: *(\S+)", request)
                assert key is not None
                accept = base64.b64encode(hashlib.sha1(key[1] + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
                sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
                sock.sendall(b"\x82\x05hello")
                socket.socket.send(sock, garbage)  # below TLS: the client's record layer must notice
                sock.settimeout(5)
                with contextlib.suppress(OSError):
                    sock.recv(4096)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def test_a_broken_tls_record_stream_is_corrupted_not_incomplete(tls_files) -> None:
    # An application-data record header with a bogus body: the client's AEAD check fails (bad record MAC).
    listener, thread = _tls_server_that_splices_into_its_record_stream(tls_files, b"\x17\x03\x03\x00\x40" + os.urandom(64))
    port = listener.getsockname()[1]
    result = check(f"wss://127.0.0.1:{port}/", ssl_context=tls_files.client_context(), mode="drain", runs=1,
                   time_limit=10)
    thread.join(10)
    assert result.verdict == "CORRUPTED", result
    assert "TLS records themselves were corrupted" in result.sentence and result.exit_code == 1
