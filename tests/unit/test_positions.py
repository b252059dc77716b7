"""Positions and resuming (server/scaleout/positions.py, the in-process history, server/topics.py's joins),
with the real MemoryBroker and stand-in connections that record what they are sent."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable

import pytest

from server import HISTORY_LOST, LINES, Position, PositionError, Stats
from server.errors import ConnectionClosed
from server.registry import BroadcastResult
from server.scaleout.broker import MemoryBroker
from server.topics import Topics

pytestmark = pytest.mark.timeout(30)


class Conn:
    """Records what it is sent, in order; closing it makes later sends raise as a real handle's do."""

    def __init__(self) -> None:
        self.got: list[str | bytes] = []
        self.closed: tuple[int, str] | None = None

    def send(self, message: str | bytes, timeout: float | None = None, fanout: bool = False) -> bool:
        if self.closed:
            raise ConnectionClosed(self.closed[0], self.closed[1])
        self.got.append(message)
        return True

    def close(self, code: int, reason: str = "") -> None:
        self.closed = (code, reason)

    def lines(self) -> list[tuple[str, str]]:
        """(position, message) of each enveloped message received (the bookmark has no newline)."""
        return [tuple(m.split("\n", 1)) for m in self.got if isinstance(m, str) and "\n" in m]  # type: ignore[misc]


def memory(maxlen: int = 1000, max_topics: int = 1000) -> tuple[Topics, MemoryBroker, Stats]:
    def broadcast(message: str | bytes, targets: Iterable) -> BroadcastResult:
        result = BroadcastResult()
        for conn in targets:
            try:
                conn.send(message, fanout=True)
                result.queued += 1
            except ConnectionClosed:
                result.closed += 1
        return result

    broker, stats = MemoryBroker(maxlen, max_topics), Stats()
    topics = Topics(broker, broadcast, stats)
    topics.start()
    return topics, broker, stats


def test_a_position_reads_back_as_it_was_written_and_anything_else_is_refused() -> None:
    for position in (Position("a1b2c3d4", 0), Position("a1b2c3d4", 17), Position("ff", 9, "1733380000000-3")):
        assert Position.parse(str(position)) == position
    for bad in ("", "a1b2.", "a1b2.01", "A1B2.1", "a1b2.-1", "a1b2.1.x", "a1b2.1.2", "zz.1", "a1.1 ", "a1.1\n",
                "a" * 33 + ".1", "a1." + "9" * 20, "a1.1." + "1" * 21 + "-0"):
        with pytest.raises(PositionError):
            Position.parse(bad)


def test_publish_numbers_a_topics_messages_and_returns_the_position_and_the_fan_out() -> None:
    topics, broker, _ = memory()
    conn = Conn()
    topics.subscribe(conn, "t")  # type: ignore[arg-type]
    first, second, other = broker.publish("t", "a"), broker.publish("t", "b"), broker.publish("u", "c")
    assert first.done() and first.position() == Position(broker.epoch_of("t"), 1)
    assert second.position().n == 2 and other.position().n == 1, "numbered per topic"
    assert isinstance(first.result, BroadcastResult) and first.result.queued == 1
    assert conn.got == ["a", "b"], "plain subscribers get the messages as they were published"


def test_resume_gets_the_history_after_its_position_then_the_live_messages_each_once() -> None:
    topics, broker, stats = memory()
    positions = [str(broker.publish("t", f"m{i}").position()) for i in range(1, 11)]
    conn = Conn()
    topics.subscribe(conn, "t", Position.parse(positions[3]), LINES)  # type: ignore[arg-type]  # saw m1..m4
    broker.publish("t", "m11")
    assert [m for _, m in conn.lines()] == [f"m{i}" for i in range(5, 12)]
    assert [p for p, _ in conn.lines()][:-1] == positions[4:], "each message carries its own position"
    assert stats.resumes == 1 and stats.replayed == 6


def test_positions_without_since_start_with_a_bookmark_to_resume_from() -> None:
    topics, broker, _ = memory()
    broker.publish("t", "before")
    conn = Conn()
    topics.subscribe(conn, "t", None, LINES)  # type: ignore[arg-type]
    broker.publish("t", "after")
    assert conn.got[0] == f"{broker.epoch_of('t')}.1", "the bookmark: a position with no newline"
    assert conn.lines() == [(f"{broker.epoch_of('t')}.2", "after")]
    binary = Conn()
    topics.subscribe(binary, "b", None, LINES)  # type: ignore[arg-type]
    broker.publish("b", b"\x00\n\xff")
    assert binary.got[1] == f"{broker.epoch_of('b')}.1".encode() + b"\n\x00\n\xff", "binary stays binary"


@pytest.mark.parametrize(("since", "reason"), [
    ("trimmed", "position too old: the history starts at message 8; start over"),
    ("epoch", "position from a lost history (another epoch): start over"),
    ("ahead", "position ahead of the stream: start over"),
], ids=["trimmed", "epoch", "ahead"])
def test_a_position_the_history_cannot_serve_is_refused_with_4410(since: str, reason: str) -> None:
    topics, broker, stats = memory(maxlen=5)
    for i in range(12):
        broker.publish("t", f"m{i}")
    position = {"trimmed": Position(broker.epoch_of("t"), 2), "epoch": Position("0badcafe", 2),
                "ahead": Position(broker.epoch_of("t"), 13)}[since]
    conn = Conn()
    topics.subscribe(conn, "t", position, LINES)  # type: ignore[arg-type]
    assert conn.closed == (HISTORY_LOST, reason) and conn.got == []
    assert stats.resumes_refused == 1 and topics.subscribers("t") == frozenset()
    edge = Conn()
    topics.subscribe(edge, "t", Position(broker.epoch_of("t"), 7), LINES)  # type: ignore[arg-type]  # the oldest held is 8
    assert edge.closed is None and [m for _, m in edge.lines()] == ["m7", "m8", "m9", "m10", "m11"]


