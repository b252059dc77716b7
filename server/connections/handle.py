"""What any thread sees of a connection: its queue, its state, its close outcome, who it is.

:class:`ConnectionHandle` is the thread-safe face of a connection, and the
only one user code gets: handlers receive it, :meth:`Server.connections`
lists it, :meth:`Server.broadcast` takes it. Every method may be called from
any thread: it touches the connection's :class:`~server.connections.outbox.Outbox` (under
its lock) and ``IOLoop.post`` — never the socket, never wsproto. The
IO-thread machinery (:class:`~server.connections.connection.Connection`) holds its handle
and records each step of the connection's life in it (:class:`State`, the
close outcome): one record, written by the IO thread, read by anyone.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from functools import partial

from ..codes import CloseCode, check_close
from ..core.loop import IOLoop
from ..limits import Limits
from ..protocol.frames import OutMessage
from .outbox import Outbox

_get_ident = threading.get_ident


class State(enum.Enum):
    """Where a connection is in its life: :attr:`ConnectionHandle.state`, one field, set by the IO thread only.

    ``HANDSHAKE → OPEN → CLOSING → DRAINING → CLOSED``; any state may go
    straight to ``CLOSED`` (an abort), and ``HANDSHAKE`` to ``CLOSING`` (an
    HTTP answer instead of the 101).
    """

    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSING = "closing"  # close frame (or HTTP reply) queued or received; flushing
    DRAINING = "draining"  # our side shut down; reading until the peer's EOF
    CLOSED = "closed"


class ConnectionHandle:
    """Send to, close and wait for one client, from any thread."""

    def __init__(
        self,
        loop: IOLoop,
        outbox: Outbox,
        peer: str,
        close_session: Callable[[int, str], None],
        after_messages: Callable[[Callable[[], object]], None],
        fanout_wait: float = Limits.fanout_wait,
        write_now: Callable[[OutMessage], bool] | None = None,
    ) -> None:
        """Made by the connection (IO thread): ``close_session`` starts its closing handshake,
        ``after_messages`` queues a job behind its handler's messages; both run on the IO thread.
        ``write_now``: what a send on the IO thread tries first (the writer's; False: queue it)."""
        self._loop = loop
        self._write_now = write_now
        self._io_thread = loop.thread_id  # compared on every send: one C call for a producer, no method
        self.outbox = outbox  # the producers' queue: what send() and a broadcast fill (thread-safe)
        self._close_session = close_session
        self._after_messages = after_messages
        self._fanout_wait = fanout_wait
        self.peer = peer
        # Written by the IO thread as the handshake goes (path and query as soon as the request is parsed).
        self.path = ""
        self.query: dict[str, str] = {}
        self.deflate = False
        self.subprotocol: str | None = None  # the one agreed in the handshake
        # One field, read from any thread (a plain attribute: producers filter on it per message).
        self.state = State.HANDSHAKE
        self._close_code: int | None = None
        self._close_reason = ""
        self._closed_event = threading.Event()

    def send(self, message: str | bytes | OutMessage, timeout: float | None = None, fanout: bool = False) -> bool:
        """Queue one message for this client. Safe from any thread.

        Returns at once while the client's queue has room
        (``Limits.max_queue_bytes``). When it is full:

        * point-to-point (the default), policy ``close``: wait while the client
          drains, however slowly — like awaiting asyncio's ``drain()``. Only a
          client that takes nothing (no byte accepted by its socket, none
          acknowledged by its TCP) for ``Limits.stall_timeout`` is closed with
          1008 "client stalled", and this raises. A loop over many clients with
          plain ``send()`` is therefore paced by the slowest of them.
        * ``fanout=True``: this message is one member's copy of a fan-out (a
          per-client loop over a feed): wait at most ``Limits.fanout_wait``;
          a client still a full queue behind then is closed with 1008 "too
          slow for this feed" and this raises — what :meth:`Server.broadcast`
          does for each member.
        * policy ``drop``: discard the message and return False, never wait.

        On the IO thread it never waits. Messages sent by one thread are
        delivered in the order sent. Raises :class:`ConnectionClosed` once the
        connection is closing or closed, :class:`TimeoutError` after ``timeout``
        seconds.
        """
        out = OutMessage.of(message)
        if _get_ident() == self._io_thread and self._write_now is not None and self._write_now(out):
            return True  # an inline handler's (or on_open's) first message this turn: written at once
        return self.outbox.put(out, timeout, fanout_wait=self._fanout_wait if fanout else None)

    def send_paced(self, message: str | bytes | OutMessage, timeout: float | None = None) -> None:
        """Like :meth:`send`, but wait for room under either policy, and never ask for the client to be closed.

        For producers that would rather slow down to this client than lose it
        (like awaiting asyncio's ``drain()``). Raises :class:`TimeoutError`
        after ``timeout``.
        """
        self.outbox.put(OutMessage.of(message), timeout, paced=True)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start the closing handshake after everything already queued. Any thread.

        ``code`` must be one an endpoint may send (RFC 6455 7.4: 1000-1003,
        1007-1014, 3000-4999) and ``reason`` at most 123 bytes of UTF-8.
        """
        check_close(code, reason)
        if self.outbox.shut(code, reason):
            self._loop.post(partial(self._close_session, code, reason))

    @property
    def is_open(self) -> bool:
        """From the 101 until either side starts closing (a failing connection's replies still go out)."""
        return self.state is State.OPEN

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
        return self.outbox.queued

    @property
    def dropped_messages(self) -> int:
        """Messages the ``drop`` policy discarded for this client."""
        return self.outbox.dropped

    @property
    def waits(self) -> int:
        """How often a producer had to wait for room in this client's queue."""
        return self.outbox.waits

    def after_messages(self, job: Callable[[], object]) -> None:
        """Run ``job`` on the worker pool once the handler is done with every message received so far.

        For ``on_close`` work that must follow the last ``on_message``
        (``on_close`` itself runs on the IO thread, possibly while messages
        are still being handled). IO thread only (``on_open``, ``on_close``,
        an inline handler), once open.
        """
        self._after_messages(job)

    # -- the connection's record, written on the IO thread only -----------

    def record_close(self, code: int, reason: str) -> None:
        """The close outcome, recorded once: the first code and reason stay. Stops the producers."""
        if self.state is State.OPEN or self.state is State.HANDSHAKE:
            self.state = State.CLOSING
        if self._close_code is None:
            self._close_code, self._close_reason = code, reason
        self.outbox.shut(code, reason)  # producers waiting for room get ConnectionClosed

    def record_closed(self) -> None:
        """The socket is closed (the state is CLOSED already): ``wait_closed()`` returns from now on."""
        self._closed_event.set()

    def __repr__(self) -> str:
        return f"<ConnectionHandle {self.peer} {self.path or '-'} {self.state.value}>"
