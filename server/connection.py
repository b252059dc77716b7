"""One WebSocket session: a non-blocking socket plus a wsproto connection.

Only the IO thread touches ``_sock`` and ``_ws``. Other threads talk to a
connection through :meth:`Connection.send` and :meth:`Connection.close`,
which never touch the socket: they put messages into the connection's
:class:`~server.outbox.Outbox` and ``post()`` work to the IO thread, which
writes every byte — handshake reply, data, ping, pong and close frames —
through that one queue.
"""

from __future__ import annotations

import enum
import errno
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from . import affinity
from .errors import ConnectionClosed
from .frames import OutMessage
from .handshake import (
    HandshakeParser,
    HttpError,
    HttpRequest,
    check_upgrade,
    error_response,
    negotiate_deflate,
    upgrade_response,
)
from .http import Response
from .loop import IOLoop, Timer
from .outbox import Backlog, Outbox, OverflowPolicy
from .strand import Strand

logger = logging.getLogger(__name__)

# Close codes (RFC 6455 section 7.4.1).
NORMAL = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
ABNORMAL = 1006
INVALID_DATA = 1007
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011

_RECV_SIZE = 256 * 1024

# Codes an endpoint may put in a close frame (RFC 6455 7.4; 1012-1014 registered with IANA since).
_SENDABLE = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
MAX_REASON_BYTES = 123  # a control frame's payload is at most 125 bytes, 2 of them the code


def check_close(code: int, reason: str) -> None:
    """Raise ValueError unless ``code`` and ``reason`` may go into a close frame."""
    if not (code in _SENDABLE or 3000 <= code <= 4999):
        raise ValueError(f"close code {code} may not be sent (RFC 6455 7.4): use 1000-1003, 1007-1014 or 3000-4999")
    size = len(reason.encode("utf-8"))
    if size > MAX_REASON_BYTES:
        raise ValueError(f"close reason is {size} bytes of UTF-8; at most {MAX_REASON_BYTES} fit in a close frame")


@dataclass(frozen=True)
class Limits:
    """Per-connection limits; every one has a safe default."""

    max_queue_bytes: int = 16 * 1024 * 1024  # per client: producers wait (or drop) while this much is unsent
    overflow: OverflowPolicy = OverflowPolicy.CLOSE
    stall_timeout: float = 1.0  # a full queue whose socket takes no bytes this long: the client is stalled
    max_message_bytes: int = 16 * 1024 * 1024
    ping_interval: float | None = 20.0
    ping_timeout: float = 20.0
    handshake_timeout: float = 10.0
    close_timeout: float = 5.0
    max_inflight_messages: int = 16  # received, not yet handled: reading pauses at this many
    deflate: bool = True
    # Server-wide admission limits (server/admission.py); None = derived/unlimited.
    max_connections: int | None = None  # past it: HTTP 503 (default: from RLIMIT_NOFILE)
    max_connections_per_ip: int | None = None  # past it: HTTP 429
    max_handshakes: int | None = None  # in progress at once; past it: 503 (default: max_connections // 2)
    busy_handshake_timeout: float = 2.0  # handshake timeout under pressure (flood of silent sockets)


class Handler(Protocol):
    """What a route implements for one connection (one instance per connection).

    One connection's messages are handled one at a time, in the order received
    (a strand over the worker pool). A handler class that sets
    ``concurrent_messages = True`` opts out: each message goes to the pool on
    its own, so several may run at once and finish in any order.
    """

    def on_open(self, conn: Connection) -> None:
        """On the IO thread, once the 101 reply is queued. Must not block."""

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        """On a worker thread, once per received message, in order (see the class docstring)."""

    def on_close(self, conn: Connection) -> None:
        """On the IO thread, once the socket is closed. Must not block."""


class Router(Protocol):
    def route(self, request: HttpRequest) -> Handler | Response | bytes:
        """A handler for a WebSocket route, or an HTTP response; may raise HttpError.

        Runs on the IO thread, once per request: it must be quick and must not
        block (no database calls, no sleeps) — every other client waits while
        it runs. Do slow checks in ``on_open`` by handing them to a worker, or
        before the server sees the request. An exception other than
        :class:`HttpError` is answered with 500, logged and counted.
        """


