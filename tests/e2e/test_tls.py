"""wss:// on our server: the CLI with a certificate, bad inputs on the TLS port, shutdown, the affinity check,
and the want-write path (a TLS write is retried with the same bytes, and a failing connection never tears a frame).

The certificate is the throwaway CA of tests/tls.py (``tls_files``). Every bad input is followed by a healthy
wss:// client served normally, with the server's counters checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from repro.checker import StreamSpec, Summary, WireChecker
from repro.client import ClientOptions, check_url
from repro.disciplines import KnobServer, serve
from server import DemoApp, Limits, Server
from server.connections.connection import Connection
from server.connections.handle import ConnectionHandle
from server.core.sendbuffer import SendBuffer
from server.core.tls import TlsTransport
from server.demo import streamformat

from ..check_servers import ROOT
from ..clients import connect_websockets
from ..helpers import (
    StreamCheck,
    client_frame,
    drain_in_background,
    echo_works,
    raised_on,
    raw_connect,
    read_server_frames,
    running_server,
    stop_process,
    upgrade_request,
    wait_until,
    ws_handshake,
)
from ..tls import TLSFiles, make_tls_files

pytestmark = pytest.mark.timeout(60)

HANDSHAKE_TIMEOUT = 3.0  # the small Limits.handshake_timeout of the bad-input server ("at once": well under it)
SLACK = 2.5  # "within the handshake timeout": closed no later than this past it (a loaded 2-core machine)


# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def tls_server(tls_files: TLSFiles, caplog: pytest.LogCaptureFixture) -> Iterator[Server]:
    """Our server on wss:// with a short handshake timeout (HANDSHAKE_TIMEOUT); INFO logs captured."""
    caplog.set_level(logging.INFO, logger="server")
    with running_server(Limits(ping_interval=None, handshake_timeout=HANDSHAKE_TIMEOUT),
                        ssl_context=tls_files.server_context()) as srv:
        yield srv


def client_hello(context: ssl.SSLContext) -> bytes:
    """A real ClientHello from ``context`` (the first flight of a TLS handshake), made in memory."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) > 100, hello[:16]
    return hello


def wait_closed_by_server(sock: socket.socket, within: float) -> tuple[float, bytes]:
    """Read until the server closes (EOF or reset); return the seconds it took and what arrived."""
    started = time.monotonic()
    sock.settimeout(within)
    chunks = []
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server did not close the connection within {within} s; it sent {b''.join(chunks)[:100]!r}")
    return time.monotonic() - started, b"".join(chunks)


def assert_healthy_client_served(srv: Server, tls_files: TLSFiles) -> None:
    """A healthy wss:// client is served normally after whatever came before, and nothing is left behind."""
    opened = srv.stats.opened
    assert echo_works(srv.port, ssl_context=tls_files.client_context())
    assert srv.stats.opened == opened + 1
    assert wait_until(lambda: not srv.connections, 5), f"connections left: {srv.connections}"


def counters(srv: Server) -> dict[str, int]:
    stats = srv.stats.as_dict()
    return {k: stats[k] for k in ("accepted", "opened", "closed", "handshake_timeouts", "tls_handshake_errors",
                                  "http_errors", "protocol_errors")}


def expect_counters(srv: Server, **expected: int) -> None:
    """The server's counters reach ``expected`` (those named; the others stay 0) within a second or two.

    A client sees the close before the IO thread has finished counting it, hence the wait.
    """
    want = {name: expected.get(name, 0) for name in counters(srv)}
    wait_until(lambda: counters(srv) == want, 10)
    assert counters(srv) == want


def info_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("server") and r.levelno == logging.INFO]


# -- (a) the command line with a certificate ---------------------------------------------------


def _server_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server", "--port", "0", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)


def _wsrace_check(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "wsrace-check"), url, *args],
                          capture_output=True, text=True, timeout=60)


