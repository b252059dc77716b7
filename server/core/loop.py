"""The IO loop: one thread that owns every socket, and ``post()``, the only way in.

This is the Python analogue of posting to a Boost.Asio strand, built the way
asyncio's selector loop builds ``call_soon_threadsafe``: a thread-safe queue of
callables plus a socketpair whose readable end wakes ``selectors.select()``.

Rules:

* Only the IO thread touches sockets, wsproto state and timers (checked on
  every IO-thread-only method when :mod:`server.core.affinity` is on).
* Any thread may call :meth:`IOLoop.post`; callables posted by one thread run
  on the IO thread in the order posted, each exactly once.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from . import affinity

logger = logging.getLogger(__name__)

Callback = Callable[[], object]  # what it returns is ignored
IOHandler = Callable[[int], None]
K = TypeVar("K", bound=Hashable)


class Timer:
    """A callback scheduled on the IO thread; :meth:`cancel` it from the IO thread."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callback) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Timers(Generic[K]):
    """Named one-shot timers on a loop (IO thread only): arming a name again replaces its timer."""

    def __init__(self, loop: IOLoop) -> None:
        self._loop = loop
        self._armed: dict[K, Timer] = {}

    def arm(self, name: K, delay: float, callback: Callback) -> None:
        self.cancel(name)

        def fire() -> None:
            del self._armed[name]
            callback()

        self._armed[name] = self._loop.call_later(delay, fire)

    def cancel(self, name: K) -> None:
        timer = self._armed.pop(name, None)
        if timer is not None:
            timer.cancel()

    def cancel_all(self) -> None:
        for timer in self._armed.values():
            timer.cancel()
        self._armed.clear()

    def __contains__(self, name: K) -> bool:
        return name in self._armed


class Waker:
    """Wakes the loop's ``select()`` from another thread.

    An eventfd where the platform has one (one 8-byte counter: a write to
    wake, one read to clear, no buffer to fill), else a socketpair, as
    asyncio's self-pipe.
    """

    def __init__(self) -> None:
        self._pair: tuple[socket.socket, socket.socket] | None = None
        if hasattr(os, "eventfd"):
            self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover - not Linux
            self._pair = socket.socketpair()
            for sock in self._pair:
                sock.setblocking(False)
            self._fd = self._pair[0].fileno()

    def fileno(self) -> int:
        return self._fd

    def wake(self) -> None:
        """Make the read end readable (any thread)."""
        try:
            if self._pair is None:
                os.eventfd_write(self._fd, 1)
            else:  # pragma: no cover - not Linux
                self._pair[1].send(b"\0")
        except OSError:  # full (a wake-up is pending anyway) or closed
            pass

    def clear(self) -> None:
        """Consume every wake-up so far (IO thread)."""
        try:
            if self._pair is None:
                os.eventfd_read(self._fd)
            else:  # pragma: no cover - not Linux
                while self._pair[0].recv(4096):
                    pass
        except (BlockingIOError, InterruptedError):
            pass

    def close(self) -> None:
        if self._pair is None:
            os.close(self._fd)
        else:  # pragma: no cover - not Linux
            for sock in self._pair:
                sock.close()


