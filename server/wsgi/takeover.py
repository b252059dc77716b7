"""Taking a WebSocket's socket away from the WSGI server that accepted it — so that server can never write to it.

A WSGI server hands the app its socket (``werkzeug.socket``,
``gunicorn.socket``) but keeps using it after the view returns: it writes a
response, drains what the client sent, shuts the socket down (``SHUT_WR``,
which ends the connection for every duplicate of the descriptor) and closes
it. flask-sock lets it, which is one more writer on the socket.

The *transplant* ends that: wsrace keeps a duplicate of the connection's
descriptor and points the server's descriptor number at a dead end (one side
of a socket pair whose other side is closed), in one ``dup2``. From then on
everything the server does — its response, its drain, its ``shutdown()``, its
keep-alive read — hits the dead end and fails at once (EPIPE, EOF), and only
wsrace's IO thread reaches the client. Bytes the server had already read past
the request head (the client's first frames) are taken from its buffer.

TLS terminated by the WSGI server (gunicorn ``--certfile``, Werkzeug
``ssl_context``) cannot be transplanted: the session's keys live in the
server's ``SSLSocket`` object, not in the descriptor. That object is *lent*
to the IO thread instead (``Takeover.borrowed``): the view's thread, the only
other user, waits without touching it until the connection is closed; the
IO thread then shuts the connection down and gives the object back unclosed.
One thread at a time uses the ``SSL`` object, as OpenSSL requires, with the
hand-offs ordered by ``IOLoop.post`` and the close event. So over TLS a view
stays attached (``detach()`` is refused).

Supported: Werkzeug's development server (``flask run``, ``app.run``,
threaded or not) and gunicorn's ``sync`` and ``gthread`` workers.
Everything else raises :class:`UnsupportedServer`, before the socket is
touched.
"""

from __future__ import annotations

import io
import os
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import quote

from ..errors import WsraceError

WERKZEUG = "werkzeug"
GUNICORN = "gunicorn"
SUPPORTED = "Werkzeug's development server (flask run / app.run) and gunicorn's sync and gthread workers"

StartResponse = Callable[..., Any]


class UnsupportedServer(WsraceError, RuntimeError):
    """This WSGI server (or this way of running it) cannot hand its socket over safely."""


@dataclass
class Takeover:
    """The connection, now wsrace's: its own socket and the request as the client sent it (plus what followed)."""

    sock: socket.socket
    request: bytes  # the request head, rebuilt from the environ, then any bytes the server had read past it
    server: str  # WERKZEUG or GUNICORN
    # TLS terminated by the WSGI server: ``sock`` is its SSLSocket, lent until the connection closes (no transplant:
    # the TLS state lives in that object). The view must not return before then — see the module docstring.
    borrowed: bool = False


def detect(environ: dict[str, Any]) -> tuple[str, socket.socket]:
    """Which supported server this is and its socket; raises :class:`UnsupportedServer` otherwise."""
    software = environ.get("SERVER_SOFTWARE", "an unknown server")
    if "werkzeug.socket" in environ:
        kind, sock = WERKZEUG, environ["werkzeug.socket"]
        if environ.get("wsgi.multiprocess"):
            raise UnsupportedServer(f"{software} runs with processes > 1 (a forking server ends each connection with "
                                    f"its request's process); use threaded=True. Supported: {SUPPORTED}")
    elif "gunicorn.socket" in environ:
        kind, sock = GUNICORN, environ["gunicorn.socket"]
    else:
        raise UnsupportedServer(f"wsrace cannot take the WebSocket's socket from {software}: it is not in the WSGI "
                                f"environ. Supported: {SUPPORTED}")
    if type(sock).__module__ not in ("socket", "ssl"):  # gevent, eventlet: green sockets on another loop
        raise UnsupportedServer(f"{software} gives a {type(sock).__module__}.{type(sock).__name__}, not a socket "
                                f"(gevent/eventlet worker?). Supported: {SUPPORTED}")
    return kind, sock


