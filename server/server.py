"""The server: a listener, the IO loop, a worker pool and graceful shutdown."""

from __future__ import annotations

import logging
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future

from .admission import Admission
from .codes import CloseCode
from .connections.backlog import Backlog
from .connections.connection import Connection
from .connections.handle import ConnectionHandle, State
from .connections.handler import Router
from .connections.pool import WorkerPool
from .core.loop import IOLoop
from .core.tls import TlsTransport
from .core.transport import SocketTransport
from .limits import Limits
from .observe.metrics import Metrics, Sample, Sampler
from .protocol.frames import OutMessage
from .protocol.http import OriginCheck
from .registry import BroadcastResult, Registry
from .scaleout.broker import Broker, MemoryBroker
from .scaleout.positions import Position, Published
from .stats import Stats
from .topics import Envelope, Topics

logger = logging.getLogger(__name__)



class Server:
    """A WebSocket server whose sockets are all owned by one IO thread.

    Application code runs on a :class:`~server.connections.pool.WorkerPool` (an ``Executor``)
    (and on any threads it starts); it sends with :meth:`ConnectionHandle.send` or
    :meth:`broadcast`, both safe from any thread.

    ``router`` is a :class:`Router`, or a callable that builds one from the
    server (so routes can reach :meth:`broadcast`). A subclass may override
    :meth:`make_transport` and :meth:`make_connection` (the factories for
    each accepted or adopted socket).
    ``max_backlog_bytes`` bounds, server-wide, what producers have sent and the
    IO thread has not taken yet: past it, producers wait for the IO thread.
    ``origins``, if given, is the allow-list of ``Origin`` values for WebSocket
    handshakes (``None`` in it admits clients that send none); others get 403.
    ``broker`` carries :meth:`publish` to the subscribers of every process
    sharing it (default: :class:`~server.scaleout.broker.MemoryBroker`, this process
    only); ``reuse_port`` lets several processes listen on one port.
    ``port=None``: no listener — connections arrive only through :meth:`adopt`
    (sockets another server accepted, e.g. a WSGI server's).
    ``metrics=False`` turns off what :attr:`metrics` measures on the send path
    and the IO thread's once-a-second probe (on by default; bench/README
    gives its cost).
    """

    def __init__(
        self,
        router: Router | Callable[[Server], Router],
        host: str = "127.0.0.1",
        port: int | None = 8765,
        workers: int = 8,
        limits: Limits | None = None,
        backlog: int = 1024,
        max_backlog_bytes: int = 64 * 1024 * 1024,
        origins: list[str | None] | None = None,
        broker: Broker | None = None,
        reuse_port: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        metrics: bool = True,
    ) -> None:
        self.host = host
        self.ssl_context = ssl_context
        self.limits = limits or Limits()
        self.stats = Stats(detailed=metrics)
        self.loop = IOLoop()
        self.executor = WorkerPool(max_workers=workers, thread_name_prefix="wsrace-worker")
        self.send_backlog = Backlog(max_backlog_bytes)
        self.registry = Registry(self.limits.fanout_wait)  # the connections; broadcast
        self._listener: socket.socket | None = None
        self.port = 0  # no listener (port=None): connections come through adopt()
        if port is not None:
            self._listener = socket.create_server((host, port), backlog=backlog, reuse_port=reuse_port)
            self._listener.setblocking(False)
            self.port = self._listener.getsockname()[1]
        self.admission = Admission(self.loop, self._listener, self._on_accept, self.limits, self.stats)
        self.admission.plain_http = ssl_context is None
        self._shutting_down = False
        self._all_closed = threading.Event()
        self._stopped = threading.Event()
        self._shutdown_lock = threading.Lock()
        self._stopped_clean = True
        self.broker: Broker = broker if broker is not None else MemoryBroker()
        self.topics = Topics(self.broker, self.registry.broadcast, self.stats)
        self.sampler: Sampler | None = (Sampler(self.loop, self.stats, self.registry.connections, self.limits.slow_warn)
                                        if metrics else None)
        if isinstance(router, type) or not hasattr(router, "route"):
            self.router: Router = router(self)  # type: ignore[operator]
        else:
            self.router = router  # type: ignore[assignment]
        # What connections route through: the router, behind the Origin check if there is one.
        self._route_via: Router = self.router if origins is None else OriginCheck(self.router, origins)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'wss' if self.ssl_context else 'ws'}://{host}:{self.port}"

    def start(self) -> Server:
        """Start the IO thread; the server accepts connections when this returns."""
        self.loop.start()
        ready = threading.Event()

        def register() -> None:
            if self._listener is not None:
                self.loop.set_interest(self._listener, self._on_accept, read=True, write=False)
            ready.set()

        self.loop.post(register)
        if not ready.wait(10):
            raise RuntimeError("the IO loop did not run a posted callable within 10 s; is its wake-up broken?")
        self.topics.start()
        if self.sampler is not None:
            self.sampler.start()
        logger.debug("listening on %s", self.url)
        return self

    def serve_forever(self, ready: Callable[[Server], None] | None = None) -> bool:
        """Start (if not started), serve until SIGINT or SIGTERM, then shut down gracefully.

        Clients see 1001 after their queued messages; with SIGUSR1 (a rolling
        restart replacing this process) 1012, "reconnect". Call from the main
        thread (signal handlers live there). ``ready`` runs once the server
        accepts connections. Returns :meth:`shutdown`'s result.
        """
        stop = threading.Event()
        restart: list[bool] = []

        def on_signal(signum: int, frame: object) -> None:
            logger.info("received %s: shutting down", signal.Signals(signum).name)
            if signum == signal.SIGUSR1:
                restart.append(True)
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
        try:
            if self.loop.thread is None:
                self.start()
            if ready is not None:
                ready(self)
            while not stop.wait(0.5):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.shutdown(timeout=10, restart=bool(restart))

    @property
    def page_url(self) -> str:
        """The ``http://`` (``https://`` with TLS) address of the same port (for a route that serves a page)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.ssl_context else 'http'}://{host}:{self.port}/"

    # -- any thread ------------------------------------------------------

    @property
    def connections(self) -> list[ConnectionHandle]:
        """A snapshot of every connection, in any state. Any thread."""
        return self.registry.snapshot()

    def open_connections(self, path: str | None = None) -> list[ConnectionHandle]:
        """A snapshot of the open WebSocket connections (on ``path``, if given). Any thread."""
        return self.registry.open(path)

    def broadcast(self, message: str | bytes | OutMessage, targets: Iterable[ConnectionHandle] | None = None) -> BroadcastResult:
        """Send one message to many connections: encoded once, the same frame bytes queued to each.

        ``targets`` defaults to every open connection; it is iterated on the
        calling thread, so pass a snapshot (:meth:`open_connections`) or a
        collection you guard yourself. One slow target never paces the rest:
        for a target whose queue is full the caller waits at most
        ``Limits.fanout_wait`` (``send(fanout=True)``); a target still a full
        queue behind the feed then is closed with 1008 "too slow for this feed"
        (policy ``close``), or the message is dropped for it (``drop``, no
        wait). Returns how many targets got it, dropped it or were closed.
        A handle class that overrides ``send()`` (:meth:`Connection.make_handle`) gets it through that.
        """
        return self.registry.broadcast(message, targets)

    @property
    def metrics(self) -> Metrics:
        """A snapshot of the server's counters, latencies, queues and IO thread (see :mod:`server.observe.metrics`).

        Any thread; never waits for the IO thread (what only it may read is
        from its last probe, at most a second old). With ``metrics=False``
        the send path's figures and the probe's stay at zero.
        """
        stats = self.stats
        counters = stats.as_dict()
        sample = self.sampler.latest if self.sampler is not None else None
        if sample is None:
            sample = Sample()
        counters["producer_waits"] += sample.producer_waits  # finished connections' + the open ones'
        broker_metrics = getattr(self.broker, "metrics", None)
        return Metrics(
            wall=time.time(), counters=counters, closes=dict(stats.closes),
            send_latency=stats.send_latency.snapshot(), handler_seconds=stats.handler_seconds.snapshot(),
            io_lag=stats.io_lag.snapshot(), sample=sample,
            backlog_bytes=self.send_backlog.bytes, backlog_waits=self.send_backlog.waits,
            workers=self.executor.thread_count, broker=broker_metrics() if broker_metrics is not None else {},
        )

    # -- topics and the broker (any thread; server/topics.py) ---------------

    def subscribe(self, conn: ConnectionHandle, topic: str = "", since: Position | str | None = None,
                  envelope: Envelope | None = None) -> None:
        """``conn`` receives what :meth:`publish` sends to ``topic``, from any process on the broker.

        ``since``: the last position the client saw (as the server gave it; a
        string is parsed, :class:`~server.scaleout.positions.PositionError` if it
        is not one). It then gets every later message of the topic exactly once,
        in order, then the live ones; if the history no longer holds that
        position (trimmed, or lost: another epoch), it is closed at once with
        4410 (:data:`~server.scaleout.positions.HISTORY_LOST`) and a reason.
        ``envelope`` (e.g. :data:`~server.topics.LINES`): each message reaches
        ``conn`` wrapped with its position, after a bookmark of where the
        subscription starts. Either makes the join go through the broker
        (with Redis, its reader thread: a tenth of a second or so when it is
        idle; joins wait for the replays queued before them), and on the IO
        thread (``on_open``) through the worker pool first.
        """
        if isinstance(since, str):
            since = Position.parse(since)
        if (since is not None or envelope is not None) and self.loop.in_io_thread():
            # A join may replay thousands of messages: on a worker its sends wait for room like any
            # producer's; on the IO thread (on_open) they would queue past every limit.
            self.executor.submit(self.topics.subscribe, conn, topic, since, envelope)
            return
        self.topics.subscribe(conn, topic, since, envelope)

    def unsubscribe(self, conn: ConnectionHandle, topic: str = "") -> None:
        self.topics.unsubscribe(conn, topic)

    def subscribers(self, topic: str = "") -> frozenset[ConnectionHandle]:
        """This process's subscribers of ``topic`` (a snapshot)."""
        return self.topics.subscribers(topic)

    def publish(self, message: str | bytes, topic: str = "") -> Published[BroadcastResult]:
        """Send ``message`` to the subscribers of ``topic`` in every process on the broker.

        Returns a :class:`~server.scaleout.positions.Published`: ``position()``
        is the message's place in the topic (what a subscriber resumes from).
        With the in-process broker this is a :meth:`broadcast` to this
        process's subscribers on the calling thread: the position is there at
        once and ``result`` is the broadcast's. With Redis the message is queued
        for this process's publisher thread (``position()`` waits for Redis's
        acknowledgement) and the reader thread of each process fans it out.
        One thread's publishes reach every subscriber in the order made.
        Raises :class:`~server.scaleout.broker.PublishQueueFull` when the broker is
        unreachable and the local publish queue is full.
        """
        return self.broker.publish(topic, message)  # type: ignore[return-value]  # the result is our deliver's

    def shutdown(self, timeout: float = 10.0, restart: bool = False) -> bool:
        """Stop accepting, close every connection with 1001 after its queued
        messages, stop the workers and the IO thread. Safe from any thread
        except the IO thread; returns False if connections had to be cut.
        ``restart``: this process is being replaced (a rolling restart):
        clients see 1012 (Service Restart) instead, and reconnect to a sibling.
        A second call (e.g. a signal handler's beside the main thread's)
        waits for the first and returns its answer.
        """
        with self._shutdown_lock:
            if not self._stopped.is_set():
                self._stopped_clean = self._shutdown(timeout, restart)
            return self._stopped_clean

    def _shutdown(self, timeout: float, restart: bool) -> bool:
        if restart:
            self.loop.post(lambda: self._begin_shutdown(CloseCode.SERVICE_RESTART, "server restarting: reconnect"))
        else:
            self.loop.post(lambda: self._begin_shutdown(CloseCode.GOING_AWAY, "server shutting down"))
        clean = self._all_closed.wait(timeout)
        if not clean:
            done = threading.Event()

            def cut() -> None:
                for conn in self.registry.connections():
                    conn.abort(CloseCode.GOING_AWAY, "server shutdown timed out")
                done.set()

            self.loop.post(cut)
            done.wait(5)
        if self.sampler is not None:
            self.sampler.stop()
        close = getattr(self.router, "close", None)
        if close is not None:
            close()
        self.broker.close()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.loop.stop()
        thread = self.loop.thread
        if thread is not None:
            thread.join(5)
        self.loop.close()
        self._stopped.set()
        logger.info("server stopped (%s)", "clean" if clean else "forced")
        return clean

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    # -- IO thread -------------------------------------------------------

    def _begin_shutdown(self, code: CloseCode, reason: str) -> None:
        self._shutting_down = True
        self.admission.stop()  # [admission] no backoff timer re-watches the closed listener
        if self._listener is not None:
            self.loop.remove(self._listener)
            self._listener.close()
        for conn in self.registry.connections():
            if conn.state is State.HANDSHAKE:
                conn.abort(code, reason)
            else:
                conn.handle.close(code, reason)
        self._check_all_closed()

    def _on_accept(self, mask: int) -> None:
        assert self._listener is not None
        for _ in range(64):  # accept a burst, then let other sockets run
            try:
                sock, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # [admission] e.g. EMFILE: back off (no spin), log once per interval
                if self.admission.accept_failed(exc):
                    continue
                return
            self.stats.accepted += 1
            self.admission.accepted()
            if not self.admission.admit(sock, addr):  # [admission] answered 503/429 and closed
                continue
            self._serve(sock, addr, self._route_via).start()

    def _serve(self, sock: socket.socket, addr: object, router: Router, limits: Limits | None = None) -> Connection:
        """A connection for an admitted socket, counted and tracked (IO thread); the caller starts it."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = self.make_connection(self.make_transport(sock), router, limits or self.limits)
        self.registry.add(conn)
        self.admission.opened(conn, addr)  # [admission]
        return conn

    def adopt(self, sock: socket.socket, request: bytes, router: Router | None = None,
              limits: Limits | None = None) -> Future[ConnectionHandle]:
        """Serve a socket another server accepted, whose HTTP request it has already read. Any thread.

        ``request``: the bytes that server read — the request head as the
        client sent it (or rebuilt from a WSGI environ) and anything the client
        sent after it, e.g. its first frames. From here on only the IO thread
        touches ``sock``: the handshake reply, every frame and the close. The
        caller must never use ``sock`` again — except an ``ssl.SSLSocket``
        (its TLS handshake done), which is only borrowed: released, not
        closed, and its owner's again once the connection is closed. ``router`` (default: the
        server's) routes this connection; ``limits`` (default: the server's)
        bound it. The future resolves to the connection once the IO thread has
        taken it and processed ``request``: with a complete request, the
        connection is then open (``on_open`` has run) or answering an HTTP
        error. The connection counts against the admission limits but is never
        refused: the server that accepted it decided that.
        """
        done: Future[ConnectionHandle] = Future()

        def take() -> None:
            try:
                addr = sock.getpeername()
            except OSError as exc:  # the client is gone already
                if not isinstance(sock, ssl.SSLSocket):  # a borrowed one stays its owner's to close
                    sock.close()
                done.set_exception(exc)
                return
            self.stats.accepted += 1
            conn = self._serve(sock, addr, router if router is not None else self._route_via, limits)
            try:
                conn.adopt(request)
            finally:
                done.set_result(conn.handle)

        self.loop.post(take)
        return done

    def make_connection(self, transport: SocketTransport, router: Router, limits: Limits) -> Connection:
        """The connection over a new transport (IO thread). A subclass may return a :class:`Connection` subclass
        (whose :meth:`~Connection.make_handle` may give handlers its own handle: if that overrides ``send()``,
        :meth:`broadcast` delivers through it instead of queueing directly)."""
        return Connection(self.loop, transport, router, self.executor, limits, self.stats, self._on_closed,
                          self.send_backlog)

    def make_transport(self, sock: socket.socket) -> SocketTransport:
        """The transport for a socket just accepted (IO thread): TLS with ``ssl_context``; a subclass may wrap the socket.

        An adopted ``ssl.SSLSocket`` (TLS done by the server that accepted it) is borrowed: see :class:`TlsTransport`.
        """
        if isinstance(sock, ssl.SSLSocket):
            return TlsTransport(self.loop, sock, None)
        if self.ssl_context is not None:
            return TlsTransport(self.loop, sock, self.ssl_context)
        return SocketTransport(self.loop, sock)

    def _on_closed(self, conn: Connection) -> None:
        self.registry.discard(conn)
        self.admission.closed(conn)  # [admission]
        self._check_all_closed()

    def _check_all_closed(self) -> None:
        if self._shutting_down and not self.registry:
            self._all_closed.set()