class IOLoop:
    """A selector loop run by exactly one thread."""

    def __init__(self, name: str = "wsrace-io") -> None:
        self.name = name
        self._selector = selectors.DefaultSelector()
        # deque.append / popleft are atomic: this is the thread-safe queue.
        self._posted: deque[Callback] = deque()
        self._wake_lock = threading.Lock()
        self._wake_pending = False
        self._waker = Waker()
        self._selector.register(self._waker.fileno(), selectors.EVENT_READ, self._on_wake)
        self._after_batch: list[Callback] = []  # IO thread only: e.g. socket flushes
        self._timers: list[tuple[float, int, Timer]] = []
        self._timer_seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._thread_id: int | None = None
        self._running = False
        self._closed = False
        self.turns = 0  # loop turns so far (IO thread): "once per turn" without a callback to reset it

    # -- any thread ------------------------------------------------------

    def post(self, callback: Callback) -> None:
        """Run ``callback`` on the IO thread. Safe from any thread; never blocks.

        This is the thread boundary of the whole server: every message, close
        request and broadcast crosses from a worker thread to the IO thread
        here, and nowhere else.
        """
        self._posted.append(callback)
        if threading.get_ident() != self._thread_id:
            self._wake()

    def _wake(self) -> None:
        # One wake-up byte per batch: later posts ride on the pending wake-up.
        if self._wake_pending:  # read without the lock: True means the IO thread has yet to clear it
            return  # in _on_wake, and it runs the posted callables (ours included) after clearing it
        with self._wake_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        self._waker.wake()

    def in_io_thread(self) -> bool:
        """True when called from the thread that runs this loop."""
        return threading.get_ident() == self._thread_id

    @property
    def thread_id(self) -> int | None:
        """Ident of the IO thread (None before it runs)."""
        return self._thread_id

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def start(self) -> threading.Thread:
        """Run the loop in a new thread and return it."""
        started = threading.Event()

        def main() -> None:
            self._thread_id = threading.get_ident()
            started.set()
            self.run()

        self._thread = threading.Thread(target=main, name=self.name, daemon=True)
        self._thread.start()
        started.wait()
        return self._thread

    def stop(self) -> None:
        """Ask the loop to return from :meth:`run` after the current batch."""
        self.post(self._set_stopped)

    def _set_stopped(self) -> None:
        self._running = False

    # -- IO thread only --------------------------------------------------

    def call_after_batch(self, callback: Callback) -> None:
        """Run ``callback`` once the posted callables of this turn have run (IO thread only).

        Connections use it to write once per batch: everything queued in this
        turn goes out in one ``sendmsg``, without a posted callable per socket.
        """
        if affinity.enabled:
            affinity.check_io_thread(self._thread_id, "IOLoop.call_after_batch()")
        self._after_batch.append(callback)

    def call_later(self, delay: float, callback: Callback) -> Timer:
        """Schedule ``callback`` after ``delay`` seconds (IO thread only)."""
        if affinity.enabled:
            affinity.check_io_thread(self._thread_id, "IOLoop.call_later()")
        timer = Timer(time.monotonic() + delay, callback)
        heapq.heappush(self._timers, (timer.when, next(self._timer_seq), timer))
        return timer

    def set_interest(self, sock: socket.socket, handler: IOHandler, read: bool, write: bool) -> None:
        """Watch ``sock`` for the given readiness; ``handler(mask)`` runs on it (IO thread only)."""
        if affinity.enabled:
            affinity.check_io_thread(self._thread_id, "IOLoop.set_interest()")
        events = (selectors.EVENT_READ if read else 0) | (selectors.EVENT_WRITE if write else 0)
        try:
            key = self._selector.get_key(sock)
        except (KeyError, ValueError):
            if events:
                self._selector.register(sock, events, handler)
            return
        if not events:
            self._selector.unregister(sock)
        elif key.events != events or key.data is not handler:
            self._selector.modify(sock, events, handler)

    def remove(self, sock: socket.socket) -> None:
        """Stop watching ``sock`` (IO thread only); harmless if it was not watched."""
        if affinity.enabled:
            affinity.check_io_thread(self._thread_id, "IOLoop.remove()")
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def run(self) -> None:
        """Run until :meth:`stop`. Must be called by the thread that owns the loop."""
        self._thread_id = threading.get_ident()
        self._running = True
        try:
            while self._running:
                self._run_once()
        finally:
            self._running = False

    def _run_once(self) -> None:
        self.turns += 1
        timeout: float | None = None
        if self._posted or self._after_batch:
            timeout = 0
        elif self._timers:
            timeout = max(0.0, self._timers[0][0] - time.monotonic())
        # Each callback runs in a try of its own: one bad callback must not take down every connection.
        # (Written out in each loop rather than through _guarded: a call less per callback, four per message.)
        for key, mask in self._selector.select(timeout):
            try:
                key.data(mask)
            except Exception:
                logger.exception("unhandled error in IO-thread callback %r", key.data)
        if self._timers:
            self._run_due_timers()
        if self._posted:
            self._run_posted()
        while self._after_batch:
            batch, self._after_batch = self._after_batch, []
            for callback in batch:
                try:
                    callback()
                except Exception:
                    logger.exception("unhandled error in IO-thread callback %r", callback)

    def _run_posted(self) -> None:
        # Run only what is queued now; callables posted meanwhile run next turn,
        # so a busy producer cannot starve socket IO.
        posted = self._posted
        for _ in range(len(posted)):
            callback = posted.popleft()
            try:
                callback()
            except Exception:
                logger.exception("unhandled error in IO-thread callback %r", callback)

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._guarded(timer.callback)

    def _on_wake(self, mask: int) -> None:
        # Clear the flag before the queue is drained, so a post that races with
        # the drain always leaves a wake-up behind.
        self._waker.clear()
        with self._wake_lock:
            self._wake_pending = False

    @staticmethod
    def _guarded(callback: Callable[..., object], *args: int) -> None:
        try:
            callback(*args)
        except Exception:
            # One bad callback must not take down every connection.
            logger.exception("unhandled error in IO-thread callback %r", callback)

    def close(self) -> None:
        """Release the selector and wake-up sockets once the loop has stopped."""
        if self._closed:
            return
        self._closed = True
        self._selector.close()
        self._waker.close()
