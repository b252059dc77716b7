"""The Writer alone, without sockets: drain, one flush per batch, the half-close once the last frame is out.

The test is the IO thread: :class:`FakeLoop` runs posted callables and after-batch callbacks when told
(``turn()``), and :class:`FakeTransport` takes the bytes a test scripts, so the order of drain, flush and
half-close is seen exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from wsproto.extensions import PerMessageDeflate

from server.connections.backlog import Backlog
from server.connections.writer import Writer
from server.core.sendbuffer import SendBuffer
from server.limits import Limits
from server.protocol.frames import OutMessage
from server.protocol.session import Session
from server.stats import Stats

pytestmark = pytest.mark.timeout(30)


class FakeLoop:
    def __init__(self) -> None:
        self.turns = 0
        self.posted: list[Callable[[], object]] = []
        self.after_batch: list[Callable[[], object]] = []
        self.timers: list[tuple[float, Callable[[], object]]] = []

    def post(self, callback: Callable[[], object]) -> None:
        self.posted.append(callback)

    def call_after_batch(self, callback: Callable[[], object]) -> None:
        self.after_batch.append(callback)

    def call_later(self, delay: float, callback: Callable[[], object]) -> object:
        self.timers.append((delay, callback))
        return self

    def cancel(self) -> None:  # the Timer the writer keeps
        pass

    def in_io_thread(self) -> bool:
        return True

    def turn(self) -> None:
        """One loop turn: the posted callables, then the after-batch callbacks."""
        self.turns += 1
        posted, self.posted = self.posted, []
        for callback in posted:
            callback()
        after, self.after_batch = self.after_batch, []
        for callback in after:
            callback()


class FakeTransport:
    """Takes ``accept[i]`` bytes on write call i (everything once the script runs out)."""

    closed = False

    def __init__(self, accept: list[int] | None = None, shutdown_error: OSError | None = None) -> None:
        self.accept = list(accept or [])
        self.wire = bytearray()
        self.log: list[str] = []
        self.shutdown_error = shutdown_error

    def write(self, buffer: SendBuffer) -> None:
        self.log.append("write")
        while buffer.frames:
            buffers, frames, offered, reserved = buffer.gather()
            data = b"".join(bytes(b) for b in buffers)
            sent = min(self.accept.pop(0), offered) if self.accept else offered
            self.wire += data[:sent]
            buffer.written(sent, offered, frames, reserved)
            if sent < offered:
                return

    def shutdown_write(self) -> None:
        self.log.append("shutdown")
        if self.shutdown_error is not None:
            raise self.shutdown_error

    def idle_since(self) -> float:
        return 0.0


class Harness:
    def __init__(self, transport: FakeTransport) -> None:
        self.loop = FakeLoop()
        self.transport = transport
        self.shut: list[OSError | None] = []
        self.flushed = 0
        self.writer = Writer(
            self.loop, transport, Limits(ping_interval=None), Stats(), Backlog(1 << 30),  # type: ignore[arg-type]
            on_flushed=self._on_flushed, on_error=lambda exc: None, on_stalled=lambda reason: None,
            on_behind=lambda reason: None, on_write_shut=self.shut.append,
        )
        self.writer.session = Session(Limits(ping_interval=None))

    def _on_flushed(self) -> None:
        self.flushed += 1


def test_a_burst_of_sends_is_one_drain_and_one_flush() -> None:
    h = Harness(FakeTransport())
    outs = [OutMessage.of(f"m{i}") for i in range(5)]
    for out in outs:
        h.writer.outbox.put(out)
    assert len(h.loop.posted) == 1, "one posted drain for the whole batch"
    h.loop.turn()
    assert h.transport.log == ["write"] and h.flushed == 1
    assert bytes(h.transport.wire) == b"".join(out.header + out.payload for out in outs)
    assert h.writer.outbox.queued == 0, "written frames give their reservation back"


def test_the_half_close_waits_for_the_last_frame_then_happens_once() -> None:
    h = Harness(FakeTransport(accept=[3, 0]))
    h.writer.outbox.put(OutMessage.of(b"x" * 10))
    h.loop.turn()  # drain and flush: the socket takes 3 bytes, then refuses
    h.writer.append_raw(b"\x88\x02\x03\xe8")  # the close frame, queued behind the data
    h.writer.close_after_flush()
    h.loop.turn()  # the socket takes nothing: no half-close while frames wait
    assert h.shut == [] and not h.writer.write_shut and "shutdown" not in h.transport.log
    h.writer.flush()  # writable again: everything goes, then the half-close
    assert h.transport.log[-1] == "shutdown" and h.shut == [None] and h.writer.write_shut
    assert bytes(h.transport.wire).endswith(b"\x88\x02\x03\xe8")
    h.writer.flush()
    h.writer.close_after_flush()
    h.loop.turn()
    assert h.transport.log.count("shutdown") == 1 and h.shut == [None], "half-closed once; nothing written after"


def test_a_failed_half_close_is_reported() -> None:
    error = ConnectionResetError(104, "reset")
    h = Harness(FakeTransport(shutdown_error=error))
    h.writer.close_after_flush()
    h.loop.turn()
    assert h.shut == [error]


def test_unsent_data_frames_are_dropped_and_their_room_given_back_but_protocol_frames_stay() -> None:
    h = Harness(FakeTransport(accept=[0]))
    h.writer.outbox.put(OutMessage.of(b"y" * 100))
    h.loop.turn()  # drained, refused by the socket
    h.writer.append_raw(b"\x8a\x00")  # a pong: reserved 0
    assert h.writer.outbox.queued > 0
    h.writer.drop_unsent()
    assert h.writer.outbox.queued == 0
    assert [bytes(b"".join(f.buffers)) for f in h.writer.buffer.frames] == [b"\x8a\x00"]


def _frame(out: OutMessage) -> bytes:
    return out.header + out.payload


def test_write_now_writes_the_first_message_of_a_turn_at_once_and_queues_the_rest() -> None:
    # An inline handler's reply (a send on the IO thread) leaves at once, as asyncio's transport.write() does;
    # more sends in the same turn wait for the turn's one flush, so a pipelined burst is not a write per message.
    h = Harness(FakeTransport())
    first, second, third = (OutMessage.of(f"r{i}") for i in range(3))
    assert h.writer.write_now(first)
    assert h.transport.log == ["write"] and bytes(h.transport.wire) == _frame(first), "written before the turn ends"
    assert h.writer.outbox.queued == 0 and h.loop.posted == [] and h.loop.after_batch == []
    assert not h.writer.write_now(second), "one write_now per turn"
    h.writer.outbox.put(second)
    h.loop.turn()
    assert h.transport.log == ["write", "write"] and bytes(h.transport.wire) == _frame(first) + _frame(second)
    assert h.writer.write_now(third), "a new turn: at once again"
    assert bytes(h.transport.wire).endswith(_frame(third)) and h.writer.outbox.queued == 0


def test_write_now_never_overtakes_what_waits_in_the_outbox_or_the_send_buffer() -> None:
    h = Harness(FakeTransport(accept=[0]))
    queued, now = OutMessage.of(b"queued"), OutMessage.of(b"now")
    h.writer.outbox.put(queued)  # a producer's message, not yet taken by the IO thread
    assert not h.writer.write_now(now), "the outbox's message goes first"
    h.loop.turn()  # drained; the socket refuses it: it waits in the send buffer
    assert h.writer.buffer.frames and not h.writer.write_now(now), "the send buffer's frame goes first"
    h.writer.outbox.put(now)
    h.loop.turn()  # writable again
    assert bytes(h.transport.wire) == _frame(queued) + _frame(now)


def test_write_now_declines_with_deflate_and_once_closing() -> None:
    h = Harness(FakeTransport())
    h.writer.session = Session(Limits(ping_interval=None), PerMessageDeflate())
    h.writer.session.deflate = True  # compressed frames are made in queue order by the drain
    assert not h.writer.write_now(OutMessage.of("x"))
    h = Harness(FakeTransport())
    h.writer.outbox.shut(1000, "bye")
    assert not h.writer.write_now(OutMessage.of("x"))
    h = Harness(FakeTransport())
    h.writer.close_after_flush()
    assert not h.writer.write_now(OutMessage.of("x")), "nothing after the close frame"
    assert h.transport.wire == b""
