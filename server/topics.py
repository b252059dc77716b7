"""Topics: which of this process's connections get what :meth:`Server.publish` sends, from any process.

A topic's subscribers are a frozenset, replaced (never mutated) under a lock,
so the broker's delivery thread reads a snapshot without locking. The first
subscriber of a topic subscribes this process at the broker, the last one
unsubscribes it. Delivery is a local :meth:`Server.broadcast` (encoded once,
fan-out flow control); a gap the broker reports closes the topic's
subscribers with 1013, so nothing is lost silently.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .codes import CloseCode
from .scaleout.broker import Broker
from .stats import Stats

if TYPE_CHECKING:
    from .connections.handle import ConnectionHandle
    from .registry import BroadcastResult

logger = logging.getLogger(__name__)

MAX_REASON = 100  # characters; a close reason holds at most 123 bytes

Broadcast = Callable[[str | bytes, Iterable["ConnectionHandle"]], "BroadcastResult"]


class Topics:
    """This process's subscriptions, over ``broker``; every method is safe from any thread."""

    def __init__(self, broker: Broker, broadcast: Broadcast, stats: Stats) -> None:
        self.broker = broker
        self._broadcast = broadcast
        self._stats = stats
        self._members: dict[str, frozenset[ConnectionHandle]] = {}  # replaced, never mutated, under _lock
        self._lock = threading.Lock()

    def start(self) -> None:
        self.broker.start(self._deliver, self._on_missed, self._stats)

    def subscribe(self, conn: ConnectionHandle, topic: str) -> None:
        with self._lock:
            members = self._members.get(topic, frozenset())
            self._members[topic] = members | {conn}
            first = not members
        if first:
            self.broker.subscribe(topic)

    def unsubscribe(self, conn: ConnectionHandle, topic: str) -> None:
        with self._lock:
            members = self._members.get(topic, frozenset()) - {conn}
            if members:
                self._members[topic] = members
            else:
                self._members.pop(topic, None)
            last = not members
        if last:
            self.broker.unsubscribe(topic)

    def subscribers(self, topic: str) -> frozenset[ConnectionHandle]:
        return self._members.get(topic, frozenset())

    def _deliver(self, topic: str, message: str | bytes) -> BroadcastResult:
        # The broker's delivery: local fan-out, encoded once (the reader thread waits for a full
        # subscriber at most fanout_wait, then that subscriber gets the overflow action).
        return self._broadcast(message, self.subscribers(topic))

    def _on_missed(self, topic: str, reason: str, count: int) -> None:
        targets = self.subscribers(topic)
        for conn in targets:
            try:
                conn.close(CloseCode.TRY_AGAIN_LATER, reason[:MAX_REASON])
            except ValueError:
                conn.close(CloseCode.TRY_AGAIN_LATER, "messages were missed")
        self._stats.broker_subscribers_closed += len(targets)
        logger.warning("topic %r: %d subscribers closed with 1013 (%s)", topic, len(targets), reason)
