"""The outbox alone, without sockets: room, waiting, dropping, batching, and partial-write bookkeeping."""

from __future__ import annotations

import random
import threading

import pytest

from server.errors import ConnectionClosed
from server.frames import OutMessage
from server.outbox import Backlog, Outbox, OverflowPolicy

pytestmark = pytest.mark.timeout(30)


class Harness:
    """An outbox whose IO thread is the test: it counts schedule/on_full calls instead of posting."""

    def __init__(self, limit: int = 1000, policy: OverflowPolicy = OverflowPolicy.CLOSE, backlog: int = 1 << 30,
                 io_thread: bool = False) -> None:
        self.scheduled = 0
        self.full_reports = 0
        self.drops = 0
        self.backlog = Backlog(backlog)
        self.outbox = Outbox(limit, policy, schedule=self._schedule, on_full=self._on_full, on_drop=self._on_drop,
                             backlog=self.backlog, in_io_thread=lambda: io_thread)

    def _schedule(self) -> None:
        self.scheduled += 1

    def _on_full(self) -> None:
        self.full_reports += 1

    def _on_drop(self) -> None:
        self.drops += 1

    def drain(self) -> list[OutMessage]:
        """What the connection's _drain does, without deflate."""
        pending = list(self.outbox.take())
        for out in pending:
            self.outbox.append(out.frame, out.size, out.size)
        return pending

    def write(self, accept: list[int]) -> bytes:
        """Flush through a fake sendmsg that accepts ``accept[i]`` bytes on call i (then everything)."""
        wire = bytearray()
        calls = iter(accept)
        while self.outbox.frames:
            buffers, frames, offered, reserved = self.outbox.gather()
            sent = min(next(calls, offered), offered)
            wire += b"".join(bytes(b) for b in buffers)[:sent]
            self.outbox.written(sent, offered, frames, reserved)
        return bytes(wire)


def msg(n: int, fill: int = 0x41) -> OutMessage:
    return OutMessage(bytes([fill]) * n, False)


def test_partial_writes_across_frame_boundaries_keep_the_stream_exact() -> None:
    rng = random.Random(7)
    h = Harness(limit=1 << 30)
    messages = [msg(rng.choice([0, 1, 125, 126, 5000, 20000, 70000]), fill=i % 256) for i in range(300)]
    for out in messages:
        h.outbox.put(out)
    h.drain()
    accept = [rng.choice([0, 1, 2, 3, 100, 4096, 65536, 200000]) for _ in range(5000)]
    wire = h.write(accept)
    assert wire == b"".join(b"".join(out.frame) for out in messages)
    assert h.outbox.queued == 0 and not h.outbox.frames and not h.outbox.head_started


def test_blocked_since_marks_a_full_socket_and_progress_clears_it() -> None:
    h = Harness()
    h.outbox.put(msg(100))
    h.drain()
    _, frames, offered, reserved = h.outbox.gather()
    h.outbox.written(10, offered, frames, reserved)
    first = h.outbox.blocked_since
    assert first is not None  # partial: the socket's buffer is full
    h.outbox.written(0, offered - 10, frames, reserved)
    assert h.outbox.blocked_since == first  # refused again: still blocked since the first refusal
    h.outbox.written(offered - 10, offered - 10, frames, reserved)
    assert h.outbox.blocked_since is None and h.outbox.queued == 0


def test_room_means_below_the_limit_so_a_big_message_always_fits() -> None:
    h = Harness(limit=1000)
    assert h.outbox.put(msg(10))
    assert h.outbox.put(msg(5000))  # over the limit by itself, but the queue was below it
    assert h.outbox.queued == 12 + 5004 and h.outbox.full


def test_drop_policy_refuses_only_when_full_and_counts() -> None:
    h = Harness(limit=1000, policy=OverflowPolicy.DROP)
    results = [h.outbox.put(msg(98)) for _ in range(15)]  # 100 bytes each with the header
    assert results == [True] * 10 + [False] * 5
    assert h.outbox.dropped == 5 == h.drops and h.outbox.queued == 1000


