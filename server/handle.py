"""What any thread sees of a connection: its queue, its close outcome, who it is.

:class:`ConnectionHandle` is the thread-safe face of a connection. Every
method here may be called from any thread: it touches the connection's
:class:`~server.outbox.Outbox` (under its lock) and ``IOLoop.post`` — never
the socket, never wsproto. :class:`~server.connection.Connection` adds the
IO-thread machinery behind it.
"""

from __future__ import annotations

import threading
from functools import partial

from .codes import CloseCode, check_close
from .frames import OutMessage
from .limits import Limits
from .loop import IOLoop
from .outbox import Outbox


class ConnectionHandle:
    """Send to, close and wait for one client, from any thread."""

    def __init__(self, loop: IOLoop, outbox: Outbox, peer: str, fanout_wait: float = Limits.fanout_wait) -> None:
        self._loop = loop
        self.outbox = outbox  # the producers' queue: what send() and a broadcast fill (thread-safe)
        self._fanout_wait = fanout_wait
        self.peer = peer
        self.path = ""
        self.query: dict[str, str] = {}
        self.deflate = False
        self.subprotocol: str | None = None  # the one agreed in the handshake
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
        return self.outbox.put(OutMessage.of(message), timeout, fanout_wait=self._fanout_wait if fanout else None)

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
            self._loop.post(partial(self._close_requested, code, reason))

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

    def _close_requested(self, code: int, reason: str) -> None:
        """On the IO thread, once per connection: start the closing handshake (the connection's part)."""
        raise NotImplementedError
