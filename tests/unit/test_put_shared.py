"""put_shared, the fast path of Server.broadcast: the same accounting as Outbox.put, one lock acquisition."""

from __future__ import annotations

import pytest

from server.connections.outbox import Backlog, Outbox
from server.limits import OverflowPolicy
from server.protocol.frames import OutMessage

pytestmark = pytest.mark.timeout(30)


def outboxes(n: int, limit: int = 1000, backlog: Backlog | None = None) -> tuple[list[Outbox], list[int]]:
    backlog = backlog or Backlog(1 << 30)
    scheduled = [0] * n

    def schedule(i: int):  # type: ignore[no-untyped-def]
        return lambda: scheduled.__setitem__(i, scheduled[i] + 1)

    boxes = [Outbox(limit, OverflowPolicy.CLOSE, schedule=schedule(i), on_full=lambda: None, on_drop=lambda: None,
                    backlog=backlog, in_io_thread=lambda: False) for i in range(n)]
    return boxes, scheduled


def test_queues_to_every_outbox_with_room_and_schedules_once_per_batch() -> None:
    boxes, scheduled = outboxes(5)
    out = OutMessage(b"x" * 100, False)
    for _ in range(3):
        assert Outbox.put_shared(out, iter(boxes)) == (None, 5, 0)
    assert scheduled == [1] * 5
    assert all(b.queued == 3 * 102 for b in boxes)
    assert boxes[0].backlog.bytes == 5 * 3 * 102
    assert list(boxes[2].take()) == [out] * 3
    assert boxes[0].backlog.bytes == 4 * 3 * 102


def test_stops_at_a_full_outbox_and_the_rest_follow_after_it() -> None:
    boxes, _ = outboxes(4, limit=200)
    big = OutMessage(b"y" * 300, False)
    boxes[1].put(big)  # full now
    out = OutMessage(b"x" * 10, False)
    it = iter(boxes)
    blocked, queued, closed = Outbox.put_shared(out, it)
    assert blocked is boxes[1] and (queued, closed) == (1, 0)
    assert Outbox.put_shared(out, it) == (None, 2, 0)
    assert [b.queued for b in boxes] == [12, 304, 12, 12]


def test_skips_closing_outboxes_and_counts_them() -> None:
    boxes, _ = outboxes(3)
    boxes[1].shut(1000, "")
    assert Outbox.put_shared(OutMessage(b"x", False), iter(boxes)) == (None, 2, 1)
    assert boxes[1].queued == 0


def test_stops_at_the_backlog_limit() -> None:
    backlog = Backlog(250)
    boxes, _ = outboxes(4, backlog=backlog)
    out = OutMessage(b"x" * 100, False)
    blocked, queued, _ = Outbox.put_shared(out, iter(boxes))
    assert blocked is boxes[3] and queued == 3  # below the limit when each came, as Outbox.put
    assert backlog.bytes == 306


def test_an_outbox_of_another_server_goes_the_slow_way() -> None:
    mine, _ = outboxes(2)
    other, _ = outboxes(1)
    it = iter([mine[0], other[0], mine[1]])
    blocked, queued, _ = Outbox.put_shared(OutMessage(b"x", False), it)
    assert blocked is other[0] and queued == 1
    assert Outbox.put_shared(OutMessage(b"x", False), it)[1] == 1
