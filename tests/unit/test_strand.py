"""Strand: one job at a time, in submission order, on a shared pool; a busy strand yields its worker."""

from __future__ import annotations

import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from server.connections.strand import Strand

pytestmark = pytest.mark.timeout(30)


def test_jobs_run_in_order_and_never_overlap() -> None:
    done: list[int] = []
    running = [0]
    overlaps = [0]
    finished = threading.Event()
    with ThreadPoolExecutor(8) as pool:
        strand = Strand(pool)

        def job(i: int) -> None:
            running[0] += 1
            if running[0] > 1:
                overlaps[0] += 1
            time.sleep(0.0002 * (i % 3))  # uneven work: a plain pool would finish these out of order
            done.append(i)
            running[0] -= 1
            if i == 299:
                finished.set()

        for i in range(300):
            strand.submit(functools.partial(job, i))
        assert finished.wait(20)
    assert overlaps[0] == 0
    assert done == list(range(300))


def test_two_strands_share_the_pool_and_run_side_by_side() -> None:
    barrier = threading.Barrier(2, timeout=5)
    with ThreadPoolExecutor(2) as pool:
        a, b = Strand(pool), Strand(pool)
        results: list[str] = []
        a.submit(lambda: results.append("a" if barrier.wait() >= 0 else "?"))
        b.submit(lambda: results.append("b" if barrier.wait() >= 0 else "?"))
    assert sorted(results) == ["a", "b"]  # each waited for the other: they ran at the same time


def test_a_busy_strand_gives_its_worker_back() -> None:
    """With one worker, a strand with a long queue must let another strand's job in between batches."""
    order: list[str] = []
    with ThreadPoolExecutor(1) as pool:
        busy, other = Strand(pool, batch=4), Strand(pool)
        gate = threading.Event()
        busy.submit(gate.wait)  # holds the only worker until everything is queued
        for i in range(20):
            busy.submit(functools.partial(order.append, f"busy{i}"))
        other.submit(lambda: order.append("other"))
        finished = threading.Event()
        busy.submit(finished.set)
        gate.set()
        assert finished.wait(5)
    assert "other" in order
    assert order.index("other") < order.index("busy19"), order


def test_a_raising_job_does_not_stop_the_strand(caplog: pytest.LogCaptureFixture) -> None:
    done = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        strand = Strand(pool)
        strand.submit(lambda: 1 / 0)  # type: ignore[func-returns-value]
        strand.submit(done.set)
        assert done.wait(5)
    assert "strand job" in caplog.text


def test_submit_after_shutdown_raises() -> None:
    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    strand = Strand(pool)
    with pytest.raises(RuntimeError):
        strand.submit(lambda: None)
    with pytest.raises(RuntimeError):  # not stuck as "scheduled": it tries (and fails) again
        strand.submit(lambda: None)
