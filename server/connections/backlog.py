"""The server-wide send backlog: what all producers together have posted and the IO thread has not taken yet."""

from __future__ import annotations

import threading


class Backlog:
    """Bytes posted by producers and not yet taken by the IO thread, server-wide.

    Over ``limit``, producers wait until the IO thread catches up: when the
    server itself is the bottleneck it slows its producers down, and no client
    pays for it. The IO thread never waits here.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lock = threading.Lock()  # also the lock of every Outbox on this backlog
        self._below = threading.Condition(self.lock)
        self._waiters = 0
        self.bytes = 0
        self.peak = 0
        self.waits = 0  # times a producer had to wait

    def add(self, size: int, wait: bool, timeout: float | None = None) -> None:
        with self.lock:
            if wait and self.bytes >= self.limit:
                self.wait_below(timeout)
            self.add_locked(size)

    def remove(self, size: int) -> None:
        with self.lock:
            self.remove_locked(size)

    # -- with the lock held ------------------------------------------------

    def add_locked(self, size: int) -> None:
        self.bytes += size
        if self.bytes > self.peak:
            self.peak = self.bytes

    def remove_locked(self, size: int) -> None:
        self.bytes -= size
        if self._waiters and self.bytes < self.limit:
            self._below.notify_all()

    def wait_below(self, timeout: float | None) -> None:
        """Wait (lock held; released meanwhile) until the backlog is below its limit."""
        self.waits += 1
        self._waiters += 1
        try:
            if not self._below.wait_for(lambda: self.bytes < self.limit, timeout):
                raise TimeoutError(f"the server's send backlog stayed over {self.limit} bytes for {timeout} s")
        finally:
            self._waiters -= 1
