"""IOLoop: post() from many threads, timers, thread identity."""

from __future__ import annotations

import threading

import pytest

from server.core.loop import IOLoop

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def loop():
    lp = IOLoop(name="wsrace-test-io")
    lp.start()
    yield lp
    lp.stop()
    assert lp.thread is not None
    lp.thread.join(5)
    assert not lp.thread.is_alive()
    lp.close()


def test_posts_from_many_threads_run_once_in_order_on_io_thread(loop: IOLoop) -> None:
    threads, per_thread = 8, 10_000
    seen: dict[int, list[int]] = {t: [] for t in range(threads)}
    wrong_thread: list[str] = []
    done = threading.Event()
    expected = threads * per_thread
    counter = [0]

    def make(t: int, i: int):
        def cb() -> None:
            if not loop.in_io_thread():
                wrong_thread.append(threading.current_thread().name)
            seen[t].append(i)
            counter[0] += 1
            if counter[0] == expected:
                done.set()

        return cb

    def producer(t: int) -> None:
        for i in range(per_thread):
            loop.post(make(t, i))

    workers = [threading.Thread(target=producer, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert done.wait(30), f"only {counter[0]} of {expected} callbacks ran"
    # Nothing may run twice: wait two turns of the loop, not a while. The first marker runs after every
    # callback posted before it (one FIFO); the one it posts runs after anything queued meanwhile.
    drained = threading.Event()
    loop.post(lambda: loop.post(drained.set))
    assert drained.wait(5), "the loop stopped running posted callbacks"
    assert counter[0] == expected
    assert not wrong_thread
    for t in range(threads):
        assert seen[t] == list(range(per_thread)), f"thread {t}: callbacks out of order or repeated"


def test_in_io_thread_is_false_elsewhere(loop: IOLoop) -> None:
    assert not loop.in_io_thread()
    answer: list[bool] = []
    ev = threading.Event()

    def answer_it() -> None:
        answer.append(loop.in_io_thread())
        ev.set()

    loop.post(answer_it)
    assert ev.wait(5)
    assert answer == [True]


def test_timers_fire_in_order_and_cancel(loop: IOLoop) -> None:
    fired: list[str] = []
    ev = threading.Event()

    def schedule() -> None:
        def late() -> None:
            fired.append("late")
            ev.set()

        loop.call_later(0.10, late)
        loop.call_later(0.02, lambda: fired.append("early"))
        t = loop.call_later(0.05, lambda: fired.append("cancelled"))
        t.cancel()

    loop.post(schedule)
    assert ev.wait(5)
    assert fired == ["early", "late"]


def test_a_failing_callback_does_not_stop_the_loop(loop: IOLoop, caplog) -> None:
    ev = threading.Event()

    def boom() -> None:
        raise ValueError("boom")

    loop.post(boom)
    loop.post(ev.set)
    assert ev.wait(5)
    assert any("boom" in r.exc_text for r in caplog.records if r.exc_text)
    caplog.clear()  # the error was expected here
