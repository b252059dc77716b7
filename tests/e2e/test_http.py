"""Plain HTTP routes and the Origin check (server/protocol/http.py)."""

from __future__ import annotations

import json

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from server import DemoApp, HttpRequest, Response

from ..helpers import http_exchange, running_server

pytestmark = pytest.mark.timeout(30)


def test_response_bytes_status_headers_and_head() -> None:
    r = Response.json({"ok": True, "name": "é"}, status=201, headers=[("X-Thing", "1")])
    data = r.to_bytes()
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 201 Created")
    assert b"Content-Type: application/json" in head and b"X-Thing: 1" in head
    assert b"Content-Length: %d" % len(body) in head
    assert json.loads(body) == {"ok": True, "name": "é"}
    assert r.to_bytes(head_only=True) == head + b"\r\n\r\n"


class App(DemoApp):
    def route(self, request: HttpRequest):  # type: ignore[no-untyped-def]
        if request.path == "/hello":
            return Response(418, f"hello {request.query.get('who', '?')}", headers=[("X-Teapot", "yes")])
        return super().route(request)


def test_a_route_returns_a_response() -> None:
    with running_server(router=App) as srv:
        reply = http_exchange(srv.port, b"GET /hello?who=ada HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 418 ") and b"X-Teapot: yes" in reply and reply.endswith(b"hello ada")
        head = http_exchange(srv.port, b"HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 418 ") and head.endswith(b"\r\n\r\n")


def test_origin_allow_list() -> None:
    with running_server(origins=["https://ok.example", None]) as srv:
        with connect(f"{srv.url}/echo", additional_headers={"Origin": "https://ok.example"}) as ws:
            ws.send("hi")
            assert ws.recv(timeout=5) == "hi"
        with connect(f"{srv.url}/echo") as ws:  # no Origin: allowed by None
            pass
        with pytest.raises(InvalidStatus) as info:
            connect(f"{srv.url}/echo", additional_headers={"Origin": "https://evil.example"}, open_timeout=5)
        assert info.value.response.status_code == 403
        # Plain HTTP routes are not subject to it.
        assert http_exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\n\r\n").startswith(b"HTTP/1.1 200")
    with running_server(origins=["https://ok.example"]) as srv, pytest.raises(InvalidStatus) as info:
        connect(f"{srv.url}/echo", open_timeout=5)  # no Origin and None not allowed
    assert info.value.response.status_code == 403


class BodyApp(DemoApp):
    def route(self, request: HttpRequest):  # type: ignore[no-untyped-def]
        if request.path == "/upload":
            return Response.json({"bytes": len(request.body), "type": request.header("Content-Type"),
                                  "start": request.body[:5].decode()})
        return super().route(request)


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_request_bodies_reach_the_route(framing: str) -> None:
    body = b"hello" + b"x" * 70000
    if framing == "length":
        request = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    else:
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 4096]), body[i:i + 4096]) for i in range(0, len(body), 4096))
        head = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        request = head + chunks + b"0\r\n\r\n"
    with running_server(router=BodyApp) as srv:
        reply = http_exchange(srv.port, request)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1]) == {"bytes": len(body), "type": "text/plain", "start": "hello"}
        too_big = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n" + bytes(2000000)
        assert http_exchange(srv.port, too_big).startswith(b"HTTP/1.1 413")
