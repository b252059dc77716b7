"""Independent WebSocket clients, each reading a whole /stream run.

Every function feeds what arrives to a :class:`StreamCheck` and returns an
:class:`Outcome`: how the connection ended as that client reports it — a close
code, or the client's own protocol-error text.

Every function takes ``ssl_context`` (a client context, e.g.
``tls_files.client_context()``): given, it connects to ``wss://127.0.0.1:PORT``
and verifies the certificate for 127.0.0.1; absent, plain ``ws://`` as before.
"""

from __future__ import annotations

import socket
import ssl
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .helpers import StreamCheck, pinging, raw_connect

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

RCVBUF = 8192
# No client waits longer than this for its next message: a stalled server fails the test fast.
IDLE_TIMEOUT = 15.0


@dataclass
class Outcome:
    close_code: int | None
    error: str = ""

    @property
    def protocol_error(self) -> bool:
        return bool(self.error) or self.close_code in (1002, 1007)


class Client(Protocol):
    """``run(port, target, check, deflate, small, ssl_context=None) -> Outcome``; ``small``: a small receive window and pings."""

    def __call__(self, port: int, target: str, check: StreamCheck, deflate: bool, small: bool,
                 ssl_context: ssl.SSLContext | None = None) -> Outcome: ...


def _url(port: int, target: str, ssl_context: ssl.SSLContext | None) -> str:
    return f"{'wss' if ssl_context is not None else 'ws'}://127.0.0.1:{port}{target}"


class _TakingTurnsTLS:
    """A TLS connection for ``websockets``' sync client, its threads taking turns in the one SSL object.

    The sync client reads on its own thread while the caller's thread (and the pinger) write, each straight into
    one ``SSLSocket``: one SSL object used from two threads at once, which OpenSSL forbids. Here the TLS 1.3
    session tickets the server sends after the handshake were being read while the request was written, and
    about one request in 200 never reached the wire (the server then answered 408 at its handshake timeout;
    never with TLS 1.2, which sends no tickets then). So the TLS is the repro's :class:`TLSStream` (non-blocking
    calls one at a time, waits outside its lock) and websockets speaks ws:// through it: its framing, deflate and
    close handling are still its own.
    """

    def __init__(self, sock: ssl.SSLSocket) -> None:
        from repro.client import TLSStream

        self._sock = sock
        self._stream = TLSStream(sock)
        self.family = sock.family
        self.recv, self.sendall, self.settimeout = self._stream.recv, self._stream.sendall, self._stream.settimeout
        self.shutdown, self.close, self.fileno = self._stream.shutdown, self._stream.close, self._stream.fileno
        self.setsockopt, self.getsockname, self.getpeername = sock.setsockopt, sock.getsockname, sock.getpeername


def connect_websockets(port: int, target: str, ssl_context: ssl.SSLContext | None = None, rcvbuf: int | None = None,
                       **kwargs: Any) -> ClientConnection:
    """``websockets.sync.client.connect`` to ws://127.0.0.1:PORT, or wss:// through :class:`_TakingTurnsTLS`.

    ``rcvbuf``: a small SO_RCVBUF set before connect. ``kwargs`` go to ``connect`` (``open_timeout`` 10 s unless given).
    """
    from websockets.sync.client import connect

    kwargs.setdefault("open_timeout", 10)
    if ssl_context is None:
        sock = raw_connect(port, IDLE_TIMEOUT, rcvbuf=rcvbuf) if rcvbuf else None
        return connect(_url(port, target, None), sock=sock, **kwargs)
    raw = raw_connect(port, IDLE_TIMEOUT, rcvbuf=rcvbuf, ssl_context=ssl_context)
    assert isinstance(raw, ssl.SSLSocket)
    tls = _TakingTurnsTLS(raw)
    try:
        return connect(_url(port, target, None), sock=tls, **kwargs)  # type: ignore[call-overload]  # ws:// over TLS done here
    except BaseException:
        tls.close()
        raise


def with_websockets(port: int, target: str, check: StreamCheck, deflate: bool, small: bool,
                    ssl_context: ssl.SSLContext | None = None) -> Outcome:
    from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidHandshake

    try:
        with connect_websockets(port, target, ssl_context, rcvbuf=RCVBUF if small else None, max_size=None,
                                compression="deflate" if deflate else None) as ws, \
                (pinging(ws.ping) if small else nullcontext()):
            try:
                while True:
                    try:
                        message = ws.recv(timeout=IDLE_TIMEOUT)
                    except TimeoutError:
                        return Outcome(None, f"no message for {IDLE_TIMEOUT} s after {check.received}")
                    check.add(message)
            except ConnectionClosedOK:
                return Outcome(ws.close_code)
    except ConnectionClosed as exc:
        return Outcome(exc.rcvd.code if exc.rcvd else None, f"{exc} ({exc.__cause__})")
    except InvalidHandshake as exc:
        return Outcome(None, f"handshake: {exc}")


