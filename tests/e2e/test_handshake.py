"""The opening handshake: the sans-IO Handshake alone, then against a running server (garbage answered at once)."""

from __future__ import annotations

import base64
import hashlib
import random
import socket
import time

import pytest

from server import Limits
from server.protocol.handshake import Handshake, HttpError

from ..helpers import echo_works, raw_connect, running_server, server_threads, upgrade_request, wait_until

pytestmark = pytest.mark.timeout(60)

# The server under test waits this long for a complete request; "answered at once" means
# answered well inside it (a generous bound, not a latency measurement).
HANDSHAKE_TIMEOUT = 10.0
AT_ONCE = 6.0  # well under the 10 s timeout, well over a loaded machine's pause


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
    parser = Handshake()
    data = upgrade_request("/stream?producers=2&count=3", extra="Sec-WebSocket-Extensions: permessage-deflate\r\n")
    for i in range(len(data) - 1):
        assert parser.receive_data(data[i : i + 1]) is None
    request = parser.receive_data(data[-1:])
    assert request is not None and request.path == "/stream" and request.method == "GET"


@pytest.mark.parametrize("method", ["GET", "OPTIONS", "M-SEARCH", "PROPFIND", "UPDATEREDIRECTREF"])
def test_any_token_method_reaches_the_router(method: str) -> None:
    parser = Handshake()
    request = parser.receive_data(f"{method} /x HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert request is not None and request.method == method


@pytest.mark.parametrize("version,status", [("1.0", 505), ("0.9", 505), ("1.1", None), ("2.0", None)])
def test_http_version_below_11_is_refused(version: str, status: int | None) -> None:
    parser = Handshake()
    data = f"GET /echo HTTP/{version}\r\nHost: x\r\n\r\n".encode()
    if status is None:
        assert parser.receive_data(data) is not None
        return
    with pytest.raises(HttpError) as info:
        parser.receive_data(data)
    assert info.value.status == status
    assert "HTTP/1.1" in info.value.message


# -- the answers, from the same h11 connection that read the request ------------


def _complete(data: bytes) -> Handshake:
    handshake = Handshake()
    assert handshake.receive_data(data) is not None
    return handshake


def _head(reply: bytes) -> dict[str, str]:
    head = reply.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {name.lower(): value for name, value in (line.split(": ", 1) for line in head)}


def test_accept_answers_101_with_the_accept_token_and_no_extension_unless_offered() -> None:
    reply, extension = _complete(upgrade_request("/echo")).accept()
    assert reply.startswith(b"HTTP/1.1 101 Switching Protocols\r\n") and reply.endswith(b"\r\n\r\n")
    headers = _head(reply)
    # RFC 6455 4.2.2: base64(SHA-1(key + GUID)); the helper's key is fixed, so is the token.
    key = [line for line in upgrade_request("/echo").split(b"\r\n") if line.lower().startswith(b"sec-websocket-key")]
    token = base64.b64encode(hashlib.sha1(key[0].split(b": ")[1] + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    assert headers["sec-websocket-accept"] == token.decode()
    assert headers["upgrade"].lower() == "websocket" and extension is None
    assert "sec-websocket-extensions" not in headers


def test_accept_negotiates_deflate_only_when_offered_and_enabled() -> None:
    offer = upgrade_request("/echo", extra="Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n")
    reply, extension = _complete(offer).accept(deflate=True)
    assert extension is not None and _head(reply)["sec-websocket-extensions"].startswith("permessage-deflate")
    reply, extension = _complete(offer).accept(deflate=False)
    assert extension is None and "sec-websocket-extensions" not in _head(reply)


def test_accept_refuses_a_plain_request_with_426() -> None:
    handshake = _complete(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(HttpError) as info:
        handshake.accept()
    assert info.value.status == 426
    reply = handshake.reject(info.value)
    assert reply.startswith(b"HTTP/1.1 426 ") and _head(reply)["upgrade"] == "websocket"
    assert reply.endswith(info.value.message.encode() + b"\n")


def test_respond_sends_the_body_and_closes_and_head_gets_no_body() -> None:
    reply = _complete(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n").respond(200, b'{"a": 1}', b"application/json")
    head, body = reply.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b'{"a": 1}'
    assert _head(reply)["content-length"] == "8" and _head(reply)["connection"] == "close"
    reply = _complete(b"HEAD /stats HTTP/1.1\r\nHost: x\r\n\r\n").respond(200, b'{"a": 1}', b"application/json")
    assert reply.endswith(b"\r\n\r\n") and _head(reply)["content-length"] == "8"


@pytest.mark.parametrize("data,status", [
    (b"\x16\x03\x01\x02\x00\x01", 400),  # a TLS ClientHello on the plain port
    (b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n" + bytes(2 << 20), 413),
    (b"GET /x HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * (20 << 10) + b"\r\n\r\n", 431),
])
def test_reject_answers_even_a_request_h11_could_not_read(data: bytes, status: int) -> None:
    handshake = Handshake()
    with pytest.raises(HttpError) as info:
        handshake.receive_data(data)
    assert info.value.status == status
    reply = handshake.reject(info.value)
    assert reply.startswith(f"HTTP/1.1 {status} ".encode()) and _head(reply)["connection"] == "close"


def test_reject_before_any_byte_is_the_timeout_answer() -> None:
    reply = Handshake().reject(HttpError(408, "request timeout"))
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and reply.endswith(b"request timeout\n")