class State(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSING = "closing"  # close frame queued or received; flushing
    DRAINING = "draining"  # our side shut down; reading until the peer's EOF
    CLOSED = "closed"


class Stats:
    """Server-wide counters, written on the IO thread (``dropped_messages``: under its own lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.accepted = 0
        self.opened = 0
        self.closed = 0
        self.http_errors = 0
        self.closed_by_policy = 0
        self.dropped_messages = 0
        self.protocol_errors = 0
        self.handshake_timeouts = 0
        self.ping_timeouts = 0
        self.keepalive_pings = 0  # keepalive pings sent
        self.keepalive_pongs = 0  # pongs received (answers to keepalive pings)
        self.handler_errors = 0
        self.route_errors = 0  # route() raised something other than HttpError: answered 500
        # admission (server/admission.py)
        self.rejected_busy = 0  # answered 503: connection or handshake limit
        self.rejected_per_ip = 0  # answered 429
        self.accept_errors = 0  # accept() failed (EMFILE, ENFILE, ...)
        self.accept_pauses = 0  # listener unwatched for a backoff after such a failure
        self.busy_handshake_timeouts = 0  # 408 after busy_handshake_timeout under pressure
        # broker (server/broker.py; written by its threads)
        self.broker_reconnects = 0  # publisher or reader reconnected after losing the broker
        self.broker_publishes_queued = 0  # publishes made while the broker was unreachable (sent when it is back)
        self.broker_publishes_failed = 0  # refused (local publish queue full) or unsent at shutdown
        self.broker_gaps = 0  # a reader found entries it never saw were gone (trimmed, or the stream vanished)
        self.broker_messages_missed = 0  # messages known lost in those gaps (a vanished stream counts 0: unknown)
        self.broker_subscribers_closed = 0  # subscribers closed with 1013 because of a gap
        self.broker_duplicates = 0  # second copies left by a retried publish, dropped by the reader

    def count_drop(self) -> None:
        """Any thread: one message discarded by the ``drop`` policy."""
        with self._lock:
            self.dropped_messages += 1

    def as_dict(self) -> dict[str, int]:
        return {name: value for name, value in vars(self).items() if not name.startswith("_")}


class Connection:
    """A WebSocket connection owned by an :class:`IOLoop`.

    Public API (any thread): :meth:`send`, :meth:`send_paced`, :meth:`close`, :attr:`close_code`,
    :attr:`close_reason`, :meth:`wait_closed`, :attr:`path`, :attr:`query`,
    :attr:`deflate`, :attr:`peer`.
    """

    def __init__(
        self,
        loop: IOLoop,
        sock: socket.socket,
        router: Router,
        executor: Executor,
        limits: Limits,
        stats: Stats,
        on_closed: Callable[[Connection], None] = lambda conn: None,
        backlog: Backlog | None = None,
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._router = router
        self._executor = executor
        self.limits = limits
        self._stats = stats
        self._on_closed = on_closed
        try:
            host, port = sock.getpeername()[:2]
            self.peer = f"{host}:{port}"
        except OSError:
            self.peer = "?"
        self.path = ""
        self.query: dict[str, str] = {}
        self.deflate = False
        self.handler: Handler | None = None
        self._strand: Strand | None = None  # None: messages go to the executor one by one

        self.state = State.HANDSHAKE
        self._parser: HandshakeParser | None = HandshakeParser()
        self._ws: WsConnection | None = None

        self._outbox = Outbox(
            limits.max_queue_bytes,
            limits.overflow,
            schedule=partial(loop.post, self._drain),
            on_full=partial(loop.post, self._check_stall),
            on_drop=stats.count_drop,
            backlog=backlog or Backlog(1 << 62),
            in_io_thread=loop.in_io_thread,
        )
        self._flush_posted = False
        self._shut_when_flushed = False
        self._writing = False  # registered for EVENT_WRITE
        self._reading = True

        self._close_code: int | None = None
        self._close_reason = ""
        self._closed_event = threading.Event()

        self._partial: list[bytes | bytearray | str] = []
        self._partial_size = 0
        self._inflight = 0
        self._last_progress = time.monotonic()
        self._inflight_bytes = 0
        self._timers: dict[str, Timer] = {}
        self._ping_seq = 0
        self._failing: tuple[int, str] | None = None  # a protocol error: closing once handlers are done

    # ------------------------------------------------------------------
    # Any thread
    # ------------------------------------------------------------------

    def send(self, message: str | bytes | OutMessage, timeout: float | None = None) -> bool:
        """Queue one message for this client. Safe from any thread.

        Returns at once while the client's queue has room. When it is full
        (``Limits.max_queue_bytes``), the ``close`` policy waits while the
        client drains — a client whose socket takes no bytes for
        ``Limits.stall_timeout`` is closed with 1008 and this raises — and the
        ``drop`` policy discards the message and returns False. On the IO
        thread it never waits. Messages sent by one thread are delivered in
        the order sent. Raises :class:`ConnectionClosed` once the connection is
        closing or closed, :class:`TimeoutError` after ``timeout`` seconds.
        """
        return self._outbox.put(OutMessage.of(message), timeout)

    def send_paced(self, message: str | bytes | OutMessage, timeout: float | None = None) -> None:
        """Like :meth:`send`, but wait for room under either policy, and never ask for the client to be closed.

        For producers that would rather slow down to this client than lose it
        (like awaiting asyncio's ``drain()``). Raises :class:`TimeoutError`
        after ``timeout``.
        """
        self._outbox.put(OutMessage.of(message), timeout, paced=True)

    def close(self, code: int = NORMAL, reason: str = "") -> None:
        """Start the closing handshake after everything already queued. Any thread.

        ``code`` must be one an endpoint may send (RFC 6455 7.4: 1000-1003,
        1007-1011, 3000-4999) and ``reason`` at most 123 bytes of UTF-8.
        """
        check_close(code, reason)
        if self._outbox.shut(code, reason):
            self._loop.post(partial(self._start_close, code, reason))

    @property
    def closed(self) -> bool:
        return self._closed_event.is_set()

    @property
    def close_code(self) -> int | None:
        """The close code the connection ended with (None while open)."""
        return self._close_code

    @property
    def close_reason(self) -> str:
        return self._close_reason

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self._closed_event.wait(timeout)

    @property
    def queued_bytes(self) -> int:
        """Bytes sent to this client and not yet accepted by its socket (posted or queued)."""
        return self._outbox.queued

    @property
    def dropped_messages(self) -> int:
        """Messages the ``drop`` policy discarded for this client."""
        return self._outbox.dropped

    # ------------------------------------------------------------------
    # IO thread only from here on
    # ------------------------------------------------------------------

    def start(self) -> None:
        """Register with the loop and arm the handshake timeout."""
        self._sock.setblocking(False)
        self._loop.set_interest(self._sock, self._on_ready, read=True, write=False)
        self._arm("handshake", self.limits.handshake_timeout, self._on_handshake_timeout)

    def _on_ready(self, mask: int) -> None:
        if mask & 2 and self.state is not State.CLOSED:  # EVENT_WRITE
            self._flush()
        if mask & 1 and self.state is not State.CLOSED:  # EVENT_READ
            self._read()

    def _read(self) -> None:
        try:
            data = self._sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._abort(ABNORMAL, f"read failed: {exc.strerror or exc}")
            return
        if not data:
            self._on_eof()
            return
        if self.state is State.HANDSHAKE:
            self._on_handshake_data(data)
        elif self.state in (State.OPEN, State.CLOSING) and self._ws is not None:
            if self._ws.state is not ConnectionState.CLOSED:
                self._ws.receive_data(data)
                self._process_events()
        # else: draining after our half-close; discard until EOF

    def _on_eof(self) -> None:
        if self.state is State.HANDSHAKE:
            self._finish(ABNORMAL, "client closed during handshake")
        elif self.state is State.DRAINING:
            self._finish(self._close_code or NORMAL, self._close_reason)
        else:
            self._abort(ABNORMAL, "client vanished without a close frame")

    # -- handshake ------------------------------------------------------

    def _on_handshake_data(self, data: bytes) -> None:
        assert self._parser is not None
        try:
            request = self._parser.feed(data)
            if request is None:
                return
            self._parser = None
            self._accept(request)
        except HttpError as exc:
            self._stats.http_errors += 1
            logger.info("%s: HTTP %s: %s", self.peer, exc.status, exc.message)
            self._reply_and_close(error_response(exc), exc.status)
        except Exception:
            # A bug in route() (or on the way to the 101): answer 500 now, not at the handshake timeout.
            if self.state is not State.HANDSHAKE:
                raise
            self._stats.http_errors += 1
            self._stats.route_errors += 1
            logger.exception("%s: routing %s failed", self.peer, self.path or "the request")
            self._reply_and_close(error_response(HttpError(500, "internal server error")), 500)

    def _accept(self, request: HttpRequest) -> None:
        self.path, self.query = request.path, request.query
        target = self._router.route(request)
        if isinstance(target, Response):  # a plain HTTP route
            self._reply_and_close(target.to_bytes(head_only=request.method == "HEAD"), target.status)
            return
        if isinstance(target, bytes):  # a complete response, built by the route itself
            self._reply_and_close(target, 200)
            return
        if not hasattr(target, "on_message"):
            raise TypeError(f"route() returned {type(target).__name__}; expected a Handler, a Response or bytes")
        key = check_upgrade(request)
        extension, ext_header = negotiate_deflate(request, self.limits.deflate, self.limits.max_message_bytes)
        self._cancel("handshake")
        self.handler = target
        if not getattr(target, "concurrent_messages", False):
            self._strand = Strand(self._executor)
        self.deflate = extension is not None
        self._ws = WsConnection(ConnectionType.SERVER, [extension] if extension else [], b"")
        self.state = State.OPEN
        self._stats.opened += 1
        self._append_raw(upgrade_response(key, ext_header))
        self._flush()  # the 101 goes out before any handler can queue a frame
        logger.debug("%s: WebSocket open on %s (deflate=%s)", self.peer, request.target, self.deflate)
        self._schedule_ping()
        try:
            target.on_open(self)
        except Exception:
            self._stats.handler_errors += 1
            logger.exception("%s: on_open failed", self.peer)
            self._fail(INTERNAL_ERROR, "internal error")
            return
        if request.trailing:  # frames the client sent right behind its request
            self._ws.receive_data(request.trailing)
            self._process_events()

    def _reply_and_close(self, response: bytes, status: int) -> None:
        self._cancel("handshake")
        self._record_close(ABNORMAL, f"HTTP {status}")
        self._append_raw(response)
        self._close_after_flush()

    def _on_handshake_timeout(self) -> None:
        if self.state is State.HANDSHAKE:
            self._stats.handshake_timeouts += 1
            logger.info("%s: no complete request within %.1fs", self.peer, self.limits.handshake_timeout)
            self._reply_and_close(error_response(HttpError(408, "request timeout")), 408)

    # -- receiving ------------------------------------------------------

    def _process_events(self) -> None:
        assert self._ws is not None
        for event in self._ws.events():
            if self._failing is not None:
                return  # fail fast: nothing after a protocol error is processed
            if isinstance(event, CloseConnection):
                self._on_close_frame(event)
                return
            if self.state is not State.OPEN:
                continue  # closing: the client's data and pings no longer matter
            if isinstance(event, (TextMessage, BytesMessage)):
                self._on_message_part(event)
            elif isinstance(event, Ping) and self._ws.state is ConnectionState.OPEN:
                self._append_raw(self._ws.send(event.response()))
            elif isinstance(event, Pong):
                self._cancel("pong")
                self._stats.keepalive_pongs += 1

    def _on_message_part(self, event: TextMessage | BytesMessage) -> None:
        self._partial_size += len(event.data)
        if self._partial_size > self.limits.max_message_bytes:
            self._on_protocol_error(MESSAGE_TOO_BIG, f"message over {self.limits.max_message_bytes} bytes")
            return
        self._partial.append(event.data)
        if not event.message_finished:
            return
        parts, self._partial, self._partial_size = self._partial, [], 0
        message: str | bytes = "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)  # type: ignore[arg-type]
        self._inflight += 1
        self._inflight_bytes += len(message)
        try:
            if self._strand is not None:
                self._strand.submit(partial(self._handle_message, message))
            else:
                self._executor.submit(self._handle_message, message)
        except RuntimeError:  # executor shut down
            self._message_done(message)
        self._update_reading()

    def _update_reading(self) -> None:
        """Read from the client only while its replies can still fit.

        Input flow control: while handlers are busy or the outbox (plus the
        replies that in-flight messages may produce) is past half the limit,
        stop reading, so TCP pushes back on a client that sends faster than it
        reads, instead of the outbox overflowing.
        """
        if self.state is not State.OPEN or self._failing is not None:
            return
        busy = self._inflight >= self.limits.max_inflight_messages
        full = self._outbox.queued + self._inflight_bytes > self.limits.max_queue_bytes // 2
        self._set_reading(not (busy or full))

    def _handle_message(self, message: str | bytes) -> None:
        """Runs on a worker thread."""
        assert self.handler is not None
        try:
            self.handler.on_message(self, message)
        except ConnectionClosed:
            pass  # the client left while we answered: nothing to do
        except Exception:
            logger.exception("%s: handler failed on a message", self.peer)
            self._loop.post(self._count_handler_error)
            self.close(INTERNAL_ERROR, "internal error")
        finally:
            self._loop.post(partial(self._message_done, message))

    def _message_done(self, message: str | bytes) -> None:
        self._inflight -= 1
        self._inflight_bytes -= len(message)
        if self._failing is not None:
            if not self._inflight:
                self._close_failed()  # the replies were queued before this ran: the close goes out after them
            return
        if not self._reading:
            self._update_reading()

    def _count_handler_error(self) -> None:
        self._stats.handler_errors += 1

    def _on_close_frame(self, event: CloseConnection) -> None:
        assert self._ws is not None
        state = self._ws.state
        if state is ConnectionState.REMOTE_CLOSING:
            # The client started the closing handshake: echo its code and finish.
            self._record_close(event.code, event.reason or "")
            self._append_raw(self._ws.send(event.response()))
            self._close_after_flush()
        elif state is ConnectionState.CLOSED:
            # The client answered our close frame.
            self._close_after_flush()
        else:
            # wsproto turned a parse failure into a close event (1002, 1007, ...).
            reason = event.reason or "protocol error"
            if event.code == MESSAGE_TOO_BIG:  # from BoundedPerMessageDeflate
                reason = f"message inflates to over {self.limits.max_message_bytes} bytes"
            self._on_protocol_error(event.code, reason)

    # -- closing --------------------------------------------------------

    def _record_close(self, code: int, reason: str) -> None:
        if self._close_code is None:
            self._close_code, self._close_reason = code, reason
        self._outbox.shut(code, reason)  # producers waiting for room get ConnectionClosed

    def _start_close(self, code: int, reason: str) -> None:
        """Queue our close frame behind everything already queued."""
        if self._ws is None or self._ws.state is not ConnectionState.OPEN or self.state is not State.OPEN:
            return
        self._record_close(code, reason)
        self.state = State.CLOSING
        self._append_raw(self._ws.send(CloseConnection(code=code, reason=reason)))
        self._cancel("ping")
        self._cancel("pong")
        self._arm("close", self.limits.close_timeout, self._on_close_timeout)

    def _on_protocol_error(self, code: int, reason: str) -> None:
        """Fail the connection on the client's protocol error (RFC 6455 7.1.7), strictly.

        Nothing received after the error is processed (reading stops now), but
        the replies to messages received before it go out first: the close
        frame waits until their handlers are done, at most ``close_timeout``.
        """
        self._stats.protocol_errors += 1
        logger.info("%s: protocol error %s: %s", self.peer, code, reason)
        self._failing = (code, reason)
        self._set_reading(False)
        self._cancel("ping")
        if self._inflight:
            self._arm("fail", self.limits.close_timeout, self._close_failed)
        else:
            self._close_failed()

    def _close_failed(self) -> None:
        if self._failing is None or self.state is not State.OPEN:
            return
        self._cancel("fail")
        self._start_close(*self._failing)
        self._close_after_flush()

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): drop unsent frames, send close, stop."""
        self._outbox.drop_unsent()
        self._start_close(code, reason)
        self._close_after_flush()

    def _close_for_overflow(self, reason: str) -> None:
        if self.state is State.OPEN:
            self._stats.closed_by_policy += 1
            logger.warning("%s: closing with 1008: %s", self.peer, reason)
            self._fail(POLICY_VIOLATION, reason)

    def _close_after_flush(self) -> None:
        """Half-close the socket once the outbox is empty."""
        self.state = State.CLOSING
        self._shut_when_flushed = True
        self._cancel("ping")
        self._cancel("pong")
        if "close" not in self._timers:
            self._arm("close", self.limits.close_timeout, self._on_close_timeout)
        self._post_flush()

    def _on_close_timeout(self) -> None:
        # The timeout bounds a *stalled* close, not a long flush: a client that
        # is still reading what was queued before the close frame gets its data.
        idle = time.monotonic() - self._last_progress
        if idle < self.limits.close_timeout and self.state is State.CLOSING and self._outbox.frames:
            self._arm("close", self.limits.close_timeout - idle, self._on_close_timeout)
            return
        self._finish(self._close_code or ABNORMAL, self._close_reason or "close timeout")

    def _abort(self, code: int, reason: str) -> None:
        self._record_close(code, reason)
        self._finish(code, reason)

    def _finish(self, code: int, reason: str) -> None:
        """Close the socket and release everything; runs exactly once."""
        if self.state is State.CLOSED:
            return
        was_open = self._ws is not None
        self.state = State.CLOSED
        self._record_close(code, reason)
        for name in list(self._timers):
            self._cancel(name)
        self._loop.remove(self._sock)
        try:
            self._sock.close()
        except OSError:
            pass
        self._outbox.drop_unsent(all_frames=True)
        self._stats.closed += 1
        self._closed_event.set()
        if was_open and self.handler is not None:
            try:
                self.handler.on_close(self)
            except Exception:
                logger.exception("%s: on_close failed", self.peer)
        self._on_closed(self)

    # -- keepalive ------------------------------------------------------

    def _schedule_ping(self) -> None:
        if self.limits.ping_interval:
            self._arm("ping", self.limits.ping_interval, self._send_ping)

    def _send_ping(self) -> None:
        if self.state is not State.OPEN or self._ws is None:
            return
        self._ping_seq += 1
        self._append_raw(self._ws.send(Ping(payload=struct.pack("!I", self._ping_seq))))
        self._stats.keepalive_pings += 1
        if "pong" not in self._timers:
            self._arm("pong", self.limits.ping_timeout, self._on_pong_timeout)
        self._schedule_ping()

    def _on_pong_timeout(self) -> None:
        self._stats.ping_timeouts += 1
        logger.info("%s: no pong within %.1fs", self.peer, self.limits.ping_timeout)
        self._fail(INTERNAL_ERROR, "keepalive ping timeout")

    # -- timers ---------------------------------------------------------

    def _arm(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        self._cancel(name)

        def fire() -> None:
            self._timers.pop(name, None)
            callback()

        self._timers[name] = self._loop.call_later(delay, fire)

    def _cancel(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    # -- writing --------------------------------------------------------

    def _drain(self) -> None:
        """Turn the messages producers put into frames (scheduled by the outbox, once per batch)."""
        outbox = self._outbox
        pending = outbox.take()
        if self.state is not State.OPEN or self._ws is None:
            outbox.release(sum(out.size for out in pending))  # closing: the close frame is already queued
            return
        if self.deflate:
            # Compress here, in queue order: the deflate context is per connection.
            ws = self._ws
            for out in pending:
                event = TextMessage(data=out.payload.decode("utf-8")) if out.text else BytesMessage(data=out.payload)
                data = ws.send(event)
                outbox.append((data,), out.size, len(data))
        else:
            outbox.extend(pending)  # each message is its own frame: shared by every client, nothing copied
        self._post_flush()

    def _append_raw(self, data: bytes | bytearray) -> None:
        """Queue protocol bytes (handshake reply, control frames); not counted against the limit."""
        if data:
            self._outbox.append((bytes(data),), 0, len(data))
            self._post_flush()

    def _post_flush(self) -> None:
        # One flush per batch: everything queued in this loop turn goes out together.
        if not self._flush_posted:
            self._flush_posted = True
            self._loop.call_after_batch(self._flush)

    def _flush(self) -> None:
        self._flush_posted = False
        if self.state is State.CLOSED:
            return
        outbox = self._outbox
        while outbox.frames:
            buffers, frames, offered, reserved = outbox.gather()
            affinity.check_write(self._loop.thread_id, self.peer)
            try:
                sent = self._sock.sendmsg(buffers)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                    logger.info("%s: write failed: %s", self.peer, exc)
                self._abort(ABNORMAL, f"write failed: {exc.strerror or exc}")
                return
            outbox.written(sent, offered, frames, reserved)
            if sent:
                self._last_progress = time.monotonic()
            if sent < offered:
                break  # the socket is full: resume when writable
        since = outbox.blocked_since
        if since is not None and outbox.full and "stall" not in self._timers:
            self._arm("stall", max(0.0, since + self.limits.stall_timeout - time.monotonic()), self._check_stall)
        if not self._reading:
            self._update_reading()
        if bool(outbox.frames) is not self._writing:
            self._set_writing(not self._writing)
        if not outbox.frames and self._shut_when_flushed and self.state is State.CLOSING:
            self._shutdown_write()

    def _check_stall(self) -> None:
        """Judge the client (IO thread): its queue is full and producers wait. Is its socket stuck?

        Stalled means the socket has refused bytes for ``stall_timeout`` and
        still cannot take any: a busy IO thread does not make a reading client
        look stuck, because the socket is asked again here before judging.
        """
        outbox = self._outbox
        outbox.judged()
        if self.state is not State.OPEN or not outbox.full:
            return
        since = outbox.blocked_since
        if since is None:
            return  # not blocked: the IO thread is just behind; the next partial flush looks again
        if self._socket_writable():
            self._flush()  # it takes bytes again; the flush looks again if it fills up
            return
        waited = time.monotonic() - since
        if waited < self.limits.stall_timeout:
            self._arm("stall", self.limits.stall_timeout - waited, self._check_stall)
            return
        self._close_for_overflow(f"queue full and no bytes taken for {self.limits.stall_timeout} s: client stalled")

    def _socket_writable(self) -> bool:
        poller = select.poll()
        poller.register(self._sock, select.POLLOUT)
        return bool(poller.poll(0))

    def _shutdown_write(self) -> None:
        """Half-close and read until the client's EOF, so our last bytes are not lost to a reset."""
        self.state = State.DRAINING
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._finish(self._close_code or NORMAL, self._close_reason)
            return
        self._set_reading(True)
        self._arm("close", self.limits.close_timeout, self._on_close_timeout)

    def _set_writing(self, writing: bool) -> None:
        if writing != self._writing:
            self._writing = writing
            self._loop.set_interest(self._sock, self._on_ready, read=self._reading, write=writing)

    def _set_reading(self, reading: bool) -> None:
        if reading != self._reading and self.state is not State.CLOSED:
            self._reading = reading
            self._loop.set_interest(self._sock, self._on_ready, read=reading, write=self._writing)

    def __repr__(self) -> str:
        return f"<Connection {self.peer} {self.path or '-'} {self.state.value}>"

