"""The opening handshake: HTTP version, and garbage answered as soon as it is seen (issue 11)."""

from __future__ import annotations

import random
import socket
import time

import pytest

from server import Limits
from server.handshake import HandshakeParser, HttpError

from .helpers import echo_works, raw_connect, running_server, server_threads, upgrade_request, wait_until

pytestmark = pytest.mark.timeout(60)

# The server under test waits this long for a complete request; "answered at once" means
# answered well inside it (a generous bound, not a latency measurement).
HANDSHAKE_TIMEOUT = 10.0
AT_ONCE = 3.0


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:80]
    return int(response.split(b" ", 2)[1])


def read_reply(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or AT_ONCE passes: then what came so far)."""
    sock.settimeout(AT_ONCE)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def random_garbage(seed: int, size: int = 4096) -> bytes:
    """Random bytes that h11 alone would wait on: no line feed (so never a complete head)
    and a first byte of 0x21 or above (h11 refuses a lower one on sight)."""
    data = random.Random(seed).randbytes(size).replace(b"\n", b" ")
    return b"Q" + data[1:]


HTTP10_UPGRADE = upgrade_request("/echo").replace(b"HTTP/1.1", b"HTTP/1.0", 1)


@pytest.fixture
def patient_server():
    with running_server(Limits(ping_interval=None, handshake_timeout=HANDSHAKE_TIMEOUT)) as srv:
        yield srv


def test_http10_upgrade_is_refused_with_505(patient_server) -> None:
    with raw_connect(patient_server.port) as sock:
        sock.sendall(HTTP10_UPGRADE)
        response = read_reply(sock)
    assert status_of(response) == 505, response[:200]
    assert b"HTTP/1.1" in response.split(b"\r\n\r\n", 1)[1], "the body must say what is needed"
    assert patient_server.stats.opened == 0
    assert echo_works(patient_server.port)


# Incomplete heads (no blank line yet): h11 alone waits for the rest, i.e. for the timeout.
@pytest.mark.parametrize(
    "start,status",
    [
        (random_garbage(11), 400),
        (b"GET /echo HTTQ/1.1\r\nHost: x\r\n", 400),
        (b"GET /echo\r\nHost: x\r\n", 400),  # no version: an HTTP/0.9-style line
        (b"GE(T /echo HTTP/1.1\r\n", 400),  # '(' is not a token character
        (b"GET /ec\x01ho HTTP/1.1\r\n", 400),  # control byte in the target
        (b"GET /echo HTTP/1.1 extra\r\n", 400),
        (b"GET /echo HTTP/1.0\r\nHost: x\r\n", 505),
        (b"A" * 200, 501),  # a "method" longer than any method there is
    ],
    ids=["random-4k", "bad-version", "no-version", "bad-method-char", "ctl-in-target", "junk-after-version",
         "http10-incomplete", "endless-method"],
)
def test_bad_request_line_is_answered_before_the_head_is_complete(patient_server, start: bytes, status: int) -> None:
    with raw_connect(patient_server.port) as sock:
        started = time.monotonic()
        sock.sendall(start)  # and nothing more: the connection stays open
        response = read_reply(sock)
        elapsed = time.monotonic() - started
    assert response, f"no answer within {AT_ONCE}s (handshake timeout {HANDSHAKE_TIMEOUT}s)"
    assert status_of(response) == status, response[:200]
    assert response.split(b"\r\n\r\n", 1)[1].strip(), "an error must say what was wrong"
    assert elapsed < AT_ONCE
    assert patient_server.stats.handshake_timeouts == 0
    assert echo_works(patient_server.port)


def test_garbage_flood_costs_nothing_lasting(patient_server) -> None:
    threads_before = server_threads()
    socks = [raw_connect(patient_server.port) for _ in range(100)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(random_garbage(1000 + i))
        for sock in socks:
            response = read_reply(sock)
            assert response, f"no answer within {AT_ONCE}s (handshake timeout {HANDSHAKE_TIMEOUT}s)"
            assert status_of(response) == 400
    finally:
        for sock in socks:
            sock.close()
    assert wait_until(lambda: not patient_server.connections, timeout=5), f"{len(patient_server.connections)} still held"
    stats = patient_server.stats
    assert (stats.http_errors, stats.handshake_timeouts, stats.opened) == (100, 0, 0)
    assert server_threads() == threads_before
    assert echo_works(patient_server.port)


# -- the parser alone ---------------------------------------------------------


def test_valid_request_fed_byte_by_byte_is_never_refused_early() -> None:
    parser = HandshakeParser()
    data = upgrade_request("/stream?producers=2&count=3", extra="Sec-WebSocket-Extensions: permessage-deflate\r\n")
    for i in range(len(data) - 1):
        assert parser.feed(data[i : i + 1]) is None
    request = parser.feed(data[-1:])
    assert request is not None and request.path == "/stream" and request.method == "GET"


@pytest.mark.parametrize("method", ["GET", "OPTIONS", "M-SEARCH", "PROPFIND", "UPDATEREDIRECTREF"])
def test_any_token_method_reaches_the_router(method: str) -> None:
    parser = HandshakeParser()
    request = parser.feed(f"{method} /x HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert request is not None and request.method == method


@pytest.mark.parametrize("version,status", [("1.0", 505), ("0.9", 505), ("1.1", None), ("2.0", None)])
def test_http_version_below_11_is_refused(version: str, status: int | None) -> None:
    parser = HandshakeParser()
    data = f"GET /echo HTTP/{version}\r\nHost: x\r\n\r\n".encode()
    if status is None:
        assert parser.feed(data) is not None
        return
    with pytest.raises(HttpError) as info:
        parser.feed(data)
    assert info.value.status == status
    assert "HTTP/1.1" in info.value.message
