"""The write side of one connection, on the IO thread: producers' queue to frames to socket, the half-close, the stall judgement.

The :class:`Writer` owns both halves of a connection's way out: the
:class:`~server.connections.outbox.Outbox` that producers put into from any thread, and
the :class:`~server.core.sendbuffer.SendBuffer` of frames the transport writes
(see its docstring for the send path step by step). It drains the first into
the second once per batch (scheduled through ``IOLoop.post``, the thread
boundary), flushes once per loop turn, half-closes the socket once the last
frame after a close is out, and judges a client whose full queue makes
producers wait: stalled when its socket accepts nothing and its TCP
acknowledges nothing for ``stall_timeout``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

from ..core.loop import IOLoop, Timer
from ..core.sendbuffer import SendBuffer
from ..core.transport import SocketTransport
from ..limits import Limits
from ..protocol.frames import OutMessage
from ..protocol.session import Session
from ..stats import Stats
from .backlog import Backlog
from .outbox import Outbox


class Writer:
    """Owns a connection's outbox, its send buffer and the half-close (IO thread, but :attr:`outbox`).

    ``on_write_shut(error)``: the half-close after :meth:`close_after_flush`
    happened (``None``) or failed (the ``OSError``).
    """

    def __init__(
        self,
        loop: IOLoop,
        transport: SocketTransport,
        limits: Limits,
        stats: Stats,
        backlog: Backlog,
        on_flushed: Callable[[], None],
        on_error: Callable[[OSError], None],
        on_stalled: Callable[[str], None],
        on_behind: Callable[[str], None],
        on_write_shut: Callable[[OSError | None], None],
    ) -> None:
        self._loop = loop
        self._transport = transport
        self._limits = limits
        self._on_flushed = on_flushed
        self._on_error = on_error
        self._on_stalled = on_stalled
        self._on_behind = on_behind
        self._on_write_shut = on_write_shut
        self.outbox = Outbox(
            limits.max_queue_bytes,
            limits.overflow,
            schedule=partial(loop.post, self.drain),
            on_full=partial(loop.post, self.check_stall),
            on_drop=stats.count_drop,
            on_behind=partial(loop.post, self.check_behind),
            backlog=backlog,
            in_io_thread=loop.in_io_thread,
            blocked_since=self._blocked_since,
        )
        self.buffer = SendBuffer(self.outbox.release, stats if stats.detailed else None)
        self.session: Session | None = None  # set once open: it frames data messages when deflate is on
        self._flush_posted = False
        self._written_now_turn = -1  # the loop turn of the last write_now()
        self._stall_timer: Timer | None = None
        self._shut_when_flushed = False
        self.write_shut = False  # our side is half-closed: nothing more is written

    def _blocked_since(self) -> float | None:
        return self.buffer.blocked_since  # read by fan-out producers waiting for room (a float: no lock needed)

    def append_raw(self, data: bytes | bytearray) -> None:
        """Queue protocol bytes (handshake reply, control frames); not counted against the limit."""
        if data:
            self.buffer.append((bytes(data),), 0, len(data))
            self.post_flush()

    def write_now(self, out: OutMessage) -> bool:
        """IO thread: frame ``out`` and write it now, as asyncio's ``transport.write()`` does — when nothing is
        ahead of it (no frame here, no message in the outbox) and nothing was written this way in this loop turn.

        An inline handler's reply then leaves before the rest of the turn; more sends in the same turn are
        queued as usual and go out in the turn's one flush. False: not now (send it through the outbox).
        """
        session = self.session
        if (self._written_now_turn == self._loop.turns or self.buffer.frames or session is None
                or not session.accepts_data or session.deflate or self._transport.closed or self.write_shut
                or self._shut_when_flushed or not self.outbox.reserve_now(out.size)):
            return False
        self._written_now_turn = self._loop.turns
        self.buffer.extend((out,))
        self.buffer.mark(time.monotonic())
        self.flush()
        return True

    def post_flush(self) -> None:
        # One flush per batch: everything queued in this loop turn goes out together.
        if not self._flush_posted:
            self._flush_posted = True
            self._loop.call_after_batch(self.flush)

    def flush(self) -> None:
        """Write what the socket takes now; then ``on_flushed`` (or ``on_error`` if the socket failed)."""
        self._flush_posted = False
        if self._transport.closed or self.write_shut:
            return
        buffer = self.buffer
        try:
            self._transport.write(buffer)
        except OSError as exc:
            self._on_error(exc)
            return
        if buffer.blocked_since is not None and self.outbox.full and self._stall_timer is None:
            self._transport.idle_since()  # the first look at the kernel's count: later looks see it fall
            self._stall_timer = self._loop.call_later(self._look_interval, self.check_stall)
        self._on_flushed()
        if self._shut_when_flushed and not buffer.frames and not self._transport.closed:
            self._shutdown_write()

    def close_after_flush(self) -> None:
        """Half-close the socket once every queued frame is written (the close frame, or an HTTP reply, is last)."""
        self._shut_when_flushed = True
        self.post_flush()

    def _shutdown_write(self) -> None:
        self.write_shut = True
        try:
            self._transport.shutdown_write()
        except OSError as exc:
            self._on_write_shut(exc)
            return
        self._on_write_shut(None)

    def drop_unsent(self, all_frames: bool = False) -> None:
        """Forget queued data frames, or every frame (see :meth:`SendBuffer.drop_unsent`)."""
        self.buffer.drop_unsent(all_frames)

    @property
    def _look_interval(self) -> float:
        # How often a full, blocked client's progress is looked at: a stop is seen within a quarter of the timeout.
        return self._limits.stall_timeout / 4

    def cancel(self) -> None:
        """Stop the stall timer (the connection is finished)."""
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    @property
    def stall_pending(self) -> bool:
        """A stall judgement is scheduled."""
        return self._stall_timer is not None

    def drain(self) -> None:
        """Turn the messages producers put into frames (scheduled by the outbox, once per batch)."""
        outbox = self.outbox
        pending = outbox.take()
        session = self.session
        if session is None or not session.accepts_data or self._transport.closed:
            outbox.release(sum(out.size for out in pending))  # closing: the close frame is already queued
            return
        buffer = self.buffer
        if session.deflate:
            for out in pending:  # compress here, in queue order: the deflate context is per connection
                data = session.encode(out)
                buffer.append((data,), out.size, len(data))
        else:
            buffer.extend(pending)  # each message is its own frame: shared by every client, nothing copied
        if pending:
            buffer.mark(outbox.taken_since)
        self.post_flush()

    @property
    def oldest_queued_since(self) -> float | None:
        """When the oldest message still queued for this client was sent (None: nothing queued). IO thread."""
        since = self.buffer.oldest_since
        return since if since is not None else self.outbox.pending_since

    def _judging(self) -> bool:
        """A full queue on an open session: a client to judge (stalled, or behind a feed)."""
        session = self.session
        return session is not None and session.accepts_data and not self._transport.closed and self.outbox.full

    def check_behind(self) -> None:
        """Judge a fan-out member whose queue stayed full past ``fanout_wait``: behind the feed, or was the IO thread?

        Whatever its socket takes now is written first: a member that read
        while the IO thread was busy gets room, and the producers go on. One
        that still has at least half its queue refused by its socket is too
        slow for the feed.
        """
        outbox = self.outbox
        outbox.judged_behind()
        if not self._judging():
            return
        self.flush()
        if self._transport.closed or not outbox.full or self.buffer.blocked_since is None:
            return
        behind = outbox.behind
        if behind >= outbox.limit // 2:
            self._on_behind(f"too slow for this feed: {behind / (1 << 20):.1f} MiB behind")

    def check_stall(self) -> None:
        """Judge the client: its queue is full and producers wait. Has it taken anything lately?

        Progress is a byte its socket accepted or a byte its TCP acknowledged
        (:meth:`SocketTransport.idle_since <server.core.transport.SocketTransport.idle_since>`): a
        client reading steadily shows it long before its socket is writable
        again, and a client that read while the IO thread was busy shows it at
        the next look: the kernel counted what it acknowledged meanwhile.
        """
        self.cancel()
        outbox = self.outbox
        outbox.judged()
        if not self._judging():
            return
        if self.buffer.blocked_since is None:
            return  # not blocked: the IO thread is just behind; the next partial flush looks again
        timeout = self._limits.stall_timeout
        idle = time.monotonic() - self._transport.idle_since()
        if idle < timeout:
            self._stall_timer = self._loop.call_later(min(timeout - idle, self._look_interval), self.check_stall)
            return
        self._on_stalled(f"client stalled: queue full and no bytes taken or acknowledged for {timeout:g} s")
