"""Write disciplines: who writes to the socket. Everything else is shared.

``queued`` is the fixed server as shipped. ``direct`` and ``locked`` are the
same server, plugged in through its documented factories
(:meth:`Server.make_connection`, :meth:`Connection.make_handle`): handlers
get a :class:`DirectHandle` whose ``send()`` writes from the calling thread —
the bug, on purpose, and only here. ``simple-websocket`` and ``simple-websocket+lock`` run the same
routes on the real library, the way flask-sock users do.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Protocol

from server import CloseCode, ConnectionClosed, DemoApp, Limits, Router, Server
from server.connections.connection import Connection
from server.connections.handle import ConnectionHandle, State
from server.core.transport import SocketTransport
from server.protocol.frames import OutMessage

from .guard import Violation, WriteGuard
from .simple_ws import SimpleWebsocketServer
from .tlsrace import RecordingTlsTransport, TlsEvents

logger = logging.getLogger(__name__)

DISCIPLINES = ["direct", "locked", "simple-websocket", "simple-websocket+lock", "queued"]
UNSAFE = {"direct", "locked", "simple-websocket", "simple-websocket+lock"}
DESCRIPTIONS = {
    "direct": "worker threads write frames to the socket themselves (the bug)",
    "locked": "workers write under a per-connection lock; the IO thread still writes pongs/pings/close on its own",
    "simple-websocket": "simple_websocket.Server, workers call ws.send() (flask-sock style)",
    "simple-websocket+lock": "simple_websocket.Server, workers call ws.send() under a lock (the usual workaround)",
    "queued": "the fixed server: workers post, one IO thread writes everything",
}


class KnobServer(Server):
    """The fixed server, plus the repro's knobs on every accepted socket: SO_SNDBUF, and the write guard."""

    sndbuf: int | None = None
    guards: list[WriteGuard] | None = None  # set: wrap every socket in a recording WriteGuard
    tls_events: TlsEvents | None = None  # over TLS: what the SSL calls raised, by thread
    connection_class: type[Connection] = Connection  # the write discipline: DirectConnection, LockedConnection

    def make_connection(self, transport: SocketTransport, router: Router, limits: Limits) -> Connection:
        return self.connection_class(self.loop, transport, router, self.executor, limits, self.stats,
                                     self._on_closed, self.send_backlog)

    def make_transport(self, sock: socket.socket) -> SocketTransport:
        if self.sndbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
        if self.ssl_context is not None:  # (the write guard wraps plain sockets only)
            transport = RecordingTlsTransport(self.loop, sock, self.ssl_context)
            transport.events = self.tls_events or TlsEvents()
            return transport
        if self.guards is not None:
            # Accepted on the IO thread: it is the owner, as it should be.
            guard = WriteGuard(sock, owner=threading.current_thread(), on_violation="record")
            self.guards.append(guard)
            sock = guard  # type: ignore[assignment]
        return SocketTransport(self.loop, sock)


class DirectHandle(ConnectionHandle):
    """UNSAFE ON PURPOSE: ``send()`` encodes and writes on the caller's thread.

    The IO thread keeps writing what it always writes (101, pongs, keepalive
    pings, close frames) — so, as with simple-websocket's reader thread, two
    threads write to one socket. It uses the connection's IO-thread-only
    ``session`` and ``transport`` from a worker thread: exactly the contract
    the bug breaks. ``worker_lock``: the common workaround, a lock around the
    workers' writes (``locked``).
    """

    def __init__(self, conn: Connection, worker_lock: threading.Lock | contextlib.nullcontext[None]) -> None:
        super().__init__(conn.loop, conn.writer.outbox, conn.peer, conn.close_session, conn.after_messages,
                         conn.limits.fanout_wait)
        self.conn = conn
        self.worker_lock = worker_lock

    def send(self, message: str | bytes | OutMessage, timeout: float | None = None, fanout: bool = False) -> bool:
        out = OutMessage.of(message)
        with self.worker_lock:
            session = self.conn.session
            if self.state is not State.OPEN or session is None:
                raise ConnectionClosed(self.close_code or CloseCode.ABNORMAL, self.close_reason or "not open")
            # With deflate: the shared compressor, from whichever thread gets here.
            data = session.encode(out) if session.deflate else out.header + out.payload
            self._write_from_this_thread(data)
        return True

    def send_paced(self, message: str | bytes | OutMessage, timeout: float | None = None) -> None:
        self.send(message)  # a blocking write paces itself

    def _write_from_this_thread(self, data: bytes) -> None:
        # What socket.sendall() does on a socket with a timeout: send, and wait
        # for writability when the buffer is full. Another thread's bytes can
        # land in the socket between two of these partial sends.
        # Over TLS (an SSLSocket): what a blocking SSLSocket does inside send() —
        # on want-write, wait and call SSL_write again with the same bytes — on
        # the SSL object that the IO thread reads and writes at the same time.
        transport = self.conn.transport
        sock = transport.socket
        events: TlsEvents | None = getattr(transport, "events", None)
        view = memoryview(data)
        while view:
            try:
                try:
                    sent = sock.send(view)
                except (BlockingIOError, ssl.SSLWantWriteError):
                    select.select([], [sock], [], 1.0)
                    continue
                except ssl.SSLWantReadError:  # the IO thread reads; try again shortly
                    select.select([sock], [], [], 0.05)
                    continue
            except (OSError, ValueError) as exc:  # ValueError: the IO thread closed the socket (fd -1)
                if events is not None:
                    events.record("write", exc)
                raise ConnectionClosed(CloseCode.ABNORMAL, f"write failed: {exc}") from None
            view = view[sent:]


