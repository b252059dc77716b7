"""One client connection: a transport, an HTTP handshake, then a WebSocket session, wired to the IO loop.

Only the IO thread touches the transport (the socket) and the session
(wsproto). Other threads talk to a connection through :meth:`Connection.send`
and :meth:`Connection.close`, which never touch the socket: they put messages
into the connection's :class:`~server.connections.outbox.Outbox` and ``post()`` work to the
IO thread, which writes every byte — handshake reply, data, ping, pong and
close frames — through that one queue.

The pieces: :class:`~server.core.transport.SocketTransport` (socket IO),
:class:`~server.protocol.handshake.Handshake` (HTTP, sans I/O),
:class:`~server.protocol.session.Session` (WebSocket, sans I/O),
:class:`~server.connections.writer.Writer` (the producers' queue, the send buffer and
the half-close) and
:class:`~server.connections.strand.Strand` (in-order handling on the worker pool). This
module decides when each runs.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from functools import partial

from ..codes import CloseCode
from ..core.loop import IOLoop, Timers
from ..core.transport import SocketTransport
from ..limits import Limits
from ..protocol.handshake import HttpError
from ..protocol.session import (
    Closing,
    Deadline,
    MessageReceived,
    PingSent,
    PongReceived,
    PongTimeout,
    ProtocolError,
    Session,
    SessionState,
    ShutAfterFlush,
)
from ..stats import Stats
from .backlog import Backlog
from .dispatch import Dispatcher
from .handle import ConnectionHandle, State
from .handler import Handler, Router
from .http_phase import HttpPhase, Reply, Upgrade
from .writer import Writer

logger = logging.getLogger(__name__)


class ConnectionTimer(enum.Enum):
    """The connection's own timers (the session's are its :class:`~server.protocol.session.Deadline` s; the writer has one)."""

    HANDSHAKE = "handshake"  # bounds the HTTP phase (and a TLS handshake before it)


TimerName = Deadline | ConnectionTimer


class Connection:
    """A WebSocket connection owned by an :class:`IOLoop`: everything here is IO thread only.

    Other threads, and handlers, get :attr:`handle` (a
    :class:`~server.connections.handle.ConnectionHandle`: ``send``, ``close``,
    ``wait_closed``, the state and the close outcome), never this object.
    """

    def __init__(
        self,
        loop: IOLoop,
        transport: SocketTransport,
        router: Router,
        executor: Executor,
        limits: Limits,
        stats: Stats,
        on_closed: Callable[[Connection], None] = lambda conn: None,
        backlog: Backlog | None = None,
    ) -> None:
        self.writer = Writer(
            loop, transport, limits, stats, backlog or Backlog(1 << 62),
            on_flushed=self._on_flushed, on_error=self._on_write_error,
            on_stalled=self._close_stalled, on_behind=self._close_too_slow, on_write_shut=self._on_write_shut,
        )
        self.peer = transport.peer
        self.loop = loop
        self.transport = transport
        self._executor = executor
        self.limits = limits
        self._stats = stats
        self._on_closed = on_closed
        self._dispatcher: Dispatcher | None = None  # once open
        self._http: HttpPhase | None = HttpPhase(router, limits, stats, transport.peer)
        self.session: Session | None = None
        self._timers: Timers[TimerName] = Timers(loop)
        # The face handlers and other threads get; it holds the state, written at each transition below.
        self.handle = self.make_handle()

    def make_handle(self) -> ConnectionHandle:
        """The :class:`~server.connections.handle.ConnectionHandle` given to handlers; producers put into the writer's outbox.

        A subclass may return its own (the repro's unsafe write disciplines do).
        """
        return ConnectionHandle(self.loop, self.writer.outbox, self.peer, self.close_session,
                                self.after_messages, self.limits.fanout_wait, self.writer.write_now)

    @property
    def handler(self) -> Handler | None:
        """The route's handler for this connection (None before the 101)."""
        return self._dispatcher.handler if self._dispatcher is not None else None

    @property
    def state(self) -> State:
        """The handle's :class:`~server.connections.handle.State` (read here; the transitions below write it there)."""
        return self.handle.state

    # ------------------------------------------------------------------
    # IO thread only from here on
    # ------------------------------------------------------------------

    def start(self) -> None:
        """Register with the loop and arm the handshake timeout."""
        self.transport.start(self._on_readable, self.writer.flush)
        self._timers.arm(ConnectionTimer.HANDSHAKE, self.limits.handshake_timeout, self._on_handshake_timeout)

    def adopt(self, request: bytes) -> None:
        """:meth:`start`, with ``request`` as if just read: the HTTP bytes another server read from this socket."""
        self.start()
        if request:
            self._on_handshake_data(request)

    def after_messages(self, job: Callable[[], object]) -> None:
        """Run ``job`` on the worker pool once the handler is done with every message received so far.

        For ``on_close`` work that must follow the last ``on_message``
        (``on_close`` itself runs on the IO thread, possibly while messages
        are still being handled). Only once open; IO thread.
        """
        assert self._dispatcher is not None, "after_messages() before the connection opened"
        self._dispatcher.after_messages(job)

    def abort(self, code: int, reason: str) -> None:
        """Close the socket now, with no closing handshake; report ``code``. Runs once."""
        self.handle.record_close(code, reason)
        self._finish()

    def reject_now(self, error: HttpError) -> None:
        """Answer ``error`` to a connection still in its handshake and close it now (no lingering)."""
        if self._http is not None:
            self._reply(self._http.reject(error))
            self.writer.flush()  # a few bytes on a socket that has sent nothing yet: written at once
        self.abort(CloseCode.ABNORMAL, f"HTTP {error.status}")

    def _on_readable(self) -> None:
        try:
            data = self.transport.read()
        except OSError as exc:
            if not self.transport.established:
                self._stats.tls_handshake_errors += 1
                logger.info("%s: TLS handshake failed: %s", self.peer, exc)
            self.abort(CloseCode.ABNORMAL, f"read failed: {exc.strerror or exc}")
            return
        if data is None:
            return
        self._stats.bytes_in += len(data)
        if not data:
            self._on_eof()
        elif self._http is not None:
            self._on_handshake_data(data)
        elif self.session is not None and self.state is not State.DRAINING:
            self.session.receive_data(data)
            self._apply_session()
        # else: draining after our half-close (or an HTTP reply); discard until EOF

    def _on_eof(self) -> None:
        if self._http is not None:
            self.abort(CloseCode.ABNORMAL, "client closed during handshake")
        elif self.state is State.DRAINING:
            self.abort(self.handle.close_code or CloseCode.NORMAL, self.handle.close_reason)
        else:
            self.abort(CloseCode.ABNORMAL, "client vanished without a close frame")

    # -- HTTP phase (decided by HttpPhase) ------------------------------

    def _on_handshake_data(self, data: bytes) -> None:
        assert self._http is not None
        outcome = self._http.receive_data(data)
        if self._http.request is not None:
            self.handle.path, self.handle.query = self._http.request.path, self._http.request.query
        if isinstance(outcome, Upgrade):
            self._open(outcome)
        elif outcome is not None:
            self._reply(outcome)

    def _open(self, upgrade: Upgrade) -> None:
        self._timers.cancel(ConnectionTimer.HANDSHAKE)
        self._http = None
        self._dispatcher = Dispatcher(self.handle, upgrade.handler, self.loop, self._executor, self._stats,
                                      self._message_done, self.limits.inline_warn)
        self.session = self.writer.session = Session(self.limits, upgrade.extension)
        self.handle.deflate = self.session.deflate
        self.handle.subprotocol = upgrade.subprotocol
        self.handle.state = State.OPEN
        self._stats.opened += 1
        self.writer.append_raw(upgrade.reply)
        self.writer.flush()  # the 101 goes out before any handler can queue a frame
        logger.debug("%s: WebSocket open on %s (deflate=%s)", self.peer, upgrade.request.target, self.session.deflate)
        self._apply_session()  # the keepalive deadline
        if not self._dispatcher.open():
            self._fail(CloseCode.INTERNAL_ERROR, "internal error")
            return
        if upgrade.request.trailing:  # frames the client sent right behind its request
            self.session.receive_data(upgrade.request.trailing)
            self._apply_session()

    def _reply(self, reply: Reply) -> None:
        self._timers.cancel(ConnectionTimer.HANDSHAKE)
        self._http = None
        self.handle.record_close(CloseCode.ABNORMAL, f"HTTP {reply.status}")
        self.writer.append_raw(reply.data)
        self._close_after_flush()

    def _on_handshake_timeout(self) -> None:
        if not self.transport.established:  # no TLS yet: no way to send an HTTP answer
            self._stats.handshake_timeouts += 1
            logger.info("%s: no TLS handshake within %.1fs", self.peer, self.limits.handshake_timeout)
            self.abort(CloseCode.ABNORMAL, "TLS handshake timeout")
        elif self._http is not None:
            self._reply(self._http.timed_out())

    # -- the session's decisions ----------------------------------------

    def _apply_session(self) -> None:
        """Carry out what the session decided: deadlines, events, bytes (in that order).

        Deadlines first, so a ShutAfterFlush finds the session's CLOSE timer
        already armed instead of arming one that is replaced at once.
        """
        session = self.session
        assert session is not None
        deadlines = session.deadlines()
        if deadlines:
            self._arm_deadlines(deadlines)
        for event in session.events():
            if type(event) is MessageReceived:
                self._dispatcher.dispatch(event.message)  # type: ignore[union-attr]  # set before the session
            elif isinstance(event, Closing):
                self.handle.record_close(event.code, event.reason)
            elif isinstance(event, ProtocolError):
                self._stats.protocol_errors += 1
                logger.info("%s: protocol error %s: %s", self.peer, event.code, event.reason)
                self.transport.set_reading(False)  # nothing after the error is processed
            elif isinstance(event, ShutAfterFlush):
                self._close_after_flush()
            elif isinstance(event, PingSent):
                self._stats.keepalive_pings += 1
            elif isinstance(event, PongReceived):
                self._stats.keepalive_pongs += 1
            elif isinstance(event, PongTimeout):
                self._stats.ping_timeouts += 1
                logger.info("%s: no pong within %.1fs", self.peer, self.limits.ping_timeout)
                self._fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
        data = session.data_to_send()
        if data:
            self.writer.append_raw(data)
        self._update_reading()

    def _arm_deadlines(self, deadlines: dict[Deadline, float | None]) -> None:
        for deadline, delay in deadlines.items():
            if delay is None:
                self._timers.cancel(deadline)
            elif deadline is Deadline.CLOSE:
                self._timers.arm(deadline, delay, self._on_close_timeout)
            else:
                self._timers.arm(deadline, delay, partial(self._deadline_passed, deadline))

    def _deadline_passed(self, deadline: Deadline) -> None:
        if self.session is not None and not self.transport.closed:
            late_behind_data = self._pong_behind_data() if deadline is Deadline.PONG else None
            if late_behind_data is not None:
                self.session.wait_for_pong(late_behind_data)
            else:
                self.session.deadline_passed(deadline)
            self._apply_session()

    def _pong_behind_data(self) -> float | None:
        """Seconds more to wait for a pong whose ping is still behind data the client is taking; None: it is late.

        A keepalive ping is queued behind the data before it: a slow reader
        sees it only after that data. While data is still on its way and the
        client keeps taking it (within the longer of ``ping_timeout`` and
        ``stall_timeout``), a late pong is no sign of a dead client.
        """
        if not self.writer.buffer.frames and not self.transport.unacknowledged():
            return None
        patience = max(self.limits.ping_timeout, self.limits.stall_timeout)
        idle = time.monotonic() - self.transport.idle_since()
        return patience - idle if idle < patience else None

    def close_session(self, code: int, reason: str) -> None:
        """Start the closing handshake after what is queued (what :meth:`ConnectionHandle.close` posts)."""
        self._start_close(code, reason, wait_for_reply=True)

    def _start_close(self, code: int, reason: str, wait_for_reply: bool) -> None:
        if self.session is not None and not self.transport.closed:
            self.session.close(code, reason, wait_for_reply)
            self._apply_session()

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): drop unsent frames, send close, stop."""
        self.writer.drop_unsent()
        self._start_close(code, reason, wait_for_reply=False)

    # -- handling messages ----------------------------------------------

    def _message_done(self, message: str | bytes) -> None:
        session = self.session
        if session is None or self.transport.closed:
            return
        if session.state is SessionState.FAILING:
            self.writer.drain()  # the handler's replies are framed before the close it may now decide on
        if session.message_handled(len(message)):
            self._apply_session()
        elif not self.transport.reading:  # the common case: reading may resume (the next read re-judges a pause)
            self._update_reading()

    def _update_reading(self) -> None:
        """Read from the client only while its replies can still fit.

        Input flow control: while handlers are busy or the outbox (plus the
        replies that in-flight messages may produce) is past half the limit,
        stop reading, so TCP pushes back on a client that sends faster than it
        reads, instead of the outbox overflowing.
        """
        session = self.session
        if session is None or self.handle.state is State.DRAINING:
            return
        state = session.state
        if state is SessionState.OPEN:
            limits = self.limits
            self.transport.set_reading(session.inflight < limits.max_inflight_messages and  # not busy, not full
                                       self.writer.outbox.queued + session.inflight_bytes <= limits.max_queue_bytes // 2)
        elif state is SessionState.CLOSING:  # our close frame is out: its answer is all we read for now
            self.transport.set_reading(True)

    # -- closing --------------------------------------------------------

    def _close_stalled(self, reason: str) -> None:
        if self.state is State.OPEN:
            self._close_for_overflow(reason)
            self._stats.closed_stalled += 1

    def _close_too_slow(self, reason: str) -> None:
        """A fan-out found this client a full queue behind the feed."""
        if self.state is State.OPEN:
            self._close_for_overflow(reason)
            self._stats.closed_too_slow += 1

    def _close_for_overflow(self, reason: str) -> None:
        # The close is recorded before it is counted: whoever sees the count sees the close code too.
        self._fail(CloseCode.POLICY_VIOLATION, reason)
        self._stats.closed_by_policy += 1
        logger.warning("%s: closing with 1008: %s", self.peer, reason)

    def _close_after_flush(self) -> None:
        """Half-close the socket once the send buffer is empty (the writer does it), within ``close_timeout``."""
        if Deadline.CLOSE not in self._timers:
            self._timers.arm(Deadline.CLOSE, self.limits.close_timeout, self._on_close_timeout)
        self.writer.close_after_flush()

    def _on_close_timeout(self) -> None:
        # The timeout bounds a *stalled* close, not a long flush: a client that
        # is still reading what was queued before the close frame gets its data.
        idle = time.monotonic() - self.transport.idle_since()
        if idle < self.limits.close_timeout and self.state is not State.DRAINING and self.writer.buffer.frames:
            self._timers.arm(Deadline.CLOSE, self.limits.close_timeout - idle, self._on_close_timeout)
            return
        self.abort(CloseCode.ABNORMAL, "close timeout")

    def _on_write_shut(self, error: OSError | None) -> None:
        """Our side is half-closed: read until the client's EOF, so our last bytes are not lost to a reset."""
        if error is not None:
            self.abort(self.handle.close_code or CloseCode.NORMAL, self.handle.close_reason)
            return
        self.handle.state = State.DRAINING
        self.transport.set_reading(True)
        self._timers.arm(Deadline.CLOSE, self.limits.close_timeout, self._on_close_timeout)

    def _finish(self) -> None:
        """Close the socket and release everything; runs exactly once."""
        if self.transport.closed:
            return
        self.handle.state = State.CLOSED  # first: nothing below (a stall judgement, a flush) acts on an open connection
        self._timers.cancel_all()
        self.writer.cancel()
        self.transport.close()
        self.writer.drop_unsent(all_frames=True)
        self._stats.closed += 1
        self._stats.producer_waits += self.writer.outbox.waits
        if self.session is not None:  # a WebSocket connection: counted by its close code and who closed first
            self._stats.closes[(self.handle.close_code or CloseCode.ABNORMAL, self.session.closed_by)] += 1
        self.handle.record_closed()  # wait_closed() returns from here on
        if self._dispatcher is not None:
            self._dispatcher.closed()
        self._on_closed(self)

    def _on_flushed(self) -> None:
        if not self.transport.reading:
            self._update_reading()

    def _on_write_error(self, exc: OSError) -> None:
        logger.info("%s: write failed: %s", self.peer, exc)
        self.abort(CloseCode.ABNORMAL, f"write failed: {exc.strerror or exc}")

    def __repr__(self) -> str:
        return f"<Connection {self.peer} {self.handle.path or '-'} {self.state.value}>"
