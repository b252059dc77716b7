"""One connection's outgoing queue and the flow control in front of it.

Two halves share one lock:

* **producers** (any thread) call :meth:`Outbox.put`: it reserves the
  message's bytes and appends it to a pending queue; the first message of a
  batch asks the IO thread (``schedule``) to take them all, so a burst of
  sends costs one posted callable and one wake-up, not one per message;
* the **IO thread** takes the pending messages (:meth:`take`) into the
  connection's :class:`~server.core.sendbuffer.SendBuffer` (whose docstring walks
  the whole send path) and gives their reservation back (:meth:`release`)
  once the socket has taken them.

The rules, modelled on asyncio's high-water flow control:

* **Room**: a message is accepted while the queue holds fewer than ``limit``
  bytes; it may overshoot the limit by its own size, so a message larger than
  the limit is never refused for its size alone (timing cannot change that).
* **Full**: a producer that finds no room waits for it (policy ``close``) or
  its message is dropped and counted (policy ``drop``). A producer on the IO
  thread never waits: its message is queued over the limit.
* **Point-to-point** (:meth:`Outbox.put`): the producer waits while its
  client drains, however slowly. The client is judged on the IO thread by
  what its TCP connection really takes: it is stalled only when, with its
  queue full, the socket has accepted nothing and the client's TCP has
  acknowledged nothing for ``stall_timeout`` (see
  :meth:`Writer.check_stall <server.connections.writer.Writer.check_stall>`).
* **Fan-out** (``put(..., fanout_wait=W)``, what ``broadcast`` does for each
  member): a member with a full queue holds producers until ``W`` seconds
  after its socket last took bytes; if it is still a full queue behind the
  feed then, it gets the overflow action (drop, or a 1008 close that says how
  far behind it was) — one slow member never paces the others.
* Bytes that producers have posted but the IO thread has not processed yet
  make producers wait; they never make a client look slow.

The server-wide :class:`Backlog` bounds what all producers together have
posted and the IO thread has not taken yet.

**One lock for the server.** Every outbox locks with its backlog's lock, so
a :meth:`Outbox.put` is one short critical section (room, reservation,
backlog, pending queue and the batch flag together) and
:meth:`Outbox.put_shared` queues one message to many clients under a single
acquisition. The sections are a few attribute updates each; waiting
(``Condition.wait``) releases the lock.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from ..errors import ConnectionClosed
from ..limits import OverflowPolicy
from ..protocol.frames import OutMessage
from .backlog import Backlog


class Outbox:
    """The producers' queue of one connection, and the flow control in front of its send buffer."""

    def __init__(
        self,
        limit: int,
        policy: OverflowPolicy,
        schedule: Callable[[], None],
        on_full: Callable[[], None],
        on_drop: Callable[[], None],
        backlog: Backlog,
        in_io_thread: Callable[[], bool],
        on_behind: Callable[[], None] = lambda: None,
        blocked_since: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.limit = limit
        self.policy = policy
        self._schedule = schedule  # ask the IO thread to take() the pending messages
        self._on_full = on_full  # ask the IO thread to judge the client (a producer is about to wait)
        self._on_drop = on_drop  # count a dropped message (called with the lock held)
        self._on_behind = on_behind  # a fan-out waited past its bound: ask the IO thread to judge (lock held)
        self.backlog = backlog
        self._in_io_thread = in_io_thread
        self._blocked_since = blocked_since  # when the socket last started refusing bytes (the send buffer's)

        # Shared: guarded by lock (the backlog's: one lock for the server).
        self.lock = backlog.lock
        self._room: threading.Condition | None = None  # made by the first producer to wait (memory per client)
        self._waiters = 0
        self._queued = 0  # reserved: pending + frames not yet accepted by the socket
        # A deque, not a list: with a list, tests/e2e/test_faults.py's bound on producer waits failed far
        # more often (GIL hand-offs land elsewhere: list.append never checks for a switch request).
        self._pending: deque[OutMessage] = deque()
        self._pending_bytes = 0  # of _pending, counted in the backlog
        self._scheduled = False
        self._batch_since = 0.0  # when the first message of the pending batch was queued (time.monotonic())
        self.taken_since = 0.0  # that time for the batch the last take() returned
        self._full_reported = False
        self._behind_reported = False
        self._closed: tuple[int, str] | None = None  # (code, reason) once closing
        self.dropped = 0
        self.waits = 0  # times a producer found the queue full and waited

    # -- any thread ------------------------------------------------------

    @property
    def queued(self) -> int:
        """Bytes reserved by messages not yet accepted by the socket."""
        return self._queued

    @property
    def full(self) -> bool:
        return self._queued >= self.limit

    def put(self, out: OutMessage, timeout: float | None = None, paced: bool = False, fanout_wait: float | None = None) -> bool:
        """Queue ``out``; False if the ``drop`` policy discarded it.

        Waits while the queue is full (unless on the IO thread, or the policy
        is ``drop`` and not ``paced``). ``paced`` waits without asking for the
        client to be judged. ``fanout_wait``: this is one member of a fan-out —
        wait at most that long, then close the client as too slow for the feed
        (:meth:`_wait_for_feed`). Raises :class:`ConnectionClosed` once the
        connection is closing, :class:`TimeoutError` after ``timeout``.
        """
        size = out.size
        backlog = self.backlog
        with self.lock:
            if self._closed is not None:
                raise ConnectionClosed(*self._closed)
            if self._queued >= self.limit and not self._in_io_thread():
                if self.policy is OverflowPolicy.DROP and not paced:
                    self.dropped += 1
                    self._on_drop()
                    return False
                if fanout_wait is not None and not paced:
                    self._wait_for_feed(fanout_wait)
                else:
                    self._wait_for_room(size, timeout, report=not paced)
                if self._closed is not None:
                    raise ConnectionClosed(*self._closed)
            self._queued += size
            if backlog.bytes >= backlog.limit and not self._in_io_thread():
                try:
                    backlog.wait_below(timeout)
                except TimeoutError:
                    self._release(size)
                    raise
            backlog.bytes += size  # Backlog.add_locked, inline
            if backlog.bytes > backlog.peak:
                backlog.peak = backlog.bytes
            # The enqueue; put_shared() does the same for each target (tests/unit/test_put_shared.py holds them equal).
            self._pending.append(out)
            self._pending_bytes += size
            if self._scheduled:
                return True
            self._scheduled = True
            self._batch_since = time.monotonic()
        self._schedule()
        return True

    def reserve_now(self, size: int) -> bool:
        """IO thread: count ``size`` bytes the writer frames at once, past the queue (:meth:`Writer.write_now
        <server.connections.writer.Writer.write_now>`). False if the connection is closing or messages wait
        here (they go first)."""
        with self.lock:
            if self._closed is not None or self._pending:
                return False
            self._queued += size
            return True

    def _wait_for_room(self, size: int, timeout: float | None, report: bool) -> None:
        if report and not self._full_reported:
            self._full_reported = True
            self._on_full()
        with self._waiting() as room:
            if not room.wait_for(lambda: self._closed is not None or self._queued < self.limit, timeout):
                raise TimeoutError(f"no room for {size} bytes in the client's queue within {timeout} s")

    @contextlib.contextmanager
    def _waiting(self) -> Iterator[threading.Condition]:
        """A producer waits for room (lock held): counted, and woken by :meth:`_release` and :meth:`shut`."""
        self.waits += 1
        self._waiters += 1
        try:
            if self._room is None:
                self._room = threading.Condition(self.lock)
            yield self._room
        finally:
            self._waiters -= 1

    def _wait_for_feed(self, wait: float) -> None:
        """A fan-out member's full queue: wait until ``wait`` after its socket last took bytes, then report it (lock held).

        The grace runs from when the socket started refusing bytes
        (``blocked_since``), not from when a producer found the queue full, so
        a member whose socket has refused everything that long already is
        reported at once. It is reported (``on_behind``, once per judgement)
        when at least half its queue is frames the IO thread has offered its
        socket; the IO thread writes what the socket takes now and closes it
        if it is still that far behind (:meth:`Writer.check_behind
        <server.connections.writer.Writer.check_behind>`), which wakes this wait. A queue
        full of messages the IO thread has not taken yet is the server's
        backlog, not the member's: that is never reported.
        """
        with self._waiting() as room:
            now = time.monotonic()
            since = self._blocked_since()
            deadline = now + wait if since is None else min(now + wait, since + wait)
            while self._closed is None and self._queued >= self.limit:
                left = deadline - time.monotonic()
                if left > 0:
                    room.wait(left)
                    continue
                if self._blocked_since() is not None and self.behind >= self.limit // 2 and not self._behind_reported:
                    self._behind_reported = True
                    self._on_behind()
                deadline = time.monotonic() + 0.01  # look again soon: the IO thread answers, or it was just behind

    @property
    def behind(self) -> int:
        """Bytes the IO thread has taken into frames for the socket and the socket has not accepted yet."""
        return self._queued - self._pending_bytes

    def shut(self, code: int, reason: str) -> bool:
        """Refuse every later :meth:`put` with ``ConnectionClosed(code)``; wake waiters. True the first time."""
        with self.lock:
            if self._closed is not None:
                return False
            self._closed = (code, reason)
            if self._room is not None:
                self._room.notify_all()
            return True

    @property
    def closed(self) -> tuple[int, str] | None:
        """(code, reason) once the connection is closing."""
        return self._closed

    # -- IO thread only --------------------------------------------------

    def take(self) -> deque[OutMessage]:
        """The messages producers put since the last call, in order (the first queued at :attr:`taken_since`)."""
        with self.lock:
            pending, self._pending = self._pending, deque()
            self._scheduled = False
            self.taken_since = self._batch_since
            if self._pending_bytes:
                self.backlog.remove_locked(self._pending_bytes)
                self._pending_bytes = 0
        return pending

    @property
    def pending_since(self) -> float | None:
        """When the oldest message the IO thread has not taken yet was queued (None: none waits). Any thread."""
        return self._batch_since if self._scheduled else None

    def judged(self) -> None:
        """The IO thread has looked at a full queue: the next producer to wait reports again."""
        with self.lock:
            self._full_reported = False

    def judged_behind(self) -> None:
        """The IO thread has judged a fan-out member: the next fan-out to wait past its bound reports again."""
        with self.lock:
            self._behind_reported = False

    def release(self, size: int) -> None:
        """Give back ``size`` reserved bytes (sent, or dropped unsent)."""
        with self.lock:
            self._release(size)

    def _release(self, size: int) -> None:
        self._queued -= size
        if self._waiters and self._queued < self.limit:
            assert self._room is not None
            self._room.notify_all()

    @staticmethod
    def put_shared(out: OutMessage, outboxes: Iterator[Outbox]) -> tuple[Outbox | None, int, int]:
        """Queue ``out`` to the next outboxes under one acquisition of their shared lock, while each has room.

        The fast path of a broadcast: the same :class:`OutMessage` goes into each
        pending queue, with the reservation and backlog accounting of
        :meth:`Outbox.put`. It stops at the first outbox that needs
        :meth:`Outbox.put`'s slow path — a full queue, the backlog at its limit,
        an outbox on another lock — and returns it, so the caller sends to that
        one with :meth:`Outbox.put` (which waits, drops or judges as the policy
        says) and calls this again with the same iterator for the rest. Closing
        outboxes are skipped and counted. Returns ``(that outbox or None when the
        iterator is exhausted, queued, closed)``.

        The class's own code working on many of its instances at once (as
        ``__eq__`` reads the other operand): it is the per-target loop of every
        broadcast, and a method call per target (an ``Outbox.offer_locked``,
        tried) cost 130 ns a target, 12 % of the CPU per delivery of bench
        workload A. Its accounting is held equal to :meth:`Outbox.put`'s by
        tests/unit/test_put_shared.py and the mutants.
        """
        first = next(outboxes, None)
        if first is None:
            return None, 0, 0
        lock, backlog = first.lock, first.backlog
        size = out.size
        schedules: list[Callable[[], None]] = []
        now = time.monotonic()  # a batch started here is timed from now
        blocked: Outbox | None = None
        queued = closed = 0
        with lock:
            room = backlog.limit - backlog.bytes  # the backlog's: Outbox.put waits at its limit
            for outbox in itertools.chain((first,), outboxes):
                if outbox.lock is not lock:
                    blocked = outbox
                    break
                if outbox._closed is not None:
                    closed += 1
                    continue
                if outbox._queued >= outbox.limit or queued * size >= room:
                    blocked = outbox
                    break
                outbox._queued += size
                outbox._pending.append(out)
                outbox._pending_bytes += size
                queued += 1
                if not outbox._scheduled:
                    outbox._scheduled = True
                    outbox._batch_since = now
                    schedules.append(outbox._schedule)
            if queued:
                backlog.add_locked(queued * size)
        for schedule in schedules:
            schedule()
        return blocked, queued, closed