def test_only_the_most_recently_used_topics_keep_a_history_and_a_dropped_one_refuses_old_positions() -> None:
    topics, broker, _ = memory(max_topics=2)
    old_a = broker.publish("a", "a1").position()
    old_b = broker.publish("b", "b1").position()
    broker.publish("a", "a2")  # a is used again: b is now the least recently used
    broker.publish("c", "c1")  # a third topic: b's history goes
    assert broker.dropped_histories == 1
    a = Conn()
    topics.subscribe(a, "a", old_a, LINES)  # type: ignore[arg-type]
    assert a.closed is None and [m for _, m in a.lines()] == ["a2"], "a kept its history"
    b = Conn()
    topics.subscribe(b, "b", old_b, LINES)  # type: ignore[arg-type]
    assert b.closed == (HISTORY_LOST, "position from a lost history (another epoch): start over"), \
        "b's positions are refused, never misread as its new history's"


def test_a_subscriber_gone_before_its_join_runs_is_never_attached() -> None:
    topics, broker, _ = memory()
    conn = Conn()
    joins: list = []
    broker.join = lambda topic, since, attach: joins.append((topic, since, attach))  # type: ignore[method-assign]
    topics.subscribe(conn, "t", Position(broker.epoch_of("t"), 0), LINES)  # type: ignore[arg-type]
    topics.unsubscribe(conn, "t")  # type: ignore[arg-type]
    _, _, attach = joins[0]
    attach([], Position(broker.epoch_of("t"), 0))
    assert topics.subscribers("t") == frozenset() and conn.got == []


def test_a_subscription_made_again_before_the_first_join_ran_is_the_second_ones() -> None:
    topics, broker, _ = memory()
    for i in range(5):
        broker.publish("t", f"m{i + 1}")
    joins: list = []
    broker.join = lambda topic, since, attach: joins.append(attach)  # type: ignore[method-assign]
    conn = Conn()
    topics.subscribe(conn, "t", Position(broker.epoch_of("t"), 1), LINES)  # type: ignore[arg-type]
    topics.unsubscribe(conn, "t")  # type: ignore[arg-type]
    topics.subscribe(conn, "t", Position(broker.epoch_of("t"), 4), LINES)  # type: ignore[arg-type]
    tail = Position(broker.epoch_of("t"), 5)
    joins[0]([(Position(tail.epoch, n), f"m{n}") for n in (2, 3, 4, 5)], tail)  # the first join: given up
    joins[1]([(tail, "m5")], tail)
    assert [m for _, m in conn.lines()] == ["m5"] and topics.subscribers("t") == {conn}


def test_an_envelope_that_fails_during_the_replay_closes_the_subscriber_1011() -> None:
    class Broken:
        def wrap(self, position: str, message: str | bytes) -> str | bytes:
            raise RuntimeError("the application's envelope")

        def bookmark(self, position: str) -> None:
            return None

    topics, broker, _ = memory()
    broker.publish("t", "m1")
    conn = Conn()
    topics.subscribe(conn, "t", Position(broker.epoch_of("t"), 0), Broken())  # type: ignore[arg-type]
    assert conn.closed == (1011, "replay failed") and conn.got == []


def test_joins_racing_publishers_see_every_message_once_in_order() -> None:
    """The join's history and the live feed meet with no gap and no duplicate, whatever the timing."""
    topics, broker, _ = memory(maxlen=100_000)
    total, publishers = 4000, 2
    done = threading.Event()

    def publish(p: int) -> None:
        for i in range(total):
            broker.publish("t", f"{p}:{i}")
        done.set()

    conns: list[tuple[Conn, int]] = []
    threads = [threading.Thread(target=publish, args=(p,)) for p in range(publishers)]
    for thread in threads:
        thread.start()
    rng = random.Random(7)
    while (not done.is_set() and len(conns) < 40) or len(conns) < 5:
        time.sleep(0.002)
        conn = Conn()
        topics.subscribe(conn, "t", Position(broker.epoch_of("t"), rng.randrange(0, 50)), LINES)  # type: ignore[arg-type]
        conns.append((conn, len(conns)))
    for thread in threads:
        thread.join()
    assert len(conns) >= 5
    for conn, _ in conns:
        ns = [Position.parse(p).n for p, _ in conn.lines()]
        assert conn.closed is None
        assert ns == list(range(ns[0], publishers * total + 1)), "contiguous from the resume point to the last"
        per_publisher: dict[str, list[int]] = {}
        for _, message in conn.lines():
            p, i = message.split(":")
            per_publisher.setdefault(p, []).append(int(i))
        assert all(seq == sorted(seq) for seq in per_publisher.values()), "each publisher's order kept"