def test_cli_serves_wss_the_page_over_https_and_passes_the_strict_checker(tls_files: TLSFiles) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "server", "--certfile", str(tls_files.cert), "--keyfile",
                             str(tls_files.key), "--port", "0", "--log-level", "WARNING"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "WSRACE_CHECK_AFFINITY": "1"})
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on wss://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split()[-1]
        port = int(url.rsplit(":", 1)[1])

        with urllib.request.urlopen(f"https://127.0.0.1:{port}/", context=tls_files.client_context(), timeout=10) as page:
            assert page.status == 200 and page.headers.get_content_type() == "text/html"
            assert b"<title>wsrace" in page.read()

        cafile = ("--cafile", str(tls_files.ca))
        # echo mode: the checker pings after every message and from its pinger thread every 0.5 ms (its defaults)
        for deflate in ((), ("--deflate",)):
            echo = _wsrace_check(f"{url}/echo", *cafile, *deflate, "--runs", "1", "--messages", "50")
            assert echo.returncode == 0 and "CLEAN" in echo.stdout, echo.stdout[-2000:] + echo.stderr[-2000:]
            drain = _wsrace_check(f"{url}/stream?producers=8&count=10&size=262144", *cafile, *deflate, "--mode", "drain",
                                  "--runs", "1")
            assert drain.returncode == 0 and "CLEAN" in drain.stdout and "80 messages" in drain.stdout, \
                drain.stdout[-2000:] + drain.stderr[-2000:]

        # shutdown over TLS from the command line: SIGTERM, the client sees 1001, the process exits 0
        with connect_websockets(port, "/echo", tls_files.client_context()) as ws:
            ws.send("before SIGTERM")
            assert ws.recv(timeout=5) == "before SIGTERM"
            reader = drain_in_background(ws)
            proc.send_signal(signal.SIGTERM)
            reader.join(20)
            assert ws.close_code == 1001, (ws.close_code, ws.close_reason)
        assert proc.wait(timeout=20) == 0
        stderr = proc.stderr.read()
        assert "Traceback" not in stderr and "ERROR" not in stderr, stderr[-3000:]
    finally:
        stop_process(proc)


def test_cli_refuses_a_lone_certfile_or_keyfile_with_exit_2(tls_files: TLSFiles) -> None:
    for args in (("--certfile", str(tls_files.cert)), ("--keyfile", str(tls_files.key))):
        proc = _server_cli(*args)
        assert proc.returncode == 2, proc
        # argparse's usage, then one line that says what is wrong
        assert proc.stderr.strip().splitlines()[-1] == (
            "wsrace-server: error: --certfile and --keyfile go together: give both for wss://, or neither"), proc.stderr


def test_cli_unusable_certificate_or_key_is_one_clear_line_and_exit_2(tls_files: TLSFiles, tmp_path) -> None:
    other = make_tls_files(tmp_path)  # another CA's server key: does not match tls_files.cert
    junk = tmp_path / "junk.pem"
    junk.write_text("this is not PEM\n")
    missing = tmp_path / "missing.pem"
    cases = {
        "missing certificate": ((missing, tls_files.key), [f"cannot read --certfile {missing}", "No such file"]),
        "missing key": ((tls_files.cert, missing), [f"cannot read --keyfile {missing}", "No such file"]),
        "a directory": ((tls_files.cert, tmp_path), [f"cannot read --keyfile {tmp_path}"]),
        "mismatched key": ((tls_files.cert, other.key), [f"the key in {other.key} does not belong to the certificate in "
                                                         f"{tls_files.cert}"]),
        "certificate not PEM": ((junk, tls_files.key), [f"--certfile {junk} holds no PEM certificate"]),
        "key not PEM": ((tls_files.cert, junk), [f"--keyfile {junk} holds no PEM private key"]),
        "certificate where the key goes": ((tls_files.cert, tls_files.cert), [f"--keyfile {tls_files.cert} holds no PEM"]),
    }
    for name, ((cert, key), phrases) in cases.items():
        proc = _server_cli("--certfile", str(cert), "--keyfile", str(key))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and proc.stdout == "", (name, proc)
        assert len(lines) == 1 and lines[0].startswith("wsrace-server: "), (name, proc.stderr)
        assert all(phrase in lines[0] for phrase in phrases), (name, lines[0])