class DirectConnection(Connection):
    """The fixed connection, except that handlers get a :class:`DirectHandle` (no lock)."""

    def make_handle(self) -> ConnectionHandle:
        return DirectHandle(self, contextlib.nullcontext())


class LockedConnection(Connection):
    """The fixed connection, except that handlers get a :class:`DirectHandle` with a per-connection lock."""

    def make_handle(self) -> ConnectionHandle:
        return DirectHandle(self, threading.Lock())


class RunningServer(Protocol):
    port: int

    def shutdown(self, timeout: float = 10.0) -> bool: ...


class Served:
    """What :func:`serve` yields: the port, the write guards' findings when guarded, over TLS what the SSL calls raised."""

    def __init__(self, server: RunningServer, guards: list[WriteGuard] | None, tls_events: TlsEvents | None = None) -> None:
        self.server = server
        self.port = server.port
        self.guards = guards
        self.tls_events = tls_events

    def violations(self) -> list[Violation]:
        return [v for g in self.guards or [] for v in g.violations]


@contextlib.contextmanager
def serve(
    discipline: str,
    host: str = "127.0.0.1",
    port: int = 0,
    workers: int = 8,
    sndbuf: int | None = None,
    deflate: bool = True,
    ping_interval: float | None = None,
    publishers: int = 0,
    rate: float = 10.0,
    guard: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    shutdown_timeout: float = 5.0,
) -> Iterator[Served]:
    """Run the demo routes with one write discipline; shut down afterwards.

    ``guard=True`` wraps every connection's socket in a recording
    :class:`~repro.guard.WriteGuard` owned by the thread that accepted it.
    ``ssl_context``: serve wss:// (the unsafe disciplines then write to the
    SSL object from worker threads: the TLS half of the bug); ``Served.tls_events``
    counts what the server's SSL calls raised, by thread.
    """
    if guard and ssl_context is not None:
        raise ValueError("the write guard wraps plain sockets; run it without TLS")
    if discipline not in DISCIPLINES:
        raise ValueError(f"unknown discipline {discipline!r}; choose from {', '.join(DISCIPLINES)}")
    tls_events = TlsEvents() if ssl_context is not None else None
    if discipline.startswith("simple-websocket"):
        sws = SimpleWebsocketServer(
            host, port, lock=discipline.endswith("+lock"), workers=workers, sndbuf=sndbuf, ping_interval=ping_interval,
            guard=guard, ssl_context=ssl_context, tls_events=tls_events,
        )
        sws.start()
        if publishers:
            sws.start_tickers(publishers, rate)
        try:
            yield Served(sws, sws.guards, tls_events)
        finally:
            sws.shutdown(shutdown_timeout)
        return
    conn_cls: type[Connection] = {"direct": DirectConnection, "locked": LockedConnection, "queued": Connection}[discipline]
    guards: list[WriteGuard] | None = [] if guard else None
    # The unsafe modes write off the IO thread by design: their writes skip the affinity check.
    limits = Limits(ping_interval=ping_interval, deflate=deflate, max_queue_bytes=64 * 1024 * 1024)
    srv = KnobServer(DemoApp, host=host, port=port, workers=workers, limits=limits, ssl_context=ssl_context)
    srv.sndbuf, srv.guards, srv.tls_events, srv.connection_class = sndbuf, guards, tls_events, conn_cls
    srv.start()
    if publishers:
        srv.router.hub.start_tickers(publishers, rate)  # type: ignore[attr-defined]
    try:
        yield Served(srv, guards, tls_events)
    finally:
        srv.shutdown(timeout=shutdown_timeout)
