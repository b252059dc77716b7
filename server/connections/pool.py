"""The worker threads handlers run on: an :class:`~concurrent.futures.Executor` with a hand-off that costs little.

Every message a pool handler gets crosses from the IO thread to a worker
here, so the hand-off is built for that path:

* No ``Future`` per job unless asked for: ``ThreadPoolExecutor.submit`` pays a
  ``Future`` (with its ``Condition``), a work item and two operations on a
  Python-level ``Semaphore`` per job; the server never reads those futures.
  :meth:`WorkerPool.run` queues a bare callable; :meth:`WorkerPool.submit`
  still returns a ``Future``, so the pool is a drop-in ``Executor``.
* One waiting worker woken per job, and only when no worker is already on
  its way to the queue. A ``queue.SimpleQueue`` shared by idle workers wakes
  them in a chain (each ``get`` that takes an item hands its lock to the next
  waiter, which finds the queue empty and sleeps again): two context switches
  and a GIL hand-over wasted per message. Here each idle worker sleeps on its
  own lock and is woken alone (in the order they went idle: with 8 connections
  that cost fewer context switches per message than waking the most recently
  idle first), and a worker that finishes a job looks at the queue before
  sleeping.
* A job never waits behind a busy worker while another could run it: a worker
  that takes a job and sees more queued wakes (or starts) one more — so a
  handler that blocks does not hold up the messages queued behind it.

Threads start on demand, as ``ThreadPoolExecutor``'s do, up to ``max_workers``.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from functools import partial
from typing import Any, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")
_Job = tuple[Callable[..., object], tuple[Any, ...], "Future[Any] | None"]


class WorkerPool(Executor):
    """Up to ``max_workers`` threads running jobs in the order queued (any free worker takes the next)."""

    def __init__(self, max_workers: int = 8, thread_name_prefix: str = "wsrace-worker") -> None:
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self.max_workers = max_workers
        self._prefix = thread_name_prefix
        self._lock = threading.Lock()  # guards everything below
        self._jobs: deque[_Job] = deque()
        self._sleeping: deque[threading.Lock] = deque()  # idle workers, each blocked on its own (held) lock
        self._looking = 0  # workers woken, started or just done that will look at the queue before sleeping
        self._threads: list[threading.Thread] = []
        self._shutdown = False

    @property
    def thread_count(self) -> int:
        """Worker threads started so far (at most ``max_workers``)."""
        return len(self._threads)

    def run(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on a worker; no ``Future``: an exception is logged. Any thread.

        Raises RuntimeError after :meth:`shutdown`.
        """
        self._put((fn, args, None))

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """As ``ThreadPoolExecutor.submit``: the returned future has ``fn``'s result or exception."""
        future: Future[T] = Future()
        self._put((partial(fn, *args, **kwargs), (), future) if kwargs else (fn, args, future))
        return future

    def _put(self, job: _Job) -> None:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new work after shutdown")
            self._jobs.append(job)
            if self._looking:
                return  # a worker will look at the queue before it sleeps: no wake-up needed
            wake = self._call_one_locked()
        if wake is not None:
            wake()

    def _call_one_locked(self) -> Callable[[], None] | None:
        """Get one more worker looking at the queue (lock held): what to call, after the lock, to wake or start it."""
        if self._sleeping:
            self._looking += 1
            return self._sleeping.popleft().release
        if len(self._threads) < self.max_workers:
            self._looking += 1
            thread = threading.Thread(target=self._work, name=f"{self._prefix}_{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            return thread.start
        return None  # every worker is busy: the first to finish takes the job

    def _work(self) -> None:
        lock, jobs = self._lock, self._jobs
        bed = threading.Lock()
        bed.acquire()
        while True:  # this worker is counted in _looking here
            with lock:
                self._looking -= 1  # this look is the one counted
                if not jobs:
                    if self._shutdown:
                        return
                    self._sleeping.append(bed)
                    job = wake = None
                else:
                    job = jobs.popleft()
                    # More queued and no one else coming: this job may block, so call one more worker.
                    wake = self._call_one_locked() if jobs and not self._looking else None
            if job is None:
                bed.acquire()  # until a _put (or shutdown) releases it, counting this worker as looking again
                continue
            if wake is not None:
                wake()
            self._run_job(job)
            del job

    def _run_job(self, job: _Job) -> None:
        fn, args, future = job
        publish: tuple[Callable[[Any], None], Any] | None = None
        if future is None:
            try:
                fn(*args)
            except BaseException:
                logger.exception("unhandled error in a worker job %r", fn)
        elif future.set_running_or_notify_cancel():
            try:
                publish = (future.set_result, fn(*args))
            except BaseException as exc:
                publish = (future.set_exception, exc)
        with self._lock:  # looking before the result is out: whoever waited for it and submits again finds this worker
            self._looking += 1
        if publish is not None:
            publish[0](publish[1])

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new jobs; queued ones still run unless ``cancel_futures`` (then they are dropped, futures cancelled)."""
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
            cancelled = list(self._jobs) if cancel_futures else []
            if cancel_futures:
                self._jobs.clear()
            sleeping, self._sleeping = self._sleeping, deque()
            self._looking += len(sleeping)
        for _, _, future in cancelled:
            if future is not None:
                future.cancel()
        for bed in sleeping:
            bed.release()
        if wait:
            me = threading.current_thread()
            for thread in threads:
                if thread is not me:
                    thread.join()