# -- (b) bad inputs on the TLS port ------------------------------------------------------------


def test_silent_client_is_closed_within_the_handshake_timeout(tls_server: Server, tls_files: TLSFiles, caplog) -> None:
    with raw_connect(tls_server.port) as sock:
        took, got = wait_closed_by_server(sock, HANDSHAKE_TIMEOUT + SLACK)
    assert got == b"", "nothing can be said to a client that has not begun TLS"
    assert took >= HANDSHAKE_TIMEOUT - 0.5, f"closed after {took:.2f} s, before the handshake timeout"
    expect_counters(tls_server, accepted=1, closed=1, handshake_timeouts=1)
    assert any("no TLS handshake within" in line for line in info_lines(caplog)), info_lines(caplog)
    assert_healthy_client_served(tls_server, tls_files)


def test_plain_http_gets_a_plaintext_400_saying_the_port_speaks_tls(tls_server: Server, tls_files: TLSFiles, caplog) -> None:
    with raw_connect(tls_server.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        took, got = wait_closed_by_server(sock, HANDSHAKE_TIMEOUT + SLACK)
    assert got.startswith(b"HTTP/1.1 400 "), got[:200]
    assert b"this port speaks TLS" in got and b"https://" in got and b"wss://" in got, got
    assert took < HANDSHAKE_TIMEOUT, f"answered after {took:.2f} s: at the timeout, not at once"
    expect_counters(tls_server, accepted=1, closed=1, tls_handshake_errors=1)
    assert any("TLS handshake failed" in line and "HTTP_REQUEST" in line for line in info_lines(caplog)), info_lines(caplog)
    assert_healthy_client_served(tls_server, tls_files)


def test_plain_websocket_upgrade_gets_the_400_too(tls_server: Server, tls_files: TLSFiles) -> None:
    with raw_connect(tls_server.port) as sock:
        sock.sendall(upgrade_request("/echo"))
        _, got = wait_closed_by_server(sock, HANDSHAKE_TIMEOUT + SLACK)
    assert got.startswith(b"HTTP/1.1 400 ") and b"this port speaks TLS" in got, got[:200]
    expect_counters(tls_server, accepted=1, closed=1, tls_handshake_errors=1)
    assert_healthy_client_served(tls_server, tls_files)


def test_truncated_client_hello_then_silence_is_closed_at_the_handshake_timeout(tls_server: Server, tls_files: TLSFiles) -> None:
    hello = client_hello(tls_files.client_context())
    with raw_connect(tls_server.port) as sock:
        sock.sendall(hello[: len(hello) // 2])
        took, got = wait_closed_by_server(sock, HANDSHAKE_TIMEOUT + SLACK)
    assert got == b"" and took >= HANDSHAKE_TIMEOUT - 0.5, (took, got[:100])
    expect_counters(tls_server, accepted=1, closed=1, handshake_timeouts=1)
    assert_healthy_client_served(tls_server, tls_files)


@pytest.mark.parametrize("garbage", [
    pytest.param(random.Random(9).randbytes(2000), id="random-bytes"),
    # A handshake record header that promises 300 bytes, and 300 bytes that are no ClientHello.
    pytest.param(b"\x16\x03\x01\x01\x2c" + random.Random(10).randbytes(300), id="handshake-record-of-garbage"),
])
def test_garbage_is_refused_at_once(garbage: bytes, tls_server: Server, tls_files: TLSFiles, caplog) -> None:
    with raw_connect(tls_server.port) as sock:
        sock.sendall(garbage)
        took, _ = wait_closed_by_server(sock, HANDSHAKE_TIMEOUT + SLACK)
    assert took < HANDSHAKE_TIMEOUT, f"closed after {took:.2f} s: at the timeout, not at once"
    expect_counters(tls_server, accepted=1, closed=1, tls_handshake_errors=1)
    assert any("TLS handshake failed" in line for line in info_lines(caplog)), info_lines(caplog)
    assert_healthy_client_served(tls_server, tls_files)


@pytest.mark.parametrize("sent", ["nothing", "half-a-client-hello", "a-client-hello"])
def test_reset_in_the_middle_of_the_handshake(sent: str, tls_server: Server, tls_files: TLSFiles) -> None:
    hello = client_hello(tls_files.client_context())
    sock = raw_connect(tls_server.port)
    assert wait_until(lambda: tls_server.stats.accepted == 1, 5)
    if sent != "nothing":
        sock.sendall(hello if sent == "a-client-hello" else hello[: len(hello) // 2])
        if sent == "a-client-hello":  # the server's first flight (ServerHello ... Finished) arrives: it is mid-handshake
            sock.settimeout(5)
            assert sock.recv(65536)[:1] == b"\x16"
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST
    # Gone well before the handshake timeout: the reset is seen when the server next reads.
    assert wait_until(lambda: not tls_server.connections, HANDSHAKE_TIMEOUT - 0.1, 0.005), tls_server.connections
    expect_counters(tls_server, accepted=1, closed=1, tls_handshake_errors=1)
    assert_healthy_client_served(tls_server, tls_files)


def test_many_silent_tls_sockets_at_once_leave_nothing_behind(tls_server: Server, tls_files: TLSFiles) -> None:
    """100 sockets at once, half silent, half stopping inside a ClientHello: a healthy client is served meanwhile,
    and every one of them is closed at the handshake timeout, leaving no connection behind."""
    hello = client_hello(tls_files.client_context())
    socks = [raw_connect(tls_server.port) for _ in range(100)]
    try:
        for i, sock in enumerate(socks):
            if i % 2:
                sock.sendall(hello[: 1 + i % (len(hello) - 1)])  # stops at a different byte each time
        started = time.monotonic()
        assert echo_works(tls_server.port, ssl_context=tls_files.client_context())
        assert time.monotonic() - started < HANDSHAKE_TIMEOUT + SLACK
        for sock in socks:
            _, got = wait_closed_by_server(sock, HANDSHAKE_TIMEOUT + SLACK)
            assert got == b""
    finally:
        for sock in socks:
            sock.close()
    assert wait_until(lambda: not tls_server.connections, 5), f"{len(tls_server.connections)} connections left"
    expect_counters(tls_server, accepted=101, opened=1, closed=101, handshake_timeouts=100)
    assert_healthy_client_served(tls_server, tls_files)


# -- (c) shutdown over TLS: 1001 ---------------------------------------------------------------


def test_shutdown_over_tls_closes_websockets_and_the_strict_checker_with_1001(tls_files: TLSFiles) -> None:
    endless = "/stream?producers=2&count=1000000&size=64"
    srv = Server(DemoApp, port=0, workers=4,
                 limits=Limits(ping_interval=None, max_queue_bytes=256 * 1024), ssl_context=tls_files.server_context())
    srv.start()
    stream_check = StreamCheck(2, 1000000)  # every message the strict checker accepts: CRC and per-producer order

    def verify(opcode: int, data: bytes) -> None:
        stream_check.add(data)

    checked: list[tuple[Summary, str]] = []
    checker = threading.Thread(target=lambda: checked.append(check_url(
        "127.0.0.1", srv.port, endless, None,
        ClientOptions(rcvbuf=None, ping_interval=0.01, deflate=True, time_limit=30, ssl_context=tls_files.client_context()),
        verify=verify)))
    try:
        with connect_websockets(srv.port, "/echo", tls_files.client_context()) as echo, \
             connect_websockets(srv.port, endless, tls_files.client_context()) as stream:
            echo.send("before the shutdown")
            assert echo.recv(timeout=5) == "before the shutdown"
            stream.recv(timeout=5)
            checker.start()
            assert wait_until(lambda: len(srv.open_connections()) == 3 and stream_check.received > 0, 10)
            readers = [drain_in_background(ws) for ws in (echo, stream)]
            assert srv.shutdown(timeout=10), "the shutdown had to cut connections"
            for reader in readers:
                reader.join(20)
            assert (echo.close_code, stream.close_code) == (1001, 1001), (echo.close_code, stream.close_code)
        checker.join(30)
        (summary, ended), = checked
        assert summary.close_code == 1001 and not summary.anomalies, (summary, ended)
        assert not stream_check.errors and summary.valid_messages == stream_check.received > 0, stream_check.errors[:3]
    finally:
        srv.shutdown(timeout=5)


# -- (d) the affinity check covers TLS reads and writes ------------------------------------------


def _rogue_buffer() -> SendBuffer:
    buffer = SendBuffer(release=lambda size: None)
    buffer.append((b"\x81\x05rogue",), 0, 7)  # something to write: a text frame "rogue"
    return buffer


def _open_tls_echo(srv: Server, tls_files: TLSFiles) -> tuple[socket.socket, bytes, Connection]:
    sock, rest = ws_handshake(srv.port, "/echo", ssl_context=tls_files.client_context())
    assert wait_until(lambda: len(srv.open_connections()) == 1, 5)
    (conn,) = srv.registry.connections()
    assert isinstance(conn.transport, TlsTransport) and conn.transport.version in ("TLSv1.2", "TLSv1.3")
    idle = threading.Event()  # the IO thread has finished writing the 101
    srv.loop.post(idle.set)
    assert idle.wait(5)
    return sock, rest, conn


def test_off_thread_tls_write_and_read_raise_naming_the_thread(tls_server: Server, tls_files: TLSFiles) -> None:
    sock, _, conn = _open_tls_echo(tls_server, tls_files)
    with sock:
        buffer = _rogue_buffer()
        message = raised_on("rogue-tls-writer", lambda: conn.transport.write(buffer))
        assert "TLS write to" in message and "rogue-tls-writer" in message and "wsrace-io" in message, message
        assert buffer.frames, "nothing may have been written"

        message = raised_on("rogue-tls-reader", conn.transport.read)
        assert "TLS read from" in message and "rogue-tls-reader" in message and "wsrace-io" in message, message


def test_a_refused_off_thread_tls_write_leaves_the_connection_unharmed(tls_server: Server, tls_files: TLSFiles) -> None:
    """The check runs before the transport changes anything: nothing of the refused write goes out later."""
    sock, rest, conn = _open_tls_echo(tls_server, tls_files)
    with sock:
        assert raised_on("rogue-tls-writer", lambda: conn.transport.write(_rogue_buffer()))
        sock.sendall(client_frame(0x1, b"after the rogue call"))
        frames, _ = read_server_frames(sock, rest, timeout=3, max_frames=1)
        assert frames == [(0x1, b"after the rogue call")], "the refused write's bytes reached the client"


def _nothing() -> None:
    pass


# -- (e) want-write: a TLS write is retried with the same bytes; a failing connection never tears a frame ----------


@dataclass
class TlsSends:
    """Every ``SSLSocket.send`` of the server's TLS connections: which bytes, and what OpenSSL said."""

    calls: list[tuple[int, int, str, str]] = field(default_factory=list)  # (socket, length, digest, outcome)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, sock: object, data: bytes | memoryview, outcome: str) -> None:
        digest = hashlib.blake2b(data, digest_size=8).hexdigest()
        with self.lock:
            self.calls.append((id(sock), len(data), digest, outcome))

    def snapshot(self) -> list[tuple[int, int, str, str]]:
        with self.lock:
            return list(self.calls)

    def want_writes(self) -> int:
        return sum(outcome == "want-write" for *_, outcome in self.snapshot())

    def assert_retried_with_the_same_bytes(self) -> None:
        """After a want-write, the next send on that socket offers the same bytes; every send that returns wrote all."""
        last: dict[int, tuple[int, str, str]] = {}
        for sock, length, digest, outcome in self.snapshot():
            before = last.get(sock)
            if before is not None and before[2] == "want-write":
                assert (length, digest) == before[:2], (
                    f"after a want-write of {before[0]} bytes, the retry offered {length} bytes with other contents")
            assert outcome != "partial", f"a send wrote part of its {length} bytes"
            last[sock] = (length, digest, outcome)


@pytest.fixture
def tls_sends(monkeypatch: pytest.MonkeyPatch) -> TlsSends:
    """Record the server side's ``SSLSocket.send`` calls (clients' sockets pass through untouched)."""
    sends = TlsSends()
    real_send = ssl.SSLSocket.send

    def send(self: ssl.SSLSocket, data: bytes, flags: int = 0) -> int:
        if not self.server_side:
            return real_send(self, data, flags)
        try:
            sent = real_send(self, data, flags)
        except ssl.SSLWantWriteError:
            sends.record(self, data, "want-write")
            raise
        except ssl.SSLWantReadError:
            sends.record(self, data, "want-read")
            raise
        sends.record(self, data, "sent" if sent == len(data) else "partial")
        return sent

    monkeypatch.setattr(ssl.SSLSocket, "send", send)
    return sends


def _read_to_the_end(sock: socket.socket, rest: bytes, spec: StreamSpec, timeout: float = 20, chunk: int = 65536,
                     pause: float = 0.0) -> WireChecker:
    """Feed the strict checker everything up to the close (or EOF, or ``timeout``); ``pause`` after each read."""
    checker = WireChecker(stream=spec)
    checker.feed(rest)
    deadline = time.monotonic() + timeout
    while not checker.done and time.monotonic() < deadline:
        data = sock.recv(chunk)
        if not data:
            break
        checker.feed(data)
        if pause:
            time.sleep(pause)
    return checker


SLOW_STREAM = StreamSpec(4, 8)  # 4 producers x 8 messages of 256 KiB: 8 MiB
SLOW_TARGET = f"/stream?producers={SLOW_STREAM.producers}&count={SLOW_STREAM.count}&size=262144"


def test_slow_reader_with_small_buffers_gets_every_byte_through_want_write_retries(tls_files: TLSFiles, tls_sends: TlsSends) -> None:
    with serve("queued", sndbuf=16384, ssl_context=tls_files.server_context()) as served:
        sock = raw_connect(served.port, 10, rcvbuf=4096, ssl_context=tls_files.client_context())
        with sock:
            sock.sendall(upgrade_request(SLOW_TARGET))
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(65536)
            assert head.startswith(b"HTTP/1.1 101"), head[:100]
            # A slow reader: 16 KiB at a time with a pause, so the server's socket stays full.
            checker = _read_to_the_end(sock, head.split(b"\r\n\r\n", 1)[1], SLOW_STREAM, 40, chunk=16384, pause=0.002)
    summary = checker.summary()
    assert not summary.anomalies, {k: (a.count, a.detail) for k, a in summary.anomalies.items()}
    assert summary.valid_messages == 32 and summary.close_code == 1000, summary
    assert tls_sends.want_writes() >= 10, f"the server's TLS writes met want-write {tls_sends.want_writes()} times"
    tls_sends.assert_retried_with_the_same_bytes()


class _Burst:
    """A route that queues 64 messages of 20,000 bytes (the /stream format, producer 0) on open and stays open.

    Each frame is two buffers (header, payload): a TLS write joins them up to 128 KiB (TLS_CHUNK), so it holds six
    whole frames and the header of the seventh, and a write left pending begins on a frame boundary: only
    ``Outbox.in_flight`` says which queued frames its bytes belong to.
    """

    COUNT, SIZE = 64, 20000  # 1.25 MiB

    def __init__(self, server: Server) -> None:
        pass

    def route(self, request: object) -> _Burst:
        return self

    def on_open(self, conn: ConnectionHandle) -> None:
        for seq in range(self.COUNT):  # on the IO thread: queued at once, whatever the limit
            conn.send(streamformat.encode(0, seq, self.SIZE))

    def on_message(self, conn: ConnectionHandle, message: str | bytes) -> None:
        pass

    def on_close(self, conn: ConnectionHandle) -> None:
        pass


@contextlib.contextmanager
def _burst_server(tls_files: TLSFiles, limits: Limits) -> Iterator[Server]:
    """A TLS server with a 16 KiB SO_SNDBUF whose every connection gets :class:`_Burst`."""
    srv = KnobServer(_Burst, port=0, limits=limits, ssl_context=tls_files.server_context())
    srv.sndbuf = 16384
    srv.start()
    try:
        yield srv
    finally:
        assert srv.shutdown(timeout=10)


def _stop_reading_until_a_tls_write_is_pending(srv: Server, tls_files: TLSFiles, tls_sends: TlsSends) -> tuple[ssl.SSLSocket, bytes]:
    """Open a burst connection through a 4 KiB window and read nothing more: the server's TLS write stays pending."""
    sock = raw_connect(srv.port, 10, rcvbuf=4096, ssl_context=tls_files.client_context())
    assert isinstance(sock, ssl.SSLSocket)
    sock.sendall(upgrade_request("/"))
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 101"), first[:100]

    def blocked() -> bool:  # the server's last TLS send met want-write, and nothing moved since
        calls = tls_sends.snapshot()
        time.sleep(0.05)
        return bool(calls) and calls[-1][3] == "want-write" and tls_sends.snapshot() == calls

    assert wait_until(blocked, 10), "the server's TLS write never stayed pending"
    return sock, first.split(b"\r\n\r\n", 1)[1]




def test_protocol_error_while_a_tls_write_is_pending_never_tears_a_frame(tls_files: TLSFiles, tls_sends: TlsSends) -> None:
    """A bad frame from a client whose TLS write is pending: the close 1002 follows the pending bytes (retried as
    they were) on a frame boundary."""
    with _burst_server(tls_files, Limits(ping_interval=None)) as srv:
        sock, rest = _stop_reading_until_a_tls_write_is_pending(srv, tls_files, tls_sends)
        with sock:
            pending = tls_sends.snapshot()[-1]
            sock.sendall(client_frame(0x1, b"bad", rsv=2))  # RSV2 without an extension: 1002
            assert wait_until(lambda: srv.stats.protocol_errors == 1, 5), "the server did not read the bad frame"
            checker = _read_to_the_end(sock, rest, StreamSpec(1, _Burst.COUNT))
    summary = checker.summary()
    assert not summary.corrupted, {k: (a.count, a.detail) for k, a in summary.anomalies.items()}
    assert summary.close_code == 1002 and summary.valid_messages > 0, summary
    after = tls_sends.snapshot()
    assert after[after.index(pending) + 1][:3] == pending[:3], "the pending write was not retried with the same bytes"
    tls_sends.assert_retried_with_the_same_bytes()


def test_stalled_tls_client_failed_while_a_write_is_pending_never_sees_a_torn_frame(tls_files: TLSFiles, tls_sends: TlsSends) -> None:
    """A client that stops reading is judged stalled and failed with 1008 while a TLS write is pending: the server
    drops what it had not begun but keeps the frames of the pending write (``Outbox.in_flight``), so the client,
    reading again, gets whole messages, then the close frame, and nothing torn."""
    limits = Limits(ping_interval=None, max_queue_bytes=1 << 20, stall_timeout=0.3)
    with _burst_server(tls_files, limits) as srv:
        sock, rest = _stop_reading_until_a_tls_write_is_pending(srv, tls_files, tls_sends)
        with sock:
            assert wait_until(lambda: srv.stats.closed_by_policy == 1, 5), "the client was not judged stalled"
            assert tls_sends.snapshot()[-1][3] == "want-write", "the TLS write was not pending when the server failed it"
            checker = _read_to_the_end(sock, rest, StreamSpec(1, _Burst.COUNT))
    summary = checker.summary()
    assert not summary.corrupted, {k: (a.count, a.detail) for k, a in summary.anomalies.items()}
    assert summary.close_code == 1008, summary
    assert 0 < summary.valid_messages < _Burst.COUNT, summary  # the pending frames went out, the rest were dropped
    tls_sends.assert_retried_with_the_same_bytes()
