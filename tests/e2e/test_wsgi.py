"""wsrace.wsgi.accept: what it refuses, a plain WSGI app (no Flask) in-process, and TLS terminated by the WSGI server.

The real-server runs of the Flask layer are in test_flask.py.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

import wsrace.wsgi
from repro.check import check
from wsrace.wsgi import Refused, UnsupportedServer, accept

from ..check_servers import WSGI_SERVERS, wsgi_server
from ..clients import connect_websockets, with_websockets
from ..helpers import StreamCheck, http_exchange
from ..tls import TLSFiles

pytestmark = pytest.mark.timeout(60)

HANDSHAKE = {"REQUEST_METHOD": "GET", "PATH_INFO": "/ws", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "x",
             "HTTP_UPGRADE": "websocket", "HTTP_CONNECTION": "Upgrade", "HTTP_SEC_WEBSOCKET_VERSION": "13",
             "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ=="}


def test_a_server_without_a_socket_in_the_environ_is_named_and_refused() -> None:
    with pytest.raises(UnsupportedServer, match=r"WSGIServer/0.2.*Supported: Werkzeug.*gunicorn's sync and gthread"):
        accept({**HANDSHAKE, "SERVER_SOFTWARE": "WSGIServer/0.2"})


def test_a_green_socket_is_refused() -> None:
    class GreenSocket:  # what gevent/eventlet workers put in the environ
        __module__ = "gevent._socket3"

    with pytest.raises(UnsupportedServer, match="gevent"):
        accept({**HANDSHAKE, "SERVER_SOFTWARE": "gunicorn/23", "gunicorn.socket": GreenSocket()})


def test_a_forking_werkzeug_is_refused() -> None:
    with socket.socket() as sock, pytest.raises(UnsupportedServer, match="processes > 1"):
        accept({**HANDSHAKE, "werkzeug.socket": sock, "wsgi.multiprocess": True})


def test_unknown_options_are_a_type_error_naming_them() -> None:
    with socket.socket() as sock, pytest.raises(TypeError, match="max_mesage_size"):
        accept({**HANDSHAKE, "werkzeug.socket": sock}, max_mesage_size=10)


@pytest.mark.parametrize("kind", WSGI_SERVERS)
def test_tls_by_the_wsgi_server_lends_its_socket_until_the_close(kind: str, tls_files: TLSFiles) -> None:
    """gunicorn --certfile, Werkzeug ssl_context: the IO thread uses the SSLSocket while the view waits.

    The pool-replying app stays CLEAN over wss://; a detached view is refused (1011, the reason logged).
    """
    tls = ["--certfile", str(tls_files.cert), "--keyfile", str(tls_files.key)]
    with wsgi_server(kind, extra_args=tls) as srv:
        url = f"wss://127.0.0.1:{srv.port}"
        # taking-turns TLS (tests/clients.py: websockets' own sync TLS loses about one request in 200)
        with connect_websockets(srv.port, "/attached", tls_files.client_context()) as ws:
            ws.send("over tls")
            assert ws.recv(timeout=10) == "over tls"
            ws.close(4001, "done")
        assert srv.last_close_is(b"4001 done", ssl_context=tls_files.client_context())
        # The view returns with 8 MiB still queued: the server gets its SSLSocket back only after the close.
        stream = StreamCheck(4, 32)
        outcome = with_websockets(srv.port, "/stream?producers=4&count=32&size=65536", stream, False, False,
                                  ssl_context=tls_files.client_context())
        assert outcome.close_code == 1000 and not outcome.error, outcome
        stream.assert_complete()
        with connect_websockets(srv.port, "/detached", tls_files.client_context()) as ws:  # refused, closed with 1011
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        result = check(f"{url}/echo", cafile=str(tls_files.ca))
        log = srv.log_tail(20000)
    assert result.verdict == "CLEAN", result.report() + log
    assert "detach() is not possible over TLS" in log, log


# -- a plain WSGI app on Werkzeug, in this process ---------------------------------------------------


def echo_app(environ: dict[str, Any], start_response: Any) -> Any:
    """The module docstring's example of wsrace.wsgi, with a small message limit."""
    try:
        ws = accept(environ, max_message_size=1024)
    except Refused as exc:
        return exc(environ, start_response)
    try:
        while True:
            ws.send(ws.receive())
    except wsrace.wsgi.ConnectionClosed:
        pass
    return ws.response(start_response)


@pytest.fixture
def werkzeug_port() -> Iterator[int]:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, echo_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        assert wsrace.wsgi.shutdown(timeout=10)


def test_plain_wsgi_app_echoes_and_enforces_its_limit(werkzeug_port: int) -> None:
    with connect(f"ws://127.0.0.1:{werkzeug_port}/") as ws:
        ws.send("x" * 1000)
        assert ws.recv(timeout=10) == "x" * 1000
        ws.send("x" * 2000)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_plain_wsgi_app_answers_a_plain_get_with_426(werkzeug_port: int) -> None:
    reply = http_exchange(werkzeug_port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 426") and b"Upgrade: websocket" in reply, reply[:300]
