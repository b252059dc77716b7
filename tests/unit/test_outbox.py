"""The outbox and its send buffer, without sockets: partial-write bookkeeping, room, waiting, dropping, batching.

The test is the IO thread: it takes pending messages into frames as the connection's ``_drain`` does and
flushes them through :class:`FakeSocket`, whose ``sendmsg`` accepts the byte counts a test scripts — ends
inside a header, exactly on a frame boundary, across several frames. Producers that must wait do so on a
:class:`ScriptedCondition` instead of a real one: their wait runs the IO thread's next scripted turn, so
no thread races and nothing sleeps (one test at the end uses a real thread and the real Condition).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import pytest

from server.connections.outbox import Backlog, Outbox
from server.core.sendbuffer import IOV_MAX, SendBuffer
from server.errors import ConnectionClosed
from server.limits import OverflowPolicy
from server.protocol.frames import OutMessage

pytestmark = pytest.mark.timeout(30)

PONG = b"\x8a\x00"  # a protocol frame: queued with reserved 0


class FakeSocket:
    """``sendmsg`` that takes ``accept[i]`` bytes on call i (everything offered once the script runs out)."""

    def __init__(self, accept: list[int] | None = None) -> None:
        self.accept = list(accept or [])
        self.wire = bytearray()
        self.calls: list[list[memoryview | bytes]] = []

    def sendmsg(self, buffers: list[memoryview | bytes]) -> int:
        assert len(buffers) <= IOV_MAX, f"{len(buffers)} buffers in one sendmsg: the kernel refuses more than IOV_MAX"
        self.calls.append(buffers)
        total = sum(len(b) for b in buffers)
        n = min(self.accept.pop(0), total) if self.accept else total
        self.wire += b"".join(bytes(b) for b in buffers)[:n]
        return n


class Harness:
    """An outbox whose IO thread is the test: it counts schedule/on_full/on_drop calls instead of posting."""

    def __init__(self, limit: int = 1000, policy: OverflowPolicy = OverflowPolicy.CLOSE, backlog: Backlog | int = 1 << 30,
                 io_thread: bool = False) -> None:
        self.scheduled = 0
        self.full_reports = 0
        self.drops = 0
        self.backlog = backlog if isinstance(backlog, Backlog) else Backlog(backlog)
        self.outbox = Outbox(limit, policy, schedule=self._schedule, on_full=self._on_full, on_drop=self._on_drop,
                             backlog=self.backlog, in_io_thread=lambda: io_thread,
                             blocked_since=lambda: self.buffer.blocked_since)
        self.buffer = SendBuffer(self.outbox.release)
        self.sock = FakeSocket()

    def _schedule(self) -> None:
        self.scheduled += 1

    def _on_full(self) -> None:
        self.full_reports += 1

    def _on_drop(self) -> None:
        self.drops += 1

    def drain(self) -> list[OutMessage]:
        """What the connection's _drain does without deflate: each message is its own frame, nothing copied."""
        pending = self.outbox.take()
        self.buffer.extend(pending)
        return list(pending)

    def step(self, accept: int | None = None) -> int:
        """One turn of the connection's flush loop: gather, one sendmsg taking ``accept`` bytes (None: all), written."""
        buffers, frames, offered, reserved = self.buffer.gather()
        assert offered == sum(len(b) for b in buffers), "gather's byte count does not match its buffers"
        if accept is not None:
            self.sock.accept.insert(0, accept)
        sent = self.sock.sendmsg(buffers)
        self.buffer.written(sent, offered, frames, reserved)
        return sent

    def write(self, accept: list[int] | None = None) -> bytes:
        """Flush everything queued, the socket taking ``accept[i]`` bytes on call i; return what went on the wire."""
        start = len(self.sock.wire)
        self.sock.accept = list(accept or [])
        while self.buffer.frames:
            self.step()
        return bytes(self.sock.wire[start:])


