"""WorkerPool (server/connections/pool.py): the handlers' threads, as an Executor, with real threads and events."""

from __future__ import annotations

import logging
import threading

import pytest

from server.connections.pool import WorkerPool

pytestmark = pytest.mark.timeout(20)


def test_run_and_submit_run_on_named_workers_and_futures_carry_results() -> None:
    pool = WorkerPool(2, thread_name_prefix="t-pool")
    names: list[str] = []
    done = threading.Event()
    def job() -> None:
        names.append(threading.current_thread().name)
        done.set()

    pool.run(job)
    assert done.wait(5) and names[0].startswith("t-pool_")
    assert pool.submit(pow, 2, 10).result(5) == 1024
    assert pool.submit(int, "ff", base=16).result(5) == 255
    with pytest.raises(ZeroDivisionError):
        pool.submit(lambda: 1 / 0).result(5)
    pool.shutdown()


def test_one_worker_runs_jobs_in_the_order_queued() -> None:
    pool = WorkerPool(1)
    seen: list[int] = []
    for i in range(200):
        pool.run(seen.append, i)
    pool.shutdown(wait=True)
    assert seen == list(range(200))


def test_an_idle_worker_is_reused_and_a_busy_one_gets_company_up_to_the_limit() -> None:
    pool = WorkerPool(3)
    for i in range(20):  # one at a time: the worker that finished takes the next
        assert pool.submit(lambda i=i: i).result(5) == i
    assert pool.thread_count == 1
    release = threading.Event()
    started = threading.Semaphore(0)

    def block() -> None:
        started.release()
        release.wait(10)

    for _ in range(3):  # three jobs that hold their workers: two more threads start
        pool.run(block)
    for _ in range(3):
        assert started.acquire(timeout=5)
    late = pool.submit(lambda: "late")  # no worker free and none may start: it waits in the queue
    assert pool.thread_count == 3 and not late.done()
    release.set()
    assert late.result(5) == "late"
    pool.shutdown()


def test_a_job_that_blocks_does_not_starve_the_next() -> None:
    pool = WorkerPool(2)
    release = threading.Event()
    pool.run(release.wait, 10)
    assert pool.submit(lambda: "ran").result(5) == "ran", "a second worker must take it"
    release.set()
    pool.shutdown()


def test_a_failing_job_is_logged_and_its_worker_lives_on(caplog: pytest.LogCaptureFixture) -> None:
    pool = WorkerPool(1)
    with caplog.at_level(logging.ERROR, logger="server.connections.pool"):
        pool.run(lambda: 1 / 0)
        assert pool.submit(lambda: "alive").result(5) == "alive"
    assert "unhandled error in a worker job" in caplog.text and "ZeroDivisionError" in caplog.text
    pool.shutdown()


def test_shutdown_runs_what_is_queued_or_cancels_it_and_refuses_new_work() -> None:
    pool = WorkerPool(1)
    release = threading.Event()
    pool.run(release.wait, 10)
    queued = [pool.submit(lambda i=i: i) for i in range(5)]
    release.set()
    pool.shutdown(wait=True)
    assert [f.result(0) for f in queued] == list(range(5))
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.run(print)

    pool = WorkerPool(1)
    release = threading.Event()
    started = threading.Event()
    def hold() -> None:
        started.set()
        release.wait(10)

    pool.run(hold)
    assert started.wait(5)
    queued = [pool.submit(lambda: None) for _ in range(3)]
    pool.shutdown(wait=False, cancel_futures=True)  # while the worker is still busy: nothing queued can start
    assert all(f.cancelled() for f in queued)
    release.set()
    pool.shutdown(wait=True)


def test_jobs_queued_in_a_burst_behind_one_that_blocks_are_taken_by_other_workers() -> None:
    # One put wakes one worker; the rest of a burst rides on it. If the job it takes blocks, the worker must call
    # another before running it (the burst is queued while this thread holds the GIL: no worker has taken anything).
    pool = WorkerPool(3)
    release = threading.Event()
    started = threading.Semaphore(0)

    def block() -> None:
        started.release()
        release.wait(10)

    for _ in range(3):  # three workers started, then idle
        pool.run(block)
    for _ in range(3):
        assert started.acquire(timeout=5)
    release.set()
    while len(pool._sleeping) < 3:  # all three asleep again
        threading.Event().wait(0.01)
    release.clear()
    pool.run(block)
    after = [pool.submit(lambda i=i: i) for i in range(5)]
    assert [f.result(5) for f in after] == list(range(5)), "the burst waited behind the blocked job"
    release.set()
    pool.shutdown()


def test_idle_workers_sleep_and_none_is_left_counted_as_looking() -> None:
    pool = WorkerPool(4)
    for round_ in range(50):
        futures = [pool.submit(lambda i=i: i) for i in range(round_ % 7 + 1)]
        assert [f.result(5) for f in futures] == list(range(round_ % 7 + 1))
    deadline = threading.Event()
    for _ in range(500):
        with pool._lock:
            if len(pool._sleeping) == pool.thread_count:
                break
        deadline.wait(0.01)
    with pool._lock:  # every started worker asleep, none counted as on its way: the next put wakes one
        assert len(pool._sleeping) == pool.thread_count and pool._looking == 0
    assert pool.submit(lambda: "woken").result(5) == "woken"
    pool.shutdown()
