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
every broadcast passes) or at step 4 (what the socket really took).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable

from ..protocol.frames import OutMessage

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
    """

    def __init__(self, release: Callable[[int], None]) -> None:
        self.release = release
        self.frames: deque[Frame | OutMessage] = deque()
        self._head_sent = 0  # bytes of frames[0] already written
        self.in_flight = 0  # head frames a transport has begun and must finish as they are (a TLS write to retry)
        self.blocked_since: float | None = None  # the socket last refused bytes while data waited

    def append(self, buffers: tuple[bytes, ...], reserved: int, length: int) -> None:
        """Queue one frame made of ``buffers``, ``length`` bytes on the wire, holding ``reserved`` of the budget."""
        self.frames.append(Frame(buffers, reserved, length))

    def extend(self, messages: deque[OutMessage]) -> None:
        """Queue plain data frames, each its message's ready-made frame (reserved = length = ``size``)."""
        self.frames.extend(messages)

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
        else:  # partial write: byte-exact bookkeeping, frame by frame
            freed = 0
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
                queue.popleft()
        if sent:
            self.blocked_since = None
        if queue and sent < offered and self.blocked_since is None:
            self.blocked_since = time.monotonic()  # the socket's buffer is full now
        if freed:
            self.release(freed)

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
        if freed:
            self.release(freed)
