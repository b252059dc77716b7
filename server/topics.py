"""Topics: which of this process's connections get what :meth:`Server.publish` sends, from any process.

A topic's subscribers are frozensets, replaced (never mutated) under a lock,
so the broker's delivery thread reads a snapshot without locking. The first
subscriber of a topic subscribes this process at the broker, the last one
unsubscribes it. Delivery is a local :meth:`Server.broadcast` (encoded once
per envelope, fan-out flow control); a gap the broker reports closes the
topic's subscribers with 1013, so nothing is lost silently.

A subscriber may resume (``since=``, a position it was given) and may want
positions (an :class:`Envelope`): then the broker *joins* it where no
delivery of the topic can come between (see :meth:`Broker.join
<server.scaleout.broker.Broker.join>`): it gets the history after ``since``,
then the live messages, each once and in order; or, when the history cannot
serve that, a close with :data:`~server.scaleout.positions.HISTORY_LOST`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Protocol

from .codes import CloseCode
from .errors import ConnectionClosed
from .registry import BroadcastResult
from .scaleout.broker import Broker, Message
from .scaleout.positions import HISTORY_LOST, Lost, Position
from .stats import Stats

if TYPE_CHECKING:
    from .connections.handle import ConnectionHandle

logger = logging.getLogger(__name__)

MAX_REASON = 100  # characters; a close reason holds at most 123 bytes

Broadcast = Callable[[str | bytes, Iterable["ConnectionHandle"]], BroadcastResult]


class Envelope(Protocol):
    """How a subscriber that wants positions gets its messages (one envelope per message, shared by its subscribers)."""

    def wrap(self, position: str, message: Message) -> Message:
        """The WebSocket message that carries ``message`` and its ``position``."""

    def bookmark(self, position: str) -> Message | None:
        """Sent once to a subscriber that gave no ``since=``: where its subscription starts (None: nothing)."""


class LineEnvelope:
    """``/broadcast?positions=1``: ``POSITION`` newline ``MESSAGE`` (a text message stays text, binary stays binary).

    The bookmark is a text message holding a position and no newline. A
    client keeps the last position it saw and reconnects with ``since=`` it.
    """

    def wrap(self, position: str, message: Message) -> Message:
        if isinstance(message, str):
            return f"{position}\n{message}"
        return position.encode() + b"\n" + message

    def bookmark(self, position: str) -> Message:
        return position


LINES = LineEnvelope()

Groups = dict["Envelope | None", frozenset["ConnectionHandle"]]  # subscribers by envelope (None: plain messages)


class Topics:
    """This process's subscriptions, over ``broker``; every method is safe from any thread.

    Lock order: the broker's :meth:`~server.scaleout.broker.Broker.subscribe` and ``unsubscribe`` are called
    under ``_lock`` (they never call back); ``join`` outside it (its ``attach`` takes ``_lock``). The brokers
    call ``_deliver`` and ``attach`` holding none of their locks: a fan-out may wait for the IO thread.
    """

    def __init__(self, broker: Broker, broadcast: Broadcast, stats: Stats) -> None:
        self.broker = broker
        self._broadcast = broadcast
        self._stats = stats
        self._members: dict[str, Groups] = {}  # replaced, never mutated, under _lock
        # Joins the broker has not attached yet, each with a token of its own: a subscription given up and
        # made again before the first join ran is the second one's.
        self._pending: dict[tuple[str, ConnectionHandle], object] = {}
        self._refs: dict[str, int] = {}  # members + pending, per topic
        self._lock = threading.Lock()

    def start(self) -> None:
        self.broker.start(self._deliver, self._on_missed, self._stats)

    def subscribe(self, conn: ConnectionHandle, topic: str, since: Position | None = None,
                  envelope: Envelope | None = None) -> None:
        """See :meth:`Server.subscribe`."""
        direct = since is None and envelope is None
        with self._lock:
            if (topic, conn) in self._pending or any(conn in group for group in self._members.get(topic, {}).values()):
                return
            refs = self._refs.get(topic, 0)
            self._refs[topic] = refs + 1
            token = object()
            if direct:
                self._add(topic, conn, None)
            else:
                self._pending[(topic, conn)] = token
            if refs == 0:  # under the lock: a last unsubscribe racing this cannot undo it at the broker
                self.broker.subscribe(topic)
        if not direct:
            self.broker.join(topic, since, partial(self._attach, conn, topic, since, envelope, token))

    def unsubscribe(self, conn: ConnectionHandle, topic: str) -> None:
        with self._lock:
            if (topic, conn) in self._pending:
                del self._pending[(topic, conn)]  # the join, when it runs, attaches nothing
            else:
                groups = self._members.get(topic, {})
                held = [envelope for envelope, group in groups.items() if conn in group]
                if not held:
                    return
                self._remove(topic, conn, held[0])
            self._release(topic)

    def subscribers(self, topic: str) -> frozenset[ConnectionHandle]:
        groups = self._members.get(topic)
        if not groups:
            return frozenset()
        return frozenset().union(*groups.values()) if len(groups) > 1 else next(iter(groups.values()))

    # -- under _lock -------------------------------------------------------

    def _add(self, topic: str, conn: ConnectionHandle, envelope: Envelope | None) -> None:
        groups = dict(self._members.get(topic, {}))
        groups[envelope] = groups.get(envelope, frozenset()) | {conn}
        self._members[topic] = groups

    def _remove(self, topic: str, conn: ConnectionHandle, envelope: Envelope | None) -> None:
        groups = dict(self._members[topic])
        left = groups[envelope] - {conn}
        if left:
            groups[envelope] = left
        else:
            del groups[envelope]
        if groups:
            self._members[topic] = groups
        else:
            del self._members[topic]

    def _release(self, topic: str) -> None:
        left = self._refs.get(topic, 0) - 1
        if left > 0:
            self._refs[topic] = left
        else:
            self._refs.pop(topic, None)
            self.broker.unsubscribe(topic)

    # -- the broker's context: no delivery of the topic comes between ----------

    def _attach(self, conn: ConnectionHandle, topic: str, since: Position | None, envelope: Envelope | None,
                token: object, entries: list[tuple[Position, Message]], tail: Position | Lost) -> None:
        with self._lock:
            if self._pending.get((topic, conn)) is not token:
                return  # unsubscribed (closed) before the broker got to it
            del self._pending[(topic, conn)]
            if isinstance(tail, Lost):
                self._release(topic)
            else:
                self._add(topic, conn, envelope)
        if isinstance(tail, Lost):
            self._stats.resumes_refused += 1
            conn.close(HISTORY_LOST, str(tail)[:MAX_REASON])
            return
        if since is not None:
            self._stats.resumes += 1
        elif envelope is not None:
            mark = envelope.bookmark(str(tail))
            if mark is not None:
                entries = [(tail, mark)]
                envelope = None  # the bookmark goes as it is
        try:
            for position, message in entries:
                # A full queue: wait at most fanout_wait, then the overflow action, as for the live feed.
                conn.send(message if envelope is None else envelope.wrap(str(position), message), fanout=True)
                self._stats.replayed += since is not None
        except ConnectionClosed:
            pass
        except Exception:  # e.g. an application's envelope: a hole in the history must not pass silently
            logger.exception("topic %r: replaying to %s failed; closing it", topic, conn)
            conn.close(CloseCode.INTERNAL_ERROR, "replay failed")

    def _deliver(self, topic: str, position: Position, message: Message) -> BroadcastResult:
        # The broker's delivery: local fan-out, encoded once per envelope (the delivering thread waits for
        # a full subscriber at most fanout_wait, then that subscriber gets the overflow action).
        groups = self._members.get(topic)
        if not groups:
            return BroadcastResult()
        if len(groups) == 1 and None in groups:
            return self._broadcast(message, groups[None])
        result = BroadcastResult()
        text = str(position)
        for envelope, conns in groups.items():
            one = self._broadcast(message if envelope is None else envelope.wrap(text, message), conns)
            result.queued += one.queued
            result.dropped += one.dropped
            result.closed += one.closed
        return result

    def _on_missed(self, topic: str, reason: str, count: int) -> None:
        targets = self.subscribers(topic)
        for conn in targets:
            try:
                conn.close(CloseCode.TRY_AGAIN_LATER, reason[:MAX_REASON])
            except ValueError:
                conn.close(CloseCode.TRY_AGAIN_LATER, "messages were missed")
        self._stats.broker_subscribers_closed += len(targets)
        logger.warning("topic %r: %d subscribers closed with 1013 (%s)", topic, len(targets), reason)