class ScriptedCondition:
    """Stands in for the Condition a producer waits on (``Outbox._room``, ``Backlog._below``).

    ``wait_for`` does what a real one does around each sleep — releases the lock, lets "the IO thread" run (the
    next scripted turn), takes the lock back — and re-checks the predicate only after a turn that notified: a
    real waiter sleeps through the others. ``woken`` records, per turn, whether it notified. When the turns run
    out the wait times out (``timeout`` given), or the test fails: a lost wake-up if room had come back, else a
    producer that would wait forever.
    """

    def __init__(self, lock: threading.Lock, turns: list[Callable[[], object]]) -> None:
        self.lock = lock
        self.turns = list(turns)
        self.waits = 0
        self.notified = 0
        self.woken: list[bool] = []

    def wait_for(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        self.waits += 1
        if predicate():
            return True
        while self.turns:
            turn = self.turns.pop(0)
            before = self.notified
            self.lock.release()
            try:
                turn()
            finally:
                self.lock.acquire()
            self.woken.append(self.notified > before)
            if self.woken[-1] and predicate():
                return True
        assert not predicate(), "room came back but the waiting producer was never woken"
        assert timeout is not None, "the producer would wait forever: nothing left to free room"
        return False

    def notify_all(self) -> None:
        self.notified += 1

    def notify(self, n: int = 1) -> None:
        self.notified += 1


def scripted_room(h: Harness, *turns: Callable[[], object]) -> ScriptedCondition:
    room = ScriptedCondition(h.outbox.lock, list(turns))  # type: ignore[arg-type]
    h.outbox._room = room  # type: ignore[assignment]  # made lazily by the first producer to wait: this one instead
    return room


def msg(n: int, fill: int = 0x41) -> OutMessage:
    return OutMessage(bytes([fill]) * n, False)


def wire_of(*outs: OutMessage) -> bytes:
    return b"".join(b"".join(out.frame) for out in outs)


def queue(h: Harness, *outs: OutMessage) -> None:
    for out in outs:
        assert h.outbox.put(out)
    h.drain()


# -- partial-write bookkeeping ---------------------------------------------------------------------------


def test_random_partial_writes_across_frame_boundaries_keep_the_stream_exact() -> None:
    rng = random.Random(7)
    h = Harness(limit=1 << 30)
    messages = [msg(rng.choice([0, 1, 125, 126, 5000, 20000, 70000]), fill=i % 256) for i in range(300)]
    queue(h, *messages)
    h.buffer.append((PONG,), 0, 2)
    wire = h.write([rng.choice([0, 1, 2, 3, 100, 4096, 65536, 200000]) for _ in range(5000)])
    assert wire == wire_of(*messages) + PONG
    assert h.outbox.queued == 0 and h.backlog.bytes == 0 and not h.buffer.frames and not h.buffer.head_started


@pytest.mark.parametrize("payload,cuts", [
    pytest.param(125, [1, 1], id="7-bit-header-byte-by-byte"),
    pytest.param(126, [1, 2, 1], id="16-bit-header-in-pieces"),
    pytest.param(70000, [1, 8, 1], id="64-bit-header-in-pieces"),
    pytest.param(70000, [10], id="64-bit-header-exactly"),
    pytest.param(70000, [9, 2, 60000], id="64-bit-header-into-payload"),
])
def test_writes_that_end_inside_a_header(payload: int, cuts: list[int]) -> None:
    """Large frames are two buffers (header, payload): the offset must cross from one to the other exactly."""
    out, after = msg(payload, fill=0x11), msg(3, fill=0x22)
    h = Harness(limit=1 << 20)
    queue(h, out, after)
    full = wire_of(out, after)
    done = 0
    for cut in cuts:
        assert h.step(cut) == cut
        done += cut
        assert bytes(h.sock.wire) == full[:done]
        assert h.buffer.head_started and h.outbox.queued == out.size + after.size, "budget released before the last byte"
        buffers, *_ = h.buffer.gather()
        assert b"".join(bytes(b) for b in buffers) == full[done:], "the next offer does not resume at the right byte"
    assert h.write() == full[done:]
    assert h.outbox.queued == 0 and not h.buffer.head_started


def test_writes_that_end_exactly_on_frame_boundaries() -> None:
    outs = [msg(10), msg(300), msg(70000), msg(0)]
    h = Harness(limit=1 << 20)
    queue(h, *outs)
    left = sum(out.size for out in outs)
    for i, out in enumerate(outs):
        assert h.step(out.size) == out.size
        left -= out.size
        assert h.outbox.queued == left, f"frame {i}: its budget must be released as its last byte goes out"
        assert not h.buffer.head_started
        if i + 1 < len(outs):
            buffers, frames, _, _ = h.buffer.gather()
            assert buffers[0] is outs[i + 1].frame[0], "a frame not yet started is offered as is, not sliced or copied"
            assert frames == len(outs) - i - 1
    assert bytes(h.sock.wire) == wire_of(*outs) and not h.buffer.frames


def test_one_write_across_several_frames_releases_only_the_finished_ones() -> None:
    a, b, c, d = msg(100, 1), msg(200, 2), msg(70000, 3), msg(50, 4)
    h = Harness(limit=1 << 20)
    queue(h, a, b, c, d)
    into_c = 1000
    h.step(a.size + b.size + into_c)
    assert h.outbox.queued == c.size + d.size
    assert len(h.buffer.frames) == 2 and h.buffer.frames[0] is c and h.buffer.head_started
    buffers, frames, offered, reserved = h.buffer.gather()
    assert (frames, offered, reserved) == (2, c.size - into_c + d.size, c.size + d.size)
    assert bytes(buffers[0]) == c.payload[into_c - len(c.header):], "resumes inside c's payload buffer"
    h.step(c.size - into_c - 1)  # all of c but its last byte
    assert h.outbox.queued == c.size + d.size, "c's budget released before its last byte was written"
    h.step(1)
    assert h.outbox.queued == d.size and not h.buffer.head_started
    h.write()
    assert bytes(h.sock.wire) == wire_of(a, b, c, d) and h.outbox.queued == 0


@pytest.mark.parametrize("payload", [0, 125, 126, 65535, 65536])
def test_the_budget_comes_back_with_the_last_byte_not_before(payload: int) -> None:
    out = msg(payload)
    h = Harness(limit=1 << 20)
    queue(h, out)
    first = min(out.size - 1, 12)  # byte by byte through the header and into the payload, then all but the last
    for cut in [1] * first + ([out.size - 1 - first] if out.size - 1 > first else []):
        h.step(cut)
        assert h.outbox.queued == out.size and h.buffer.head_started
    h.step(1)
    assert h.outbox.queued == 0 and not h.buffer.frames and bytes(h.sock.wire) == wire_of(out)


def test_a_compressed_frame_releases_what_it_reserved_not_its_length() -> None:
    """Deflate frames: ``reserved`` is the message's plain size, ``length`` the compressed bytes on the wire."""
    h = Harness(limit=1 << 20)
    h.outbox.put(msg(5000))
    pending = h.outbox.take()
    compressed = b"\xc2\x05" + b"zzzzz"  # stands in for wsproto's output
    h.buffer.append((compressed,), pending[0].size, len(compressed))
    h.step(6)
    assert h.outbox.queued == 5004
    h.step(1)
    assert h.outbox.queued == 0 and bytes(h.sock.wire) == compressed


def test_a_refused_write_changes_nothing_but_the_blocked_clock() -> None:
    h = Harness()
    queue(h, msg(100))
    h.step(10)
    assert h.buffer.blocked_since is not None
    first = h.buffer.blocked_since
    assert h.step(0) == 0
    assert h.buffer.blocked_since == first and h.outbox.queued == msg(100).size  # still blocked since the first refusal
    h.write()
    assert h.buffer.blocked_since is None and h.outbox.queued == 0 and bytes(h.sock.wire) == wire_of(msg(100))


def test_gather_offers_at_most_iov_max_buffers() -> None:
    outs = [msg(20000, fill=i % 256) for i in range(IOV_MAX)]  # two buffers each: twice IOV_MAX in the queue
    h = Harness(limit=1 << 30)
    queue(h, *outs)
    h.step(outs[0].size + 5)  # the head partly written: its rest, then whole frames
    buffers, _, offered, _ = h.buffer.gather()
    assert len(buffers) <= IOV_MAX and offered == sum(len(b) for b in buffers)
    wire = h.write()
    assert bytes(h.sock.wire) == wire_of(*outs) and len(wire) == sum(o.size for o in outs) - outs[0].size - 5
    assert len(h.sock.calls) > 2 and h.outbox.queued == 0


def test_gather_with_max_bytes_stops_at_the_first_frame_past_it() -> None:
    outs = [msg(1000, fill=i) for i in range(10)]
    h = Harness(limit=1 << 30)
    queue(h, *outs)
    buffers, frames, offered, reserved = h.buffer.gather(2500)
    assert frames == 3 and offered == reserved == sum(o.size for o in outs[:3])
    assert b"".join(bytes(b) for b in buffers) == wire_of(*outs[:3])
    h.step(offered - 10)  # the third frame partly written: the next gather starts with its rest
    buffers, frames, offered, _ = h.buffer.gather(1)
    assert frames == 1 and offered == 10
    assert b"".join(bytes(b) for b in buffers) == wire_of(*outs[:3])[-10:]


def test_a_single_partly_written_frame_resumes_where_it_stopped() -> None:
    h = Harness()
    queue(h, msg(300, fill=7))
    h.step(100)
    _, frames, offered, _ = h.buffer.gather()
    assert frames == 1 and offered == msg(300).size - 100
    assert h.write() == wire_of(msg(300, fill=7))[100:]


# -- drop_unsent --------------------------------------------------------------------------------------


def test_drop_unsent_keeps_a_partly_written_head_whole_and_protocol_frames() -> None:
    head, dropped = msg(70000, 1), [msg(1000, 2), msg(20, 3)]
    h = Harness(limit=1 << 20)
    queue(h, head, *dropped)
    h.buffer.append((PONG,), 0, 2)
    h.step(5)  # inside head's header
    h.buffer.drop_unsent()
    assert list(h.buffer.frames) == [head, h.buffer.frames[1]] and h.buffer.frames[1].reserved == 0
    assert h.outbox.queued == head.size, "the started head's bytes stay reserved until written"
    h.step(40000)
    assert h.outbox.queued == head.size
    h.write()
    assert bytes(h.sock.wire) == wire_of(head) + PONG, "the stream tore: the head frame was not finished whole"
    assert h.outbox.queued == 0


def test_drop_unsent_keeps_the_frames_a_tls_write_must_retry() -> None:
    """A TLS send that got want-write must be retried with the same bytes: its frames are not droppable."""
    first, second, third = msg(100, 1), msg(200, 2), msg(300, 3)
    h = Harness(limit=1 << 20)
    queue(h, first, second, third)
    h.buffer.append((PONG,), 0, 2)
    _, frames, offered, reserved = h.buffer.gather(250)  # what a TLS transport takes for one send
    assert frames == 2
    h.buffer.in_flight = frames
    h.buffer.written(0, offered, frames, reserved)  # want-write: nothing went out yet
    h.buffer.drop_unsent()
    assert list(h.buffer.frames)[:2] == [first, second] and len(h.buffer.frames) == 3
    assert h.outbox.queued == first.size + second.size
    h.buffer.written(offered, offered, frames, reserved)  # the retry took them
    h.buffer.in_flight = 0
    assert h.write() == PONG and h.outbox.queued == 0


def test_frames_in_counts_the_frames_the_next_bytes_belong_to() -> None:
    h = Harness(limit=1 << 20)
    queue(h, msg(100, 1), msg(100, 2), msg(100, 3))
    size = msg(100).size
    assert [h.buffer.frames_in(n) for n in (0, 1, size, size + 1, 3 * size, 10 * size)] == [0, 1, 1, 2, 3, 3]
    h.step(size - 1)  # one byte of the first frame left
    assert [h.buffer.frames_in(n) for n in (1, 2, size + 1)] == [1, 2, 2]


def test_drop_unsent_with_nothing_started_drops_every_data_frame() -> None:
    h = Harness(limit=1 << 20)
    queue(h, msg(10), msg(20))
    h.buffer.append((PONG,), 0, 2)
    h.buffer.drop_unsent()
    assert h.outbox.queued == 0 and h.write() == PONG


def test_drop_unsent_all_frames_forgets_even_a_started_head() -> None:
    h = Harness(limit=1 << 20)
    queue(h, msg(500), msg(10))
    h.step(7)
    h.buffer.drop_unsent(all_frames=True)
    assert h.outbox.queued == 0 and not h.buffer.frames and not h.buffer.head_started and h.buffer.blocked_since is None


def test_drop_unsent_wakes_a_waiting_producer() -> None:
    h = Harness(limit=100)
    queue(h, msg(200))
    room = scripted_room(h, h.buffer.drop_unsent)
    assert h.outbox.put(msg(10))
    assert room.woken == [True] and h.outbox.queued == 12


# -- put_shared: one message, many outboxes ------------------------------------------------------------


def test_put_shared_queues_the_same_object_to_each_outbox_and_each_writes_it_once() -> None:
    backlog = Backlog(1 << 30)
    hs = [Harness(limit=1 << 20, backlog=backlog) for _ in range(3)]
    out = msg(70000, fill=9)
    blocked, queued, closed = Outbox.put_shared(out, iter([h.outbox for h in hs]))
    assert (blocked, queued, closed) == (None, 3, 0)
    assert backlog.bytes == 3 * out.size and [h.scheduled for h in hs] == [1, 1, 1]
    for h, accept in zip(hs, ([], [3, 10], [out.size - 1]), strict=True):
        assert h.drain() == [out]
        assert h.buffer.frames[0] is out, "copied per outbox"
        buffers, *_ = h.buffer.gather()
        assert buffers[1] is out.payload, "the payload was copied instead of shared"
        assert h.write(accept) == wire_of(out), "each outbox writes the shared message exactly once"
        assert h.outbox.queued == 0
    assert backlog.bytes == 0
    assert out.frame == (out.header, out.payload) and out.buffers is out.frame  # partial writes never touch the message


def test_put_shared_stops_at_a_full_outbox_and_skips_closing_ones() -> None:
    backlog = Backlog(1 << 30)
    a, closing, full, d = (Harness(limit=100, backlog=backlog) for _ in range(4))
    closing.outbox.shut(1001, "going away")
    full.outbox.put(msg(98))  # exactly at its limit: full
    assert full.outbox.queued == 100 and full.outbox.full
    out = msg(10)
    rest = iter([a.outbox, closing.outbox, full.outbox, d.outbox])
    blocked, queued, closed = Outbox.put_shared(out, rest)
    assert (blocked, queued, closed) == (full.outbox, 1, 1)
    assert full.outbox.queued == 100 and d.outbox.queued == 0  # the caller sends to `full` with put(), then goes on
    assert Outbox.put_shared(out, rest) == (None, 1, 0) and d.outbox.queued == out.size


def test_put_shared_hands_back_an_outbox_on_another_lock() -> None:
    a, other = Harness(), Harness()  # each on its own backlog, so its own lock
    blocked, queued, _ = Outbox.put_shared(msg(1), iter([a.outbox, other.outbox]))
    assert blocked is other.outbox and queued == 1


# -- flow control: room, waiting, dropping -------------------------------------------------------------


def test_room_means_below_the_limit_so_a_big_message_always_fits() -> None:
    h = Harness(limit=1000)
    assert h.outbox.put(msg(10))
    assert h.outbox.put(msg(5000))  # over the limit by itself, but the queue was below it
    assert h.outbox.queued == 12 + 5004 and h.outbox.full


def test_full_means_at_the_limit() -> None:
    h = Harness(limit=100)
    h.outbox.put(msg(97))  # 99 bytes with its header
    assert not h.outbox.full
    h.outbox.put(msg(0))  # 2 more: 101
    assert h.outbox.full
    h2 = Harness(limit=100)
    h2.outbox.put(msg(98))  # exactly 100
    assert h2.outbox.full


def test_a_full_queue_makes_the_producer_wait_until_the_socket_takes_bytes() -> None:
    h = Harness(limit=100)
    queue(h, msg(200))
    room = scripted_room(h, h.write)
    late = msg(10)
    assert h.outbox.put(late)
    assert room.waits == 1 and room.woken == [True] and h.outbox.waits == 1
    assert h.full_reports == 1  # the IO thread was asked to judge the client
    assert h.outbox.queued == late.size and h.drain() == [late]


def test_a_waiting_producer_is_woken_exactly_when_room_comes_back() -> None:
    a, b = msg(60, 1), msg(60, 2)
    h = Harness(limit=100)
    queue(h, a, b)  # 124 bytes queued: full
    turns = [lambda: h.step(30), lambda: h.step(31), lambda: h.step(1)]  # inside a, a's last byte but one, a's last
    room = scripted_room(h, *turns)
    assert h.outbox.put(msg(5))
    assert room.woken == [False, False, True], "woken before any budget came back, or not when it did"
    assert h.outbox.queued == b.size + 7


def test_room_coming_back_still_over_the_limit_does_not_wake() -> None:
    h = Harness(limit=100)
    queue(h, msg(20, 1), msg(200, 2))  # 226 bytes: freeing the first 22 leaves it full
    room = scripted_room(h, lambda: h.step(22), lambda: h.step(1000))
    assert h.outbox.put(msg(5))
    assert room.woken == [False, True]


def test_the_full_queue_is_reported_once_until_the_io_thread_has_judged() -> None:
    h = Harness(limit=100)
    for _ in range(2):
        queue(h, msg(200))
        scripted_room(h, h.write)
        h.outbox.put(msg(10))
    assert h.full_reports == 1 and h.outbox.waits == 2
    h.outbox.judged()
    queue(h, msg(200))
    scripted_room(h, h.write)
    h.outbox.put(msg(10))
    assert h.full_reports == 2


def test_drop_policy_drops_exactly_what_does_not_fit_and_counts_it() -> None:
    h = Harness(limit=1000, policy=OverflowPolicy.DROP)
    results = [h.outbox.put(msg(98)) for _ in range(15)]  # 100 bytes each with the header: the 10th fills it exactly
    assert results == [True] * 10 + [False] * 5
    assert h.outbox.dropped == 5 == h.drops and h.outbox.queued == 1000
    assert h.full_reports == 0 and h.outbox.waits == 0  # dropping never waits nor asks for judgement
    h.drain()
    h.step(100)  # one message out: room again
    assert h.outbox.put(msg(98)) and h.outbox.dropped == 5
    assert not h.outbox.put(msg(98)) and h.outbox.dropped == 6 == h.drops


def test_the_io_thread_never_waits() -> None:
    h = Harness(limit=100, backlog=10, io_thread=True)
    for _ in range(5):
        assert h.outbox.put(msg(200))
    assert h.outbox.queued == 5 * 204 == h.backlog.bytes  # 200 bytes + a 4-byte header each


def test_paced_waits_even_under_drop_and_never_asks_for_judgement() -> None:
    h = Harness(limit=100, policy=OverflowPolicy.DROP)
    queue(h, msg(200))
    room = scripted_room(h, h.write)
    assert h.outbox.put(msg(10), paced=True)
    assert room.waits == 1 and h.full_reports == 0 and h.outbox.dropped == 0


def test_shut_wakes_a_waiting_producer_with_connection_closed() -> None:
    h = Harness(limit=100)
    queue(h, msg(200))
    scripted_room(h, lambda: h.outbox.shut(1008, "stalled"))
    with pytest.raises(ConnectionClosed) as info:
        h.outbox.put(msg(10))
    assert (info.value.code, info.value.reason) == (1008, "stalled")
    assert h.outbox.queued == 204, "the refused message must not be queued"
    assert not h.outbox.shut(1000, "again") and h.outbox.closed == (1008, "stalled")
    with pytest.raises(ConnectionClosed) as again:
        h.outbox.put(msg(1))
    assert again.value.code == 1008


def test_a_room_timeout_queues_nothing() -> None:
    h = Harness(limit=100)
    queue(h, msg(200))
    scripted_room(h)  # nothing frees room
    with pytest.raises(TimeoutError, match=r"no room for 12 bytes in the client's queue within 0\.5 s"):
        h.outbox.put(msg(10), timeout=0.5)
    assert h.outbox.queued == 204 and h.backlog.bytes == 0 and h.scheduled == 1


def test_a_backlog_timeout_gives_the_reservation_back() -> None:
    backlog = Backlog(100)
    h = Harness(limit=1 << 20, backlog=backlog)
    assert h.outbox.put(msg(200))  # the backlog was below its limit: accepted, overshooting
    backlog._below = ScriptedCondition(backlog.lock, [])  # type: ignore[assignment,arg-type]
    with pytest.raises(TimeoutError, match=r"backlog stayed over 100 bytes for 0\.5 s"):
        h.outbox.put(msg(10), timeout=0.5)
    assert h.outbox.queued == 204 and backlog.bytes == 204 and backlog.waits == 1


def test_the_backlog_makes_producers_wait_until_the_io_thread_takes() -> None:
    backlog = Backlog(100)
    h = Harness(limit=1 << 20, backlog=backlog)
    assert h.outbox.put(msg(150))
    below = ScriptedCondition(backlog.lock, [h.outbox.take])  # type: ignore[arg-type]
    backlog._below = below  # type: ignore[assignment]
    assert h.outbox.put(msg(10))
    assert below.waits == 1 and below.woken == [True]
    assert backlog.waits == 1 and backlog.peak == 154 and backlog.bytes == 12


def test_backlog_add_and_remove() -> None:
    backlog = Backlog(100)
    backlog.add(150, wait=True)  # below the limit when it came: accepted, overshooting
    below = ScriptedCondition(backlog.lock, [lambda: backlog.remove(150)])  # type: ignore[arg-type]
    backlog._below = below  # type: ignore[assignment]
    backlog.add(10, wait=True)
    assert below.woken == [True] and backlog.peak == 150 and backlog.waits == 1 and backlog.bytes == 10


def test_one_schedule_per_batch_and_take_keeps_order() -> None:
    h = Harness()
    outs = [msg(i + 1) for i in range(5)]
    for out in outs:
        h.outbox.put(out)
    assert h.scheduled == 1
    assert h.drain() == outs
    h.outbox.put(msg(1))
    assert h.scheduled == 2  # a new batch after take()


def test_with_a_real_thread_and_condition() -> None:
    """The same wait with the real Condition: the producer is known to be waiting (an event, not a sleep)."""
    h = Harness(limit=100)
    queue(h, msg(200))
    entered = threading.Event()

    class Signalling(threading.Condition):
        def wait_for(self, predicate, timeout=None):  # type: ignore[no-untyped-def]
            entered.set()  # the lock is held here: the IO thread's write below runs once the producer sleeps
            return super().wait_for(predicate, timeout)

    h.outbox._room = Signalling(h.outbox.lock)
    done = threading.Event()

    def producer() -> None:
        h.outbox.put(msg(10))
        done.set()

    t = threading.Thread(target=producer, daemon=True)
    t.start()
    assert entered.wait(10)
    assert not done.is_set()
    h.write()
    assert done.wait(10), "the producer was not woken when its room came back"
    t.join(10)
    assert h.outbox.queued == 12
