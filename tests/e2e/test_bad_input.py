"""Bad input gets its documented answer, and the server keeps serving others."""

from __future__ import annotations

import socket
import struct

import pytest

from server import Limits

from ..helpers import (
    client_frame,
    close_code_of,
    echo_works,
    http_exchange,
    raw_connect,
    read_server_frames,
    running_server,
    upgrade_request,
    wait_until,
    ws_handshake,
)

pytestmark = pytest.mark.timeout(60)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:80]
    return int(response.split(b" ", 2)[1])


def header(response: bytes, name: str) -> str | None:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == name.lower():
            return v.strip()
    return None


@pytest.mark.parametrize(
    "request_bytes,status,must_have",
    [
        (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 404, None),
        (b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n", 426, ("Upgrade", "websocket")),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405, ("Allow", "GET")),
        (upgrade_request("/echo", version="8"), 426, ("Sec-WebSocket-Version", "13")),
        (upgrade_request("/echo").replace(f"Sec-WebSocket-Key: {KEY}\r\n".encode(), b""), 400, None),
        (upgrade_request("/echo", key="not-base64!"), 400, None),
        (upgrade_request("/echo", key="c2hvcnQ="), 400, None),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage-tls-hello\r\n\r\n", 400, None),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n", 431, None),
        (upgrade_request("/stream?producers=0"), 400, None),
        (upgrade_request("/stream?producers=abc"), 400, None),
        (upgrade_request("/stream?size=3"), 400, None),
        (upgrade_request("/stream?count=99999999"), 400, None),
        (upgrade_request("/stream?bogus=1"), 400, None),
    ],
    ids=["404", "plain-get-426", "post-405", "version-426", "no-key-400", "bad-key-400", "short-key-400",
         "garbage-400", "huge-headers-431", "producers0-400", "producers-nan-400", "size-400", "count-400", "unknown-param-400"],
)
def test_http_errors(server, request_bytes: bytes, status: int, must_have: tuple[str, str] | None) -> None:
    response = http_exchange(server.port, request_bytes)
    assert status_of(response) == status, response[:200]
    body = response.split(b"\r\n\r\n", 1)[1]
    assert body.strip(), "an error must say what was wrong"
    if must_have:
        assert header(response, must_have[0]) == must_have[1], response[:300]
    assert echo_works(server.port)


def test_index_page_is_served(server) -> None:
    response = http_exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(response) == 200
    assert b"/stream" in response and b"crc32" in response


def test_silent_client_gets_408_after_handshake_timeout() -> None:
    with running_server(Limits(ping_interval=None, handshake_timeout=0.3)) as srv:
        with raw_connect(srv.port, timeout=5) as sock:  # bounded: a missing answer fails the recv
            data = sock.recv(4096)
            assert status_of(data) == 408
        assert srv.stats.handshake_timeouts == 1  # the handshake timer answered, not something else
        assert echo_works(srv.port)


def test_client_that_vanishes_mid_handshake_and_mid_stream(server) -> None:
    sock = raw_connect(server.port)
    sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
    sock.close()
    sock, _ = ws_handshake(server.port, "/stream?producers=4&count=100000&size=4096")
    sock.recv(65536)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST in the middle of the stream
    assert echo_works(server.port)


@pytest.mark.parametrize(
    "frame,code",
    [
        (client_frame(0x1, b"unmasked", masked=False), 1002),
        (client_frame(0x1, b"\xff\xfe invalid utf-8"), 1007),
        (client_frame(0x2, b"rsv", rsv=0b100), 1002),
        (client_frame(0x3, b"opcode 3"), 1002),
        (client_frame(0x9, b"x" * 126), 1002),  # control frame over 125 bytes
        (client_frame(0x9, b"frag", fin=False), 1002),  # fragmented control frame
        (client_frame(0x0, b"orphan continuation"), 1002),
        (client_frame(0x8, b"\x03\xe8" + b"\xff"), 1007),  # close reason not UTF-8
        (client_frame(0x8, struct.pack("!H", 999)), 1002),  # invalid close code
    ],
    ids=["unmasked", "bad-utf8", "rsv1", "opcode3", "big-ping", "fragmented-ping", "orphan-continuation",
         "close-bad-utf8", "close-code-999"],
)
def test_protocol_errors_close_only_that_client(server, frame: bytes, code: int) -> None:
    bystander, _ = ws_handshake(server.port, "/echo")
    sock, rest = ws_handshake(server.port, "/echo")
    with sock, bystander:
        sock.sendall(frame)
        frames, _ = read_server_frames(sock, rest)
        assert close_code_of(frames) == code, frames
        bystander.sendall(client_frame(0x1, b"ping?"))
        got, _ = read_server_frames(bystander, timeout=5, max_frames=1)
        assert (0x1, b"ping?") in got
    assert echo_works(server.port)


