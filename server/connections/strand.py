"""A strand: callables run one at a time, in the order submitted, on a shared executor.

Boost.Asio's strand, over :class:`concurrent.futures.Executor`: one connection's
messages are handled in order by whichever pool thread is free, without a
thread per connection and without two of them running at once. A busy strand
gives its worker back after ``batch`` callables, so one chatty connection
cannot hold a pool thread while other connections wait.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

logger = logging.getLogger(__name__)

Job = Callable[[], object]  # what it returns is ignored


def hand_off(executor: Executor) -> Callable[[Job], object]:
    """How to start a job on ``executor`` with no one waiting for its result: ``WorkerPool.run`` (no Future), else ``submit``."""
    return getattr(executor, "run", None) or executor.submit


class Strand:
    """Serialises jobs on ``executor``. :meth:`submit` is safe from any thread."""

    def __init__(self, executor: Executor, batch: int = 16) -> None:
        self._hand_off = hand_off(executor)
        self._batch = batch
        self._lock = threading.Lock()
        self._jobs: deque[Job] = deque()
        self._scheduled = False  # a _run is queued on or running in the executor

    def submit(self, job: Job) -> None:
        """Run ``job`` after every job submitted before it, never beside one.

        Raises :class:`RuntimeError` if the executor is shut down (and the
        strand was idle, so nothing else would run the job).
        """
        with self._lock:
            self._jobs.append(job)
            if self._scheduled:
                return
            self._scheduled = True
        self._schedule()

    def _schedule(self) -> None:
        try:
            self._hand_off(self._run)
        except RuntimeError:
            with self._lock:
                self._scheduled = False
                self._jobs.clear()
            raise

    def _run(self) -> None:
        for _ in range(self._batch):
            with self._lock:
                if not self._jobs:
                    self._scheduled = False
                    return
                job = self._jobs.popleft()
            try:
                job()
            except Exception:  # jobs handle their own errors; this keeps the strand alive regardless
                logger.exception("strand job %r raised", job)
        try:
            self._schedule()  # more to do: queue behind the other connections' work
        except RuntimeError:
            pass  # shutting down: the rest is dropped, as the executor drops queued work