def body_problem(environ: dict[str, Any]) -> str | None:
    """Why this request cannot be taken over as it is (a 400 reason), or None: a handshake carries no body."""
    if environ.get("CONTENT_LENGTH", "0") not in ("", "0") or "chunked" in environ.get("HTTP_TRANSFER_ENCODING", ""):
        return "a WebSocket handshake has no body"
    return None


def take(environ: dict[str, Any]) -> Takeover:
    """Transplant the connection out of the WSGI server (see the module docstring). Call once, in the view."""
    kind, sock = detect(environ)
    buffered = _buffer_of(kind, environ)
    if isinstance(sock, ssl.SSLSocket):
        sock.setblocking(False)  # a buffer read below must not wait for the client
        return Takeover(sock, rebuild_head(environ) + buffered(), kind, borrowed=True)
    fd = sock.fileno()
    mine = socket.socket(fileno=os.dup(fd))  # wsrace's descriptor on the real connection (not inheritable)
    dead_end, other = socket.socketpair()
    other.close()  # reads from the dead end give EOF, writes EPIPE
    try:
        os.dup2(dead_end.fileno(), fd, inheritable=False)  # atomic: the server's descriptor now leads nowhere
    except OSError:
        mine.close()  # only our duplicate: the server still owns the connection
        raise
    finally:
        dead_end.close()
    return Takeover(mine, rebuild_head(environ) + buffered(), kind)


def _buffer_of(kind: str, environ: dict[str, Any]) -> Callable[[], bytes]:
    """How to get the bytes the server read past the request head (checked before anything is changed)."""
    stream = environ.get("wsgi.input")
    if kind == WERKZEUG:
        if not isinstance(stream, io.BufferedReader):
            raise UnsupportedServer(f"Werkzeug's wsgi.input is a {type(stream).__name__}, not its socket's buffered "
                                    "reader: the client's first frames could be lost. Is middleware replacing it?")
        # After the transplant the raw socket is at EOF, so read() returns exactly the buffer.
        return stream.read if not isinstance(environ["werkzeug.socket"], ssl.SSLSocket) else partial(_peek, stream)
    unreader = getattr(getattr(stream, "reader", None), "unreader", None)
    if unreader is None:
        raise UnsupportedServer(f"gunicorn's wsgi.input is a {type(stream).__name__} without the request's read "
                                "buffer (unreader): the client's first frames could be lost. Supported: " + SUPPORTED)
    if hasattr(unreader, "take_buffered"):
        return unreader.take_buffered  # type: ignore[no-any-return]
    return lambda: unreader.buf.getvalue()  # type: ignore[no-any-return]  # gunicorn before take_buffered()


def _peek(stream: io.BufferedReader) -> bytes:
    """The reader's buffer, without waiting (its socket is non-blocking): TLS has no transplant to end the stream."""
    try:
        data = stream.peek()
    except (ssl.SSLWantReadError, BlockingIOError):
        return b""
    return stream.read(len(data)) if data else b""


def rebuild_head(environ: dict[str, Any]) -> bytes:
    """The request head as the client sent it, from the WSGI environ (PEP 3333 strings are latin-1)."""
    target = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not target:
        target = quote(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "/"), safe="/;=,:@!$&'()*+~")
        if environ.get("QUERY_STRING"):
            target += "?" + environ["QUERY_STRING"]
    lines = [f"GET {target} {environ.get('SERVER_PROTOCOL', 'HTTP/1.1')}"]
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            lines.append(f"{key[5:].replace('_', '-').title()}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def handled_response(kind: str, start_response: StartResponse) -> Iterable[bytes]:
    """What the view returns once the connection is wsrace's: the server writes nothing that reaches the client.

    gunicorn: ``StopIteration`` raised from the app means "already handled" (a
    debug log line, no response, no keep-alive). Werkzeug: a bodiless 101,
    whose write hits the dead end (a dropped connection to Werkzeug, silent).
    """
    if kind == GUNICORN:
        raise StopIteration()
    start_response("101 Switching Protocols", [])
    return []
