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
