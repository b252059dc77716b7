"""HttpPhase without sockets: bytes in, Reply or Upgrade out, every failure an HTTP answer."""

from __future__ import annotations

import logging

import pytest

from server import Limits, Response, Stats
from server.connections.http_phase import HttpPhase, Reply, Upgrade
from server.protocol.handshake import HttpError, HttpRequest

from ..helpers import upgrade_request

pytestmark = pytest.mark.timeout(10)


class Handler:
    def on_open(self, conn: object) -> None: ...
    def on_message(self, conn: object, message: str | bytes) -> None: ...
    def on_close(self, conn: object) -> None: ...


class ChatHandler(Handler):
    subprotocols = ("chat.v2", "chat.v1")


class Router:
    def route(self, request: HttpRequest) -> object:
        if request.path == "/ws":
            return Handler()
        if request.path == "/chat":
            return ChatHandler()
        if request.path == "/json":
            return Response.json({"ok": True})
        if request.path == "/raw":
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        if request.path == "/teapot":
            raise HttpError(418, "short and stout")
        if request.path == "/wrong":
            return 42
        raise RuntimeError("a bug in route()")


def phase() -> tuple[HttpPhase, Stats]:
    stats = Stats()
    return HttpPhase(Router(), Limits(), stats, "127.0.0.1:1"), stats  # type: ignore[arg-type]


def test_nothing_until_the_request_is_complete_then_an_upgrade() -> None:
    p, stats = phase()
    data = upgrade_request("/ws")
    assert p.receive_data(data[:-1]) is None and p.request is None
    outcome = p.receive_data(data[-1:])
    assert isinstance(outcome, Upgrade) and isinstance(outcome.handler, Handler)
    assert outcome.reply.startswith(b"HTTP/1.1 101 ") and outcome.request.path == "/ws"
    assert stats.http_errors == 0


@pytest.mark.parametrize("path,status,body", [
    ("/json", 200, b'{"ok": true}'),
    ("/raw", 204, b""),
    ("/teapot", 418, b"short and stout\n"),
])
def test_plain_routes_and_http_errors_are_replies(path: str, status: int, body: bytes) -> None:
    p, _ = phase()
    outcome = p.receive_data(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert isinstance(outcome, Reply) and outcome.status == (200 if path == "/raw" else status)
    assert outcome.data.startswith(f"HTTP/1.1 {status} ".encode()) and outcome.data.endswith(body)


@pytest.mark.parametrize("path,message", [("/boom", "routing /boom failed"), ("/wrong", "routing /wrong failed")])
def test_a_broken_route_is_500_at_once_logged_and_counted(path: str, message: str, caplog) -> None:
    p, stats = phase()
    with caplog.at_level(logging.ERROR, logger="server.connections.http_phase"):
        outcome = p.receive_data(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert isinstance(outcome, Reply) and outcome.status == 500
    assert (stats.http_errors, stats.route_errors) == (1, 1)
    assert message in caplog.text and ("RuntimeError" in caplog.text or "TypeError: route() returned int" in caplog.text)


def test_a_bad_request_line_is_400_before_the_head_is_complete() -> None:
    p, stats = phase()
    outcome = p.receive_data(b"\x16\x03\x01\x02\x00")
    assert isinstance(outcome, Reply) and outcome.status == 400 and stats.http_errors == 1


def test_a_websocket_route_without_the_upgrade_headers_is_426() -> None:
    p, _ = phase()
    outcome = p.receive_data(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(outcome, Reply) and outcome.status == 426


def test_timeout_is_408_and_counted() -> None:
    p, stats = phase()
    p.receive_data(b"GET /ws HTTP/1.1\r\n")
    outcome = p.timed_out()
    assert outcome.status == 408 and outcome.data.startswith(b"HTTP/1.1 408 ") and stats.handshake_timeouts == 1


@pytest.mark.parametrize("path,offer,agreed", [
    ("/chat", "chat.v1, chat.v2", "chat.v1"),  # the client's order of preference decides (simple-websocket's rule)
    ("/chat", "other", None),  # nothing in common: no header, the client decides whether to go on
    ("/chat", None, None),
    ("/ws", "chat.v1", None),  # a handler without subprotocols agrees to none
])
def test_subprotocol_is_the_first_offered_that_the_handler_lists(path: str, offer: str | None, agreed: str | None) -> None:
    p, _ = phase()
    outcome = p.receive_data(upgrade_request(path, extra=f"Sec-WebSocket-Protocol: {offer}\r\n" if offer else ""))
    assert isinstance(outcome, Upgrade) and outcome.subprotocol == agreed
    header = f"\r\nSec-WebSocket-Protocol: {agreed}\r\n".encode() if agreed else b"Sec-WebSocket-Protocol"
    assert (header in outcome.reply) == (agreed is not None), outcome.reply


@pytest.mark.parametrize("extra", [
    "",  # the obs-text byte only in a header nobody splits
    "Sec-WebSocket-Protocol: chat\x80v1\r\n",  # offers nothing the handler supports
    "Sec-WebSocket-Extensions: permessage-deflate\x80\r\n",  # an offer that matches nothing
])
def test_obs_text_in_header_values_is_not_a_server_error(extra: str) -> None:
    """HTTP allows bytes 0x80-0xFF in field values; they matched no token, they must not crash the parse (was 500).

    Found by tests/unit/test_handshake_properties.py.
    """
    p, stats = phase()
    request = upgrade_request("/chat").replace(b"\r\n\r\n", f"\r\nX-Note: caf\xe9\r\n{extra}\r\n".encode("latin-1"))
    outcome = p.receive_data(request)
    assert isinstance(outcome, Upgrade) and stats.route_errors == 0
    assert outcome.reply.startswith(b"HTTP/1.1 101 ") and outcome.subprotocol is None and outcome.extension is None


def test_obs_text_in_the_upgrade_header_is_not_an_upgrade() -> None:
    p, stats = phase()
    request = upgrade_request("/ws").replace(b"Upgrade: websocket", "Upgrade: websocket\x80".encode("latin-1"))
    outcome = p.receive_data(request)
    assert isinstance(outcome, Reply) and outcome.status == 426, "not a server error (was 500)"
    assert stats.route_errors == 0
