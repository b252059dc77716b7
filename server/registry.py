"""A server's connections, and broadcast: one message, encoded once, queued to many of them.

The IO thread adds and removes connections; any thread takes snapshots and
broadcasts. A broadcast queues the same frame bytes to every target with room
under one lock acquisition (:meth:`Outbox.put_shared <server.connections.outbox.Outbox.put_shared>`); a target whose
queue is full gets ``send(fanout=True)``'s path — a wait of at most
``fanout_wait``, then the overflow action — and the rest go on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from operator import attrgetter

from .connections.connection import Connection
from .connections.handle import ConnectionHandle, State
from .connections.outbox import Outbox
from .errors import ConnectionClosed
from .protocol.frames import OutMessage

_outbox_of = attrgetter("outbox")
_OPEN = State.OPEN


@dataclass
class BroadcastResult:
    """What :meth:`Server.broadcast` did with one message."""

    queued: int = 0  # connections the message was queued to
    dropped: int = 0  # discarded by the ``drop`` policy (queue full)
    closed: int = 0  # closing or closed already, or closed by this broadcast as too slow for the feed


class Registry:
    """The connections of one server, by handle. :meth:`add`, :meth:`discard` and :meth:`connections`
    on the IO thread; the rest any thread."""

    def __init__(self, fanout_wait: float) -> None:
        self._fanout_wait = fanout_wait
        self._connections: dict[ConnectionHandle, Connection] = {}  # changed under _lock
        self._lock = threading.Lock()
        # A handle whose class overrides send() (its own delivery) was added: broadcast calls send().
        self._own_send = False

    def add(self, conn: Connection) -> None:
        if type(conn.handle).send is not ConnectionHandle.send:
            self._own_send = True
        with self._lock:
            self._connections[conn.handle] = conn

    def discard(self, conn: Connection) -> None:
        with self._lock:
            self._connections.pop(conn.handle, None)

    def __len__(self) -> int:
        return len(self._connections)

    def connections(self) -> list[Connection]:
        """The connections themselves (IO-thread objects: for the IO thread, and tools that drive it)."""
        with self._lock:
            return list(self._connections.values())

    def snapshot(self) -> list[ConnectionHandle]:
        """Every connection's handle, in any state."""
        with self._lock:
            return list(self._connections)

    def open(self, path: str | None = None) -> list[ConnectionHandle]:
        """The open WebSocket connections (on ``path``, if given)."""
        conns = self.snapshot()
        if path is None:
            return [c for c in conns if c.state is _OPEN]
        return [c for c in conns if c.state is _OPEN and c.path == path]

    def broadcast(self, message: str | bytes | OutMessage, targets: Iterable[ConnectionHandle] | None = None) -> BroadcastResult:
        """See :meth:`Server.broadcast`."""
        out = OutMessage.of(message)
        result = BroadcastResult()
        conns = self.open() if targets is None else targets
        if self._own_send:
            for conn in conns:
                _count_send(conn.send, out, result)
            return result
        # Fast path: queue to every target with room under one lock acquisition; a target that
        # must wait (or drop, or be judged) gets send()'s own path, Outbox.put, then the rest go on.
        outboxes = map(_outbox_of, conns)
        while True:
            blocked, queued, closed = Outbox.put_shared(out, outboxes)
            result.queued += queued
            result.closed += closed
            if blocked is None:
                return result
            _count_send(partial(blocked.put, fanout_wait=self._fanout_wait), out, result)


def _count_send(send: Callable[[OutMessage], bool], out: OutMessage, result: BroadcastResult) -> None:
    """``send(out)`` (a connection's send, or an outbox's put), counted into ``result``."""
    try:
        if send(out):
            result.queued += 1
        else:
            result.dropped += 1
    except ConnectionClosed:
        result.closed += 1
