"""The fixed-bucket histogram behind the latency metrics, and the send buffer's per-batch timing."""

from __future__ import annotations

import time
from collections import deque

import pytest

from server.core.sendbuffer import SendBuffer
from server.histogram import Histogram
from server.protocol.frames import OutMessage
from server.stats import Stats

pytestmark = pytest.mark.timeout(10)


def test_bounds_are_inclusive_upper_bounds_and_the_last_bucket_takes_the_rest() -> None:
    h = Histogram((1.0, 2.0))
    for v in (0.5, 1.0, 1.5, 2.0, 3.0, 100.0):
        h.observe(v)
    snap = h.snapshot()
    assert snap.counts == (2, 2, 2) and snap.count == 6 and snap.sum == pytest.approx(108.0)
    assert snap.cumulative() == [(1.0, 2), (2.0, 4), (float("inf"), 6)]


def test_quantiles_are_bucket_upper_bounds_and_since_subtracts() -> None:
    h = Histogram((0.001, 0.01, 0.1))
    assert h.snapshot().quantile(0.5) is None
    for _ in range(98):
        h.observe(0.0005)
    h.observe(0.05)
    h.observe(5.0)
    before = h.snapshot()
    assert before.quantile(0.5) == 0.001 and before.quantile(0.99) == 0.1 and before.quantile(1.0) == float("inf")
    h.observe(0.005)
    later = h.snapshot().since(before)
    assert later.count == 1 and later.quantile(0.5) == 0.01 and later.sum == pytest.approx(0.005)


def test_bounds_must_increase() -> None:
    with pytest.raises(ValueError):
        Histogram((1.0, 1.0))
    with pytest.raises(ValueError):
        Histogram(())


def messages(n: int) -> list[OutMessage]:
    return [OutMessage(b"%03d" % i, False) for i in range(n)]


def test_a_batch_is_timed_once_when_the_socket_takes_its_last_byte() -> None:
    stats = Stats()
    buffer = SendBuffer(release=lambda size: None, stats=stats)
    first, second = messages(3), messages(2)
    buffer.extend(deque(first))
    buffer.mark(time.monotonic() - 0.2)  # the first batch: sent 200 ms ago
    buffer.extend(deque(second))
    buffer.mark(time.monotonic())
    assert buffer.oldest_since is not None and time.monotonic() - buffer.oldest_since >= 0.2
    size = first[0].size
    # The socket takes the first batch but one byte: nothing timed yet.
    _, frames, offered, reserved = buffer.gather()
    buffer.written(3 * size - 1, offered, frames, reserved)
    assert stats.send_latency.snapshot().count == 0 and stats.bytes_out == 3 * size - 1 and stats.frames_out == 2
    # The last byte of the first batch and all of the second: each batch observed once, the first >= 200 ms.
    _, frames, offered, reserved = buffer.gather()
    buffer.written(offered, offered, frames, reserved)
    snap = stats.send_latency.snapshot()
    assert snap.count == 2 and snap.sum >= 0.2
    assert stats.frames_out == 5 and stats.bytes_out == 5 * size
    assert buffer.oldest_since is None


def test_control_frames_between_batches_keep_the_count_right_and_dropped_batches_are_not_timed() -> None:
    stats = Stats()
    buffer = SendBuffer(release=lambda size: None, stats=stats)
    buffer.append((b"\x89\x00",), 0, 2)  # a ping, no batch
    buffer.extend(deque(messages(2)))
    buffer.mark(time.monotonic())
    buffer.append((b"\x8a\x00",), 0, 2)  # a pong after the batch
    _, frames, offered, reserved = buffer.gather()
    buffer.written(offered, offered, frames, reserved)
    assert stats.send_latency.snapshot().count == 1 and stats.frames_out == 4
    buffer.extend(deque(messages(2)))
    buffer.mark(time.monotonic())
    buffer.drop_unsent()
    assert buffer.oldest_since is None
    buffer.extend(deque(messages(1)))
    buffer.mark(time.monotonic())
    _, frames, offered, reserved = buffer.gather()
    buffer.written(offered, offered, frames, reserved)
    assert stats.send_latency.snapshot().count == 2  # the dropped batch was never observed


def test_without_stats_nothing_is_counted_or_marked() -> None:
    buffer = SendBuffer(release=lambda size: None)
    buffer.extend(deque(messages(2)))
    buffer.mark(time.monotonic())
    assert buffer.oldest_since is None
