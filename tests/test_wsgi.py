"""wsrace.wsgi.accept: refusing what it cannot take over safely, and a plain WSGI app (no Flask) in-process.

The real-server runs of the Flask layer are in test_flask.py.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

import wsrace.wsgi
from wsrace.wsgi import Refused, UnsupportedServer, accept

from .check_servers import wsgi_server
from .helpers import http_exchange
from .tls import TLSFiles

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


def test_a_tls_socket_is_refused_with_what_to_do_instead() -> None:
    with ssl.create_default_context().wrap_socket(socket.socket(), server_hostname="x") as tls:
        with pytest.raises(UnsupportedServer, match=r"terminates TLS itself.*nginx.*Server\(ssl_context"):
            accept({**HANDSHAKE, "SERVER_SOFTWARE": "gunicorn/23", "gunicorn.socket": tls})


def test_unknown_options_are_a_type_error_naming_them() -> None:
    with pytest.raises(TypeError, match="max_mesage_size"):
        accept(HANDSHAKE, max_mesage_size=10)


def test_gunicorn_with_certfile_answers_500_and_logs_why(tls_files: TLSFiles) -> None:
    """gunicorn --certfile: the first WebSocket request fails loudly; nothing half-works."""
    with wsgi_server("gthread", extra_args=["--certfile", str(tls_files.cert), "--keyfile", str(tls_files.key)]) as srv:
        with pytest.raises(InvalidStatus) as refused:
            with connect(f"wss://127.0.0.1:{srv.port}/attached", ssl=tls_files.client_context(), open_timeout=10):
                pass
        assert refused.value.response.status_code == 500
        log = srv.log_tail(20000)
    assert "UnsupportedServer" in log and "terminates TLS itself" in log, log


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
