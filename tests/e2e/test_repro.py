"""The reproduction: unsafe disciplines are caught, the fixed server is clean, the guard is deterministic;
over wss:// the unsafe ones fail visibly (crash, TLS error, torn frames, server SSL errors), queued is clean."""

from __future__ import annotations

import functools
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosedError, ProtocolError
from websockets.sync.client import connect

from repro import certs as certs_module
from repro import cli as repro_cli
from repro import run as run_module
from repro.certs import CertError, CertFiles, make_cert_files
from repro.checker import StreamSpec
from repro.client import ClientOptions, check_url
from repro.disciplines import serve
from repro.run import Workload, run_discipline
from repro.server_proc import ServerProcess

from ..clients import connect_websockets
from ..helpers import ROOT, client_frame, pinging, raw_connect, read_server_frames, wait_until, ws_handshake

pytestmark = pytest.mark.timeout(120)


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


# -- over TLS (wss://): the TLS half of the bug ------------------------------------------

UNSAFE_TLS = ["direct", "locked", "simple-websocket", "simple-websocket+lock"]
# HUNG too: about 1 run in 500 of locked leaves the SSL object stuck (workers' SSL_write fails with an EOF
# nobody sent, nothing more arrives) and the client's time limit ends the run.
TLS_FAILURES = {"CRASHED", "TLS-ERROR", "CORRUPTED", "SERVER-ERROR", "HUNG"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_cert_files(tmp_path_factory.mktemp("repro-tls"))  # what python -m repro --tls uses


def test_queued_over_tls_is_clean(certs: CertFiles) -> None:
    result = run_discipline("queued", Workload(), tls=certs)
    assert result.verdict == "CLEAN", (result.verdict, result.symptoms)
    assert result.tls and result.label == "queued (wss)"
    assert result.valid == result.expected == 800
    assert result.close_code == 1000
    assert result.pongs > 0, "the client's pings were answered between data frames"
    assert result.server is not None and result.server["exit"] == "exit 0"
    assert result.server["report"]["counts"] == {}, "the server's SSL calls raised nothing"


@pytest.mark.parametrize("discipline", UNSAFE_TLS)
def test_unsafe_disciplines_fail_visibly_over_tls(discipline: str, certs: CertFiles) -> None:
    # Which failure comes first varies from run to run (README: "Over TLS"); that one comes did not: 30 of 30
    # runs of each discipline here, every one within 0.2 s.
    result = run_discipline(discipline, Workload(), tls=certs)
    assert result.verdict in TLS_FAILURES, (result.verdict, result.ended, result.symptoms)
    assert result.as_expected, result.reason
    assert result.valid < result.expected
    assert result.symptoms and result.signs


def test_a_server_crash_is_observed_and_reported(certs: CertFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    # No crash showed here on its own (README); the harness must still report one, not die of it.
    monkeypatch.setattr(run_module, "ServerProcess", functools.partial(ServerProcess, fault="segfault"))
    result = run_discipline("queued", Workload(time_limit=5), tls=certs)
    assert result.verdict == "CRASHED", (result.verdict, result.symptoms)
    assert result.server is not None and result.server["exit"] == "killed by SIGSEGV"
    assert any("Fatal Python error: Segmentation fault" in s for s in result.symptoms), result.symptoms
    assert not result.as_expected and "must be clean" in result.reason


def test_a_server_that_does_not_stop_is_killed_and_reported(certs: CertFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_module, "ServerProcess", functools.partial(ServerProcess, fault="hang", stop_timeout=1.0))
    result = run_discipline("queued", Workload(count=2, size=1000, ping_interval=None), tls=certs)
    assert result.verdict == "HUNG", (result.verdict, result.symptoms)
    assert result.valid == 16, "the stream itself was served"
    assert result.server is not None and result.server["exit"] == "did not stop (killed)"
    assert "Thread 0x" in result.server["stderr_tail"], "faulthandler dumped the stacks before the kill"


def test_an_eof_the_client_never_sent_is_a_server_error(certs: CertFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    # About 1 run in 100 of locked or direct, the server's SSL_read reports end of stream while the client
    # is still reading; without this the row said INCOMPLETE, as if the client had gone away.
    monkeypatch.setattr(run_module, "ServerProcess", functools.partial(ServerProcess, fault="eof"))
    result = run_discipline("queued", Workload(count=50, size=1000), tls=certs)
    assert result.verdict == "SERVER-ERROR", (result.verdict, result.ended, result.symptoms)
    assert result.ended == "EOF without a close frame"
    assert result.server is not None and result.server["report"]["eofs"] == {"IO thread": 1}
    assert any("end of stream though the client had not closed" in s for s in result.symptoms), result.symptoms
    assert "server read an EOF never sent" in result.signs
    assert not result.as_expected and "must be clean" in result.reason


def _handshake_works(files: CertFiles) -> bool:
    listener = socket.create_server(("127.0.0.1", 0))
    server_context = files.server_context()

    def serve_one() -> None:
        conn, _ = listener.accept()
        with server_context.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=5) as raw, \
                files.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.recv(2) == b"ok"
    finally:
        thread.join(5)
        listener.close()


@pytest.mark.parametrize("maker", ["trustme", "cryptography", "openssl"])
def test_throwaway_certificate_without_trustme(maker: str, tmp_path: Path) -> None:
    try:
        files = make_cert_files(tmp_path, prefer=[maker])
    except CertError:
        pytest.skip(f"{maker} fails here")
    if files.made_with != maker:
        pytest.skip(f"{maker} is not installed here")
    assert _handshake_works(files)
    assert files.key.stat().st_mode & 0o077 == 0, "the key is not readable by others"


def test_no_way_to_make_a_certificate_says_what_to_install(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def missing(*args: object) -> CertFiles:
        raise ImportError("not here")

    for name in ("_with_trustme", "_with_cryptography", "_with_openssl"):
        monkeypatch.setattr(certs_module, name, missing)
    assert repro_cli.main(["--tls", "--disciplines", "queued"]) == 2
    err = capsys.readouterr().err
    assert "pip install trustme" in err and "openssl" in err


def test_cli_tls_json_report(certs: CertFiles) -> None:
    proc = subprocess.run([sys.executable, "-m", "repro", "--tls", "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=110)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["tls"] is True
    verdicts = {r["label"]: r["verdict"] for r in report["results"]}
    assert verdicts.pop("queued (wss)") == "CLEAN"
    assert sorted(verdicts) == sorted(f"{d} (wss)" for d in UNSAFE_TLS)
    assert set(verdicts.values()) <= TLS_FAILURES, verdicts
    assert "[5/5] queued (wss)" in proc.stderr


def test_serve_tls_prints_wss_and_the_ca_and_serves() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "repro", "serve", "--mode", "simple-websocket+lock", "--tls", "--port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on wss://127.0.0.1:"), line
        port = int(line.split()[2].rsplit(":", 1)[1])
        ca_line = proc.stdout.readline()
        ca = ca_line.split("trust its CA: ", 1)[1].split()[0]
        assert Path(ca).is_file(), ca_line
        context = ssl.create_default_context(cafile=ca)
        with connect_websockets(port, "/echo", context) as ws:  # taking-turns TLS (tests/clients.py)
            ws.send("hi over TLS")
            assert ws.recv(timeout=5) == "hi over TLS"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert "UNSAFE ON PURPOSE" in proc.stderr.read()
        assert not Path(ca).exists(), "the throwaway certificate is removed when the server stops"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
