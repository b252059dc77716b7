"""The server: a listener, the IO loop, a worker pool and graceful shutdown."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from .admission import Admission
from .connection import GOING_AWAY, Connection, Limits, Router, State, Stats
from .frames import OutMessage
from .loop import IOLoop

logger = logging.getLogger(__name__)


class Server:
    """A WebSocket server whose sockets are all owned by one IO thread.

    Application code runs on a :class:`~concurrent.futures.ThreadPoolExecutor`
    (and on any threads it starts); it sends with :meth:`Connection.send` or
    :meth:`broadcast`, both safe from any thread.

    ``router`` is a :class:`Router`, or a callable that builds one from the
    server (so routes can reach :meth:`broadcast`). ``connection_class`` lets
    the repro inject its unsafe write disciplines; nothing else should change it.
    """

    def __init__(
        self,
        router: Router | Callable[[Server], Router],
        host: str = "127.0.0.1",
        port: int = 8765,
        workers: int = 8,
        limits: Limits | None = None,
        backlog: int = 1024,
        connection_class: type[Connection] = Connection,
    ) -> None:
        self.host = host
        self.connection_class = connection_class
        self.limits = limits or Limits()
        self.stats = Stats()
        self.loop = IOLoop()
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsrace-worker")
        self.connections: set[Connection] = set()  # IO thread only
        self._listener = socket.create_server((host, port), backlog=backlog, reuse_port=False)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self.admission = Admission(self.loop, self._listener, self._on_accept, self.limits, self.stats)
        self._accepting = True
        self._shutting_down = False
        self._all_closed = threading.Event()
        self._stopped = threading.Event()
        if isinstance(router, type) or not hasattr(router, "route"):
            self.router: Router = router(self)  # type: ignore[operator]
        else:
            self.router = router  # type: ignore[assignment]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    def start(self) -> Server:
        """Start the IO thread; the server accepts connections when this returns."""
        self.loop.start()
        ready = threading.Event()

        def register() -> None:
            self.loop.set_interest(self._listener, self._on_accept, read=True, write=False)
            ready.set()

        self.loop.post(register)
        if not ready.wait(10):
            raise RuntimeError("the IO loop did not run a posted callable within 10 s; is its wake-up broken?")
        logger.info("listening on %s", self.url)
        return self

    # -- any thread ------------------------------------------------------

    def broadcast(self, message: str | bytes | OutMessage, targets: Iterable[Connection] | None = None) -> None:
        """Send one message to many connections; encoded once, posted once.

        ``targets`` defaults to every open connection; it is read on the IO
        thread, so a set maintained by ``on_open``/``on_close`` is safe to pass.
        """
        out = message if isinstance(message, OutMessage) else OutMessage.of(message)
        self.loop.post(partial(self._fan_out, out, targets))

    def _fan_out(self, out: OutMessage, targets: Iterable[Connection] | None) -> None:
        for conn in list(self.connections if targets is None else targets):
            if conn.state is State.OPEN:
                conn._offer(out)

    def broadcast_paced(
        self, message: str | bytes | OutMessage, targets: Iterable[Connection], stall_timeout: float = 0.25
    ) -> None:
        """Broadcast with flow control: wait for room in each client's outbox.

        The calling producer slows down to what the clients can take, instead of
        tripping the overflow policy. A client whose socket accepts no bytes for
        ``stall_timeout`` while its outbox is full is stuck: it is closed with
        1008, so one dead client stalls the producer at most that long, once.
        ``targets`` must be a snapshot (a list) the caller owns: this runs on the
        producer's thread. Encoded once, posted once.
        """
        out = message if isinstance(message, OutMessage) else OutMessage.of(message)
        size = out.size
        reserved = []
        for conn in targets:
            if conn._try_reserve(size) or conn._reserve_or_evict(size, stall_timeout):
                reserved.append(conn)
        if reserved:
            self.loop.post(partial(self._fan_out_reserved, out, reserved))

    @staticmethod
    def _fan_out_reserved(out: OutMessage, reserved: list[Connection]) -> None:
        for conn in reserved:
            conn._enqueue(out)

    def shutdown(self, timeout: float = 10.0) -> bool:
        """Stop accepting, close every connection with 1001 after its queued
        messages, stop the workers and the IO thread. Safe from any thread
        except the IO thread; returns False if connections had to be cut.
        """
        if self._stopped.is_set():
            return True
        self.loop.post(self._begin_shutdown)
        clean = self._all_closed.wait(timeout)
        if not clean:
            done = threading.Event()

            def cut() -> None:
                for conn in list(self.connections):
                    conn._finish(GOING_AWAY, "server shutdown timed out")
                done.set()

            self.loop.post(cut)
            done.wait(5)
        close = getattr(self.router, "close", None)
        if close is not None:
            close()
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

    def _begin_shutdown(self) -> None:
        self._shutting_down = True
        self._accepting = False
        self.admission.stop()  # [admission] no backoff timer re-watches the closed listener
        self.loop.remove(self._listener)
        self._listener.close()
        for conn in list(self.connections):
            if conn.state is State.HANDSHAKE:
                conn._finish(GOING_AWAY, "server shutting down")
            else:
                conn.close(GOING_AWAY, "server shutting down")
        self._check_all_closed()

    def _on_accept(self, mask: int) -> None:
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
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = self.connection_class(self.loop, sock, self.router, self.executor, self.limits, self.stats, self._on_closed)
            self.connections.add(conn)
            self.admission.opened(conn, addr)  # [admission]
            conn.start()

    def _on_closed(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self.admission.closed(conn)  # [admission]
        self._check_all_closed()

    def _check_all_closed(self) -> None:
        if self._shutting_down and not self.connections:
            self._all_closed.set()