def test_one_schedule_per_batch_and_take_keeps_order() -> None:
    h = Harness()
    outs = [msg(i + 1) for i in range(5)]
    for out in outs:
        h.outbox.put(out)
    assert h.scheduled == 1
    assert h.drain() == outs
    h.outbox.put(msg(1))
    assert h.scheduled == 2  # a new batch after take()


def test_a_full_queue_makes_the_producer_wait_until_bytes_are_written() -> None:
    h = Harness(limit=100)
    h.outbox.put(msg(200))
    h.drain()
    done = threading.Event()
    t = threading.Thread(target=lambda: (h.outbox.put(msg(10)), done.set()))
    t.start()
    assert not done.wait(0.2), "the producer must wait while the queue is full"
    assert h.full_reports == 1  # the IO thread was asked to judge the client
    h.write([])
    assert done.wait(5)
    t.join()


def test_shut_wakes_waiting_producers_with_connection_closed() -> None:
    h = Harness(limit=100)
    h.outbox.put(msg(200))
    errors: list[BaseException] = []

    def producer() -> None:
        try:
            h.outbox.put(msg(10))
        except ConnectionClosed as exc:
            errors.append(exc)

    t = threading.Thread(target=producer)
    t.start()
    assert not t.join(0.1) and t.is_alive()
    assert h.outbox.shut(1008, "stalled")
    t.join(5)
    assert [e.code for e in errors] == [1008]  # type: ignore[attr-defined]
    assert not h.outbox.shut(1000, "again")
    with pytest.raises(ConnectionClosed):
        h.outbox.put(msg(1))


def test_timeout_gives_the_reservation_back() -> None:
    h = Harness(limit=100)
    h.outbox.put(msg(200))
    before = h.outbox.queued
    with pytest.raises(TimeoutError):
        h.outbox.put(msg(10), timeout=0.05)
    assert h.outbox.queued == before


def test_paced_waits_even_under_drop_and_never_asks_for_judgement() -> None:
    h = Harness(limit=100, policy=OverflowPolicy.DROP)
    h.outbox.put(msg(200))
    with pytest.raises(TimeoutError):
        h.outbox.put(msg(10), timeout=0.05, paced=True)
    assert h.full_reports == 0 and h.outbox.dropped == 0


def test_the_io_thread_never_waits() -> None:
    h = Harness(limit=100, backlog=10, io_thread=True)
    for _ in range(5):
        assert h.outbox.put(msg(200))
    assert h.outbox.queued == 5 * 204 == h.backlog.bytes  # 200 bytes + a 4-byte header each


def test_drop_unsent_keeps_the_started_head_and_protocol_frames() -> None:
    h = Harness(limit=1 << 20)
    for _ in range(3):
        h.outbox.put(msg(1000))
    h.drain()
    h.outbox.append((b"\x8a\x00",), 0, 2)  # a pong: reserved 0
    _, frames, offered, reserved = h.outbox.gather()
    h.outbox.written(500, offered, frames, reserved)  # half of the first frame is on the wire
    h.outbox.drop_unsent()
    assert [f.length for f in h.outbox.frames] == [1004, 2]
    assert h.outbox.queued == 1004  # the started frame's bytes are still reserved
    h.outbox.drop_unsent(all_frames=True)
    assert h.outbox.queued == 0 and not h.outbox.frames


def test_backlog_makes_producers_wait_over_its_limit() -> None:
    backlog = Backlog(100)
    backlog.add(150, wait=True)  # below the limit when it came: accepted, overshooting
    released = threading.Event()
    t = threading.Thread(target=lambda: (backlog.add(10, wait=True), released.set()))
    t.start()
    assert not released.wait(0.1)
    backlog.remove(150)
    assert released.wait(5)
    t.join()
    assert backlog.peak == 150 and backlog.waits == 1 and backlog.bytes == 10