def with_websocket_client(port: int, target: str, check: StreamCheck, deflate: bool, small: bool,
                          ssl_context: ssl.SSLContext | None = None) -> Outcome:
    import websocket  # websocket-client

    assert not deflate, "websocket-client does not implement permessage-deflate"
    # sockopt is applied before connect; sslopt's context is used as given (websocket-client configures no other)
    ws = websocket.WebSocket(sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)] if small else [],
                             sslopt={"context": ssl_context} if ssl_context is not None else None)
    ws.connect(_url(port, target, ssl_context), timeout=IDLE_TIMEOUT)
    # Over TLS it pings from this thread, after every message. A pinger thread writing while this one reads uses
    # one SSL object from two threads, and websocket-client's timed reads then see the connection "lost" (3 of 10
    # runs of a 20 MB stream here, 0 of 10 without the pinger or without TLS): the client's own TLS race.
    inline_pings = small and ssl_context is not None
    try:
        with pinging(ws.ping) if small and not inline_pings else nullcontext():
            while True:
                opcode, data = ws.recv_data(control_frame=False)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                    return Outcome(code)
                check.add(data if opcode == websocket.ABNF.OPCODE_BINARY else data.decode())
                if inline_pings:
                    ws.ping()
    except (websocket.WebSocketProtocolException, websocket.WebSocketPayloadException, UnicodeDecodeError) as exc:
        return Outcome(None, f"{type(exc).__name__}: {exc}")
    except websocket.WebSocketConnectionClosedException as exc:
        return Outcome(None, f"connection closed: {exc}")
    except websocket.WebSocketTimeoutException:
        return Outcome(None, f"no message for {IDLE_TIMEOUT} s after {check.received}")
    except OSError as exc:  # over TLS: a torn record (DECRYPTION_FAILED_OR_BAD_RECORD_MAC, ...), or a reset
        return Outcome(None, f"{type(exc).__name__}: {exc}")
    finally:
        with suppress(Exception):  # the connection may be broken already
            ws.close()
        # After a close frame from the server, recv_data has answered it and marked the socket disconnected, so
        # close() returns without closing the socket: the server would wait its close_timeout (5 s) for our EOF.
        ws.shutdown()


def with_simple_websocket(port: int, target: str, check: StreamCheck, deflate: bool, small: bool,
                          ssl_context: ssl.SSLContext | None = None) -> Outcome:
    import simple_websocket

    assert not deflate, "simple_websocket.Client does not offer permessage-deflate"
    ws = simple_websocket.Client.connect(_url(port, target, ssl_context), receive_bytes=65536, ssl_context=ssl_context)
    try:
        while True:
            message = ws.receive(timeout=IDLE_TIMEOUT)
            if message is None:
                return Outcome(None, f"no message for {IDLE_TIMEOUT} s after {check.received}")
            check.add(message)
    except simple_websocket.ConnectionClosed as exc:
        return Outcome(int(exc.reason))


def with_wsproto(port: int, target: str, check: StreamCheck, deflate: bool, small: bool,
                 ssl_context: ssl.SSLContext | None = None) -> Outcome:
    """A raw wsproto client driven over a blocking socket (an ``ssl.SSLSocket`` over TLS), as in wsproto's own examples."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import (
        AcceptConnection,
        BytesMessage,
        CloseConnection,
        Ping,
        RejectConnection,
        Request,
        TextMessage,
    )
    from wsproto.extensions import PerMessageDeflate

    sock = raw_connect(port, IDLE_TIMEOUT, rcvbuf=RCVBUF if small else None, ssl_context=ssl_context)
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host="127.0.0.1", target=target, extensions=[PerMessageDeflate()] if deflate else [])))
    parts: list[bytes | bytearray | str] = []
    received = 0
    try:
        while True:
            data = sock.recv(262144)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, RejectConnection):
                    return Outcome(None, f"rejected: {event.status_code}")
                if isinstance(event, AcceptConnection):
                    continue
                if isinstance(event, Ping):
                    sock.sendall(ws.send(event.response()))
                elif isinstance(event, (TextMessage, BytesMessage)):
                    parts.append(event.data)
                    if event.message_finished:
                        check.add("".join(parts) if isinstance(event, TextMessage) else b"".join(parts))  # type: ignore[arg-type]
                        parts = []
                        received += 1
                        if small and received % 4 == 0:  # ping now and then, so the server writes pongs
                            sock.sendall(ws.send(Ping(payload=received.to_bytes(4, "big"))))
                elif isinstance(event, CloseConnection):
                    if event.code in (1002, 1007):  # wsproto turns a parse failure into a close event
                        return Outcome(event.code, event.reason or "")
                    try:
                        sock.sendall(ws.send(event.response()))
                    except Exception:
                        pass
                    return Outcome(event.code)
            if not data:
                return Outcome(1006, "EOF")
    except TimeoutError:
        return Outcome(None, f"no data for {IDLE_TIMEOUT} s after {check.received} messages")
    except OSError as exc:  # over TLS: a torn record (DECRYPTION_FAILED_OR_BAD_RECORD_MAC, ...), or a reset
        return Outcome(None, f"{type(exc).__name__}: {exc}")
    finally:
        sock.close()


def with_checker(port: int, target: str, check: StreamCheck, deflate: bool, small: bool,
                 ssl_context: ssl.SSLContext | None = None) -> Outcome:
    """The repro's strict checker (its own framing code); each message it accepts goes through ``check``, as for the others."""
    from repro.client import ClientOptions, check_url

    def verify(opcode: int, data: bytes) -> None:
        check.add(data.decode("utf-8", "replace") if opcode == 0x1 else data)  # the checker has validated UTF-8
        return None

    summary, ended = check_url("127.0.0.1", port, target, None,
                               ClientOptions(rcvbuf=RCVBUF if small else None, ping_interval=0.001 if small else None,
                                             deflate=deflate, time_limit=60, ssl_context=ssl_context), verify=verify)
    assert summary.received_messages == check.received, (summary.received_messages, check.received)
    first = summary.first()  # no stream spec: every anomaly is a framing one
    if first is None and summary.close_code is None:
        return Outcome(None, f"no close frame: {ended}")
    return Outcome(summary.close_code, f"{first.cls}: {first.detail}" if first else "")


CLIENTS: dict[str, tuple[Client, bool]] = {
    # name: (function, supports permessage-deflate)
    "websockets": (with_websockets, True),
    "websocket-client": (with_websocket_client, False),
    "simple_websocket.Client": (with_simple_websocket, False),
    "wsproto": (with_wsproto, True),
    "strict-checker": (with_checker, True),
}
