"""server/topics.py without sockets: a recording broker and stand-in connections."""

from __future__ import annotations

import threading
from collections.abc import Iterable

import pytest

from server import Stats
from server.registry import BroadcastResult
from server.scaleout.positions import Position
from server.topics import Topics

pytestmark = pytest.mark.timeout(10)


class RecordingBroker:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.deliver = None
        self.on_missed = None

    def start(self, deliver, on_missed, stats) -> None:
        self.deliver, self.on_missed = deliver, on_missed

    def subscribe(self, topic: str) -> None:
        self.calls.append(("subscribe", topic))

    def unsubscribe(self, topic: str) -> None:
        self.calls.append(("unsubscribe", topic))


class Conn:
    def __init__(self) -> None:
        self.closed: tuple[int, str] | None = None

    def close(self, code: int, reason: str = "") -> None:
        if len(reason.encode()) > 123:
            raise ValueError("reason too long")
        self.closed = (code, reason)


def topics() -> tuple[Topics, RecordingBroker, list, Stats]:
    sent: list = []

    def broadcast(message: str | bytes, targets: Iterable) -> BroadcastResult:
        sent.append((message, frozenset(targets)))
        return BroadcastResult(queued=len(frozenset(targets)))

    broker, stats = RecordingBroker(), Stats()
    t = Topics(broker, broadcast, stats)  # type: ignore[arg-type]
    t.start()
    return t, broker, sent, stats


def test_the_first_subscriber_subscribes_the_process_and_the_last_unsubscribes_it() -> None:
    t, broker, _, _ = topics()
    a, b = Conn(), Conn()
    t.subscribe(a, "news")  # type: ignore[arg-type]
    t.subscribe(b, "news")  # type: ignore[arg-type]
    t.unsubscribe(a, "news")  # type: ignore[arg-type]
    assert broker.calls == [("subscribe", "news")]
    t.unsubscribe(b, "news")  # type: ignore[arg-type]
    assert broker.calls == [("subscribe", "news"), ("unsubscribe", "news")]
    assert t.subscribers("news") == frozenset()


def test_a_snapshot_is_never_changed_by_later_subscriptions() -> None:
    t, _, _, _ = topics()
    a, b = Conn(), Conn()
    t.subscribe(a, "x")  # type: ignore[arg-type]
    snapshot = t.subscribers("x")
    t.subscribe(b, "x")  # type: ignore[arg-type]
    assert snapshot == {a} and t.subscribers("x") == {a, b}


def test_delivery_broadcasts_to_the_topics_subscribers_only() -> None:
    t, broker, sent, _ = topics()
    a, b = Conn(), Conn()
    t.subscribe(a, "x")  # type: ignore[arg-type]
    t.subscribe(b, "y")  # type: ignore[arg-type]
    result = broker.deliver("x", Position("e", 1), b"hello")  # type: ignore[misc]
    assert sent == [(b"hello", frozenset({a}))] and result.queued == 1


def test_a_gap_closes_the_topics_subscribers_with_1013_and_counts_them() -> None:
    t, broker, _, stats = topics()
    a, b, other = Conn(), Conn(), Conn()
    for conn in (a, b):
        t.subscribe(conn, "x")  # type: ignore[arg-type]
    t.subscribe(other, "y")  # type: ignore[arg-type]
    broker.on_missed("x", "stream trimmed: 12 messages were missed", 12)  # type: ignore[misc]
    assert a.closed == b.closed == (1013, "stream trimmed: 12 messages were missed")
    assert other.closed is None and stats.broker_subscribers_closed == 2
    broker.on_missed("y", "é" * 100, 1)  # type: ignore[misc]  # 100 characters, 200 bytes: over a close frame's room
    assert other.closed == (1013, "messages were missed")


def test_a_subscribe_racing_the_last_unsubscribe_leaves_the_process_subscribed() -> None:
    """The last subscriber leaving while a new one arrives (a client reconnecting to resume): the broker must
    end subscribed. (With the broker called outside the lock, the new subscribe reached the broker before the
    old unsubscribe, which then unsubscribed the process under the new subscriber: it got nothing.)"""
    t, broker, _, _ = topics()
    old, new = Conn(), Conn()
    t.subscribe(old, "x")  # type: ignore[arg-type]
    entered, release = threading.Event(), threading.Event()
    original = broker.unsubscribe

    def slow_unsubscribe(topic: str) -> None:
        entered.set()
        release.wait(5)
        original(topic)

    broker.unsubscribe = slow_unsubscribe  # type: ignore[method-assign]
    leaving = threading.Thread(target=t.unsubscribe, args=(old, "x"))
    leaving.start()
    assert entered.wait(5)
    arriving = threading.Thread(target=t.subscribe, args=(new, "x"))
    arriving.start()
    arriving.join(0.2)
    release.set()
    leaving.join(5)
    arriving.join(5)
    assert broker.calls == [("subscribe", "x"), ("unsubscribe", "x"), ("subscribe", "x")]
    assert t.subscribers("x") == {new}
