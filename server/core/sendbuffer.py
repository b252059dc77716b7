"""One connection's send buffer: the frames on their way to the socket, owned by the IO thread.

The send path, end to end (every step after the first on the IO thread):

1. ``send()`` (any thread) reserves the message's bytes in the connection's
   :class:`~server.connections.outbox.Outbox` and appends it to the pending queue; the first
   of a batch posts :meth:`Writer.drain <server.connections.writer.Writer>` to the IO thread (``IOLoop.post``).
2. The writer takes the pending messages and appends them here as frames
   (shared as they are; compressed in order with deflate), with the handshake
   reply and control frames, then asks for one flush per loop turn.
3. The flush hands this buffer to the transport, which writes what the socket
   takes (:meth:`gather` / :meth:`written`, byte-exact over partial writes; TLS
   pins a refused record's frames with :attr:`in_flight` until it is retried).
4. Written frames give their reservation back to the outbox (``release``):
   that is what wakes a producer waiting for room.
5. Once the buffer is empty after a close, the writer half-closes the socket.

Count bytes per message at step 1 (``Outbox.reserve``, which every send and
every broadcast passes) or at step 4 (what the socket really took: the
buffer counts frames and bytes out there, and times each batch from its
first ``send()`` to the socket taking its last byte).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable

from ..protocol.frames import OutMessage
from ..stats import Stats

IOV_MAX = 512  # buffers per sendmsg call; Linux allows 1024


class Frame:
    """One queued frame: its buffers, the bytes it reserved, and its length on the wire.

    A plain data frame is queued as its :class:`OutMessage` itself, which has
    the same three attributes: no allocation per message and client.
    """

    __slots__ = ("buffers", "length", "reserved")

    def __init__(self, buffers: tuple[bytes, ...], reserved: int, length: int) -> None:
        self.buffers = buffers
        self.reserved = reserved
        self.length = length


class SendBuffer:
    """The frames a connection's transport is writing, with the partial-write bookkeeping (IO thread only).

    ``release(n)`` gives ``n`` reserved bytes back to the producers' outbox:
    called for frames the socket has taken, and for frames dropped unsent.
    ``stats``: where the frames and bytes written, and each batch's
    send-to-socket time (:meth:`mark`), are counted (None: not counted).
    """

    def __init__(self, release: Callable[[int], None], stats: Stats | None = None) -> None:
        self.release = release
        self.frames: deque[Frame | OutMessage] = deque()
        self._head_sent = 0  # bytes of frames[0] already written
        self.in_flight = 0  # head frames a transport has begun and must finish as they are (a TLS write to retry)
        self.blocked_since: float | None = None  # the socket last refused bytes while data waited
        self._stats = stats
        # Batch marks: (frames appended once the batch was in, when its first message was sent). A mark is
        # observed once the socket has taken every frame up to it: one clock read and one observation per batch.
        self._marks: deque[tuple[int, float]] = deque()
        self._appended = 0  # frames ever appended
        self._done = 0  # frames ever taken whole by the socket (or dropped)

    def append(self, buffers: tuple[bytes, ...], reserved: int, length: int) -> None:
        """Queue one frame made of ``buffers``, ``length`` bytes on the wire, holding ``reserved`` of the budget."""
        self.frames.append(Frame(buffers, reserved, length))
        self._appended += 1

    def extend(self, messages: deque[OutMessage] | tuple[OutMessage, ...]) -> None:
        """Queue plain data frames, each its message's ready-made frame (reserved = length = ``size``)."""
        self.frames.extend(messages)
        self._appended += len(messages)

    def mark(self, since: float) -> None:
        """The frames appended so far end a batch whose first message was sent at ``since`` (``time.monotonic()``)."""
        if self._stats is not None:
            self._marks.append((self._appended, since))

    @property
    def oldest_since(self) -> float | None:
        """When the oldest batch not yet written whole was sent (None: no data batch waits here)."""
        marks = self._marks
        return marks[0][1] if marks else None

    def gather(self, max_bytes: int | None = None) -> tuple[list[memoryview | bytes], int, int, int]:
        """Up to IOV_MAX buffers from the head of the queue: (buffers, frames, bytes, reserved).

        ``max_bytes``: stop adding frames once this many bytes are offered (a
        TLS transport sends one bounded buffer at a time; gathering the whole
        queue for it would cost a pass over every queued frame per send).
        """
        queue = self.frames
        skip = self._head_sent
        if not skip and len(queue) == 1:  # one frame (a broadcast to many idle clients): no loop
            frame = queue[0]
            return list(frame.buffers), 1, frame.length, frame.reserved
        buffers: list[memoryview | bytes] = []
        frames = offered = reserved = 0
        if skip:  # the head frame was partly written
            frame = queue[0]
            offered = frame.length - skip
            reserved = frame.reserved
            frames = 1
            for buf in frame.buffers:
                if skip >= len(buf):
                    skip -= len(buf)
                    continue
                buffers.append(memoryview(buf)[skip:] if skip else buf)
                skip = 0
        extend = buffers.extend
        # A frame has at most 2 buffers: this many more frames never pass IOV_MAX.
        room = (IOV_MAX - len(buffers)) // 2
        if max_bytes is not None:
            for frame in itertools.islice(queue, frames, frames + room):
                if offered >= max_bytes:
                    break
                extend(frame.buffers)
                offered += frame.length
                reserved += frame.reserved
                frames += 1
            return buffers, frames, offered, reserved
        for frame in itertools.islice(queue, frames, frames + room) if frames or len(queue) > room else queue:
            extend(frame.buffers)
            offered += frame.length
            reserved += frame.reserved
        frames = min(len(queue), frames + room)
        return buffers, frames, offered, reserved

    def written(self, sent: int, offered: int, frames: int, reserved: int) -> None:
        """The socket accepted ``sent`` of the ``offered`` bytes that :meth:`gather` returned."""
        queue = self.frames
        if sent == offered:  # the common case: all of it went out, drop whole frames
            if frames == len(queue):
                queue.clear()
            else:
                for _ in range(frames):
                    queue.popleft()
            self._head_sent = 0
            freed = reserved
            done = frames
        else:  # partial write: byte-exact bookkeeping, frame by frame
            freed = done = 0
            remaining = sent
            while queue and remaining:
                head = queue[0]
                left = head.length - self._head_sent
                if remaining < left:
                    self._head_sent += remaining
                    break
                remaining -= left
                self._head_sent = 0
                freed += head.reserved
                done += 1
                queue.popleft()
        stats = self._stats
        if stats is not None:
            stats.bytes_out += sent
            stats.frames_out += done
            self._done += done
            if self._marks and self._marks[0][0] <= self._done:
                self._observe_batches(stats)
        if sent:
            self.blocked_since = None
        if queue and sent < offered and self.blocked_since is None:
            self.blocked_since = time.monotonic()  # the socket's buffer is full now
        if freed:
            self.release(freed)

    def _observe_batches(self, stats: Stats) -> None:
        now = time.monotonic()
        marks, done, observe = self._marks, self._done, stats.send_latency.observe
        while marks and marks[0][0] <= done:
            observe(now - marks.popleft()[1])

    def frames_in(self, nbytes: int) -> int:
        """How many frames from the head the next ``nbytes`` bytes to write belong to."""
        count, left = 0, nbytes + self._head_sent
        for frame in self.frames:
            if left <= 0:
                break
            count += 1
            left -= frame.length
        return count

    @property
    def head_started(self) -> bool:
        """Part of the head frame is on the wire: it must be finished before anything else."""
        return self._head_sent > 0

    def drop_unsent(self, all_frames: bool = False) -> None:
        """Forget queued data frames (or every frame, with ``all_frames``).

        A partly written head frame is kept so the stream never tears, and so
        are protocol frames (reserved 0: handshake reply, pong, close).
        """
        freed = sum(frame.reserved for frame in self.frames)
        if all_frames:
            self.frames.clear()
            self._head_sent = 0
            self.blocked_since = None
        else:
            keep = max(self.in_flight, 1 if self._head_sent else 0)
            head = [self.frames.popleft() for _ in range(min(keep, len(self.frames)))]
            kept = head + [frame for frame in self.frames if frame.reserved == 0]
            freed -= sum(frame.reserved for frame in head)
            self.frames = deque(kept)
        self._marks.clear()  # the batches were not delivered: not timed
        self._done = self._appended - len(self.frames)
        if freed:
            self.release(freed)