def test_message_too_big_is_closed_with_1009() -> None:
    with running_server(Limits(ping_interval=None, max_message_bytes=1000)) as srv:
        sock, rest = ws_handshake(srv.port, "/echo")
        with sock:
            sock.sendall(client_frame(0x2, b"x" * 600, fin=False) + client_frame(0x0, b"y" * 600))
            frames, _ = read_server_frames(sock, rest)
            assert close_code_of(frames) == 1009
        assert echo_works(srv.port)


def test_decompression_bomb_is_stopped_at_the_message_limit() -> None:
    import zlib

    comp = zlib.compressobj(wbits=-15)
    bomb = comp.compress(bytes(64 * 1024 * 1024)) + comp.flush(zlib.Z_SYNC_FLUSH)
    bomb = bomb[:-4]  # ~64 KiB that inflate to 64 MiB
    assert len(bomb) < 100_000
    with running_server(Limits(ping_interval=None, max_message_bytes=1024 * 1024)) as srv:
        sock, rest = ws_handshake(srv.port, "/echo", extra="Sec-WebSocket-Extensions: permessage-deflate\r\n")
        with sock:
            sock.sendall(client_frame(0x2, bomb, rsv=0b100))
            frames, _ = read_server_frames(sock, rest)
            assert close_code_of(frames) == 1009
            # Stopped while inflating, not after: the reason says so.
            assert b"inflates to over 1048576" in frames[-1][1], frames[-1]
        assert echo_works(srv.port)


def test_worker_exception_closes_only_that_client_with_1011(server, monkeypatch) -> None:
    from server.demo.app import EchoHandler

    def explode(self, conn, message):
        if message == "explode":
            raise RuntimeError("handler bug")
        conn.send(message)

    monkeypatch.setattr(EchoHandler, "on_message", explode)
    sock, rest = ws_handshake(server.port, "/echo")
    with sock:
        sock.sendall(client_frame(0x1, b"explode"))
        frames, _ = read_server_frames(sock, rest)
        assert close_code_of(frames) == 1011
    assert echo_works(server.port)
    assert server.stats.handler_errors == 1


def test_garbage_after_handshake_is_a_protocol_error(server) -> None:
    sock, rest = ws_handshake(server.port, "/echo")
    with sock:
        sock.sendall(b"\x00\xff" * 100)
        frames, _ = read_server_frames(sock, rest)
        assert close_code_of(frames) == 1002
    assert echo_works(server.port)


@pytest.mark.parametrize("bug", ["raises", "returns None"])
def test_a_bug_in_route_answers_500_at_once(bug: str, caplog: pytest.LogCaptureFixture) -> None:
    """Not 408 after the 10 s handshake timeout: 500 now, logged with the traceback, counted."""
    from server import DemoApp

    class BuggyApp(DemoApp):
        def route(self, request):  # type: ignore[no-untyped-def]
            if request.path == "/buggy":
                if bug == "raises":
                    raise KeyError("user_id")
                return None
            return super().route(request)

    with running_server(Limits(ping_interval=None, handshake_timeout=10), router=BuggyApp) as srv:
        # Bounded by the client's 8 s, under the 10 s handshake timeout: only an answer at once arrives in time.
        response = http_exchange(srv.port, upgrade_request("/buggy"), timeout=8)
        assert status_of(response) == 500, response[:200]
        assert srv.stats.handshake_timeouts == 0, "answered by the handshake timeout, not at once"
        assert srv.stats.route_errors == 1
        assert "routing /buggy failed" in caplog.text and "Traceback" in caplog.text
        assert echo_works(srv.port)


@pytest.mark.parametrize("bad", [
    client_frame(0x1, b"x", rsv=0b010),  # reserved bits (Autobahn 3.x)
    client_frame(0x3, b""),  # reserved opcode (4.1.x)
    client_frame(0xB, b""),  # reserved control opcode (4.2.x)
    client_frame(0x0, b"x"),  # continuation with nothing to continue (5.x)
])
def test_replies_to_messages_before_a_protocol_error_go_out_before_the_close(server, monkeypatch, bad: bytes) -> None:
    """Strict failing (Autobahn's OK, not NON-STRICT): the echo of 'Hello' comes first, then 1002; nothing after is read."""
    from server.demo.app import EchoHandler

    def slow_echo(self, conn, message):
        # Still busy when the bad frame arrives: the reply is sent only once the server has seen the error.
        assert wait_until(lambda: server.stats.protocol_errors == 1, 5), "the bad frame was never seen"
        conn.send(message)

    monkeypatch.setattr(EchoHandler, "on_message", slow_echo)
    sock, rest = ws_handshake(server.port, "/echo")
    with sock:
        sock.sendall(client_frame(0x1, b"Hello") + bad + client_frame(0x1, b"after the error"))
        frames, _ = read_server_frames(sock, rest)
    assert frames[0] == (0x1, b"Hello"), frames
    assert close_code_of(frames) == 1002 and len(frames) == 2, frames
