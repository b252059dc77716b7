"""server/admission.py without a server: slots, per-IP counts, accept backoff and handshake pressure.

The test is the IO thread: :class:`FakeLoop` keeps timers for the test to fire, the clock is
``admission.time.monotonic`` set by hand, connections are stand-ins that record the 408 they are
answered, and refused sockets are one end of a socketpair whose other end shows the answer.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest

from server import admission
from server.admission import Admission
from server.connections.handle import State
from server.core.loop import Timer
from server.limits import Limits
from server.protocol.handshake import HttpError
from server.stats import Stats

pytestmark = pytest.mark.timeout(10)


class FakeLoop:
    def __init__(self) -> None:
        self.timers: list[tuple[float, Timer]] = []
        self.watching = True  # the listener's read interest

    def call_later(self, delay: float, callback: object) -> Timer:
        timer = Timer(delay, callback)  # type: ignore[arg-type]
        self.timers.append((delay, timer))
        return timer

    def remove(self, sock: object) -> None:
        self.watching = False

    def set_interest(self, sock: object, callback: object, read: bool, write: bool) -> None:
        self.watching = read

    def fire(self, delay: float) -> int:
        """Run the live timers armed with ``delay``; how many ran."""
        due = [t for d, t in self.timers if d == delay and not t.cancelled]
        self.timers = [(d, t) for d, t in self.timers if t not in due]
        for timer in due:
            timer.callback()
        return len(due)


class Conn:
    def __init__(self) -> None:
        self.state = State.HANDSHAKE
        self.rejected: list[int] = []

    def reject_now(self, error: HttpError) -> None:
        self.rejected.append(error.status)
        self.state = State.CLOSED


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(admission.time, "monotonic", clock)
    return clock


def make(**limits: object) -> tuple[Any, FakeLoop, Stats]:  # Any: it is given stand-in connections
    loop, stats = FakeLoop(), Stats()
    adm = Admission(loop, socket.socket(), lambda fd: None, Limits(ping_interval=None, **limits), stats)  # type: ignore[arg-type]
    return adm, loop, stats


def refused_with(adm: Any, addr: tuple[str, int]) -> bytes | None:
    """admit() a fresh socket; None if admitted, else what the client end received before the close."""
    ours, theirs = socket.socketpair()
    with theirs:
        if adm.admit(ours, addr):
            ours.close()
            return None
        theirs.settimeout(5)
        return theirs.recv(65536)


def test_the_connection_limit_answers_503_and_a_closed_slot_is_free_again(clock: Clock) -> None:
    adm, _, stats = make(max_connections=2)
    conns = [Conn(), Conn()]
    for i, conn in enumerate(conns):
        assert refused_with(adm, (f"10.0.0.{i}", 1)) is None
        adm.opened(conn, (f"10.0.0.{i}", 1))
        conn.state = State.OPEN  # its handshake done (max_handshakes is half the limit: 1 here)
        stats.opened += 1
    answer = refused_with(adm, ("10.0.0.9", 1))
    assert answer is not None and answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After:" in answer
    assert stats.rejected_busy == 1 and adm.connections == 2
    adm.closed(conns[0])
    adm.closed(conns[0])  # a second report of the same close changes nothing
    assert adm.connections == 1
    assert refused_with(adm, ("10.0.0.9", 1)) is None


def test_per_ip_limit_answers_429_to_that_address_only(clock: Clock) -> None:
    adm, _, stats = make(max_connections_per_ip=2)
    first, second = Conn(), Conn()
    adm.opened(first, ("10.0.0.1", 1))
    adm.opened(second, ("10.0.0.1", 2))
    answer = refused_with(adm, ("10.0.0.1", 3))
    assert answer is not None and answer.startswith(b"HTTP/1.1 429 ")
    assert stats.rejected_per_ip == 1
    assert refused_with(adm, ("10.0.0.2", 1)) is None, "another address is not limited"
    adm.closed(first)
    assert refused_with(adm, ("10.0.0.1", 4)) is None


def test_on_a_tls_port_a_refusal_is_a_plain_close(clock: Clock) -> None:
    adm, _, _ = make(max_connections=1)
    adm.plain_http = False
    adm.opened(Conn(), ("10.0.0.1", 1))
    assert refused_with(adm, ("10.0.0.2", 1)) == b"", "no HTTP before a TLS handshake: just the close"


def test_accept_errors_back_off_doubling_and_a_success_resets(clock: Clock) -> None:
    adm, loop, stats = make()
    assert adm.accept_failed(OSError(errno.ECONNABORTED, "aborted")), "transient: try the next one"
    assert stats.accept_errors == 0 and loop.watching
    assert not adm.accept_failed(OSError(errno.EMFILE, "too many open files"))
    assert not loop.watching and stats.accept_pauses == 1
    first = loop.timers[-1][0]
    assert loop.fire(first) == 1 and loop.watching, "the listener is watched again after the pause"
    adm.accept_failed(OSError(errno.EMFILE, "too many open files"))
    assert loop.timers[-1][0] == 2 * first, "a second failure in a row waits twice as long"
    loop.fire(2 * first)
    adm.accepted()
    adm.accept_failed(OSError(errno.EMFILE, "too many open files"))
    assert loop.timers[-1][0] == first, "after a success the backoff starts again"


def test_under_pressure_old_handshakes_get_408_at_the_busy_timeout(clock: Clock) -> None:
    adm, loop, stats = make(max_connections=20, busy_handshake_timeout=2.0)  # 10 handshakes at once
    old = [Conn() for _ in range(5)]
    for i, conn in enumerate(old):
        adm.opened(conn, ("10.0.0.1", i))  # the 5th is pressure (half of 10): a sweep is armed
    assert adm.handshakes == 5
    clock.now += 1.0
    young = Conn()
    adm.opened(young, ("10.0.0.1", 99))
    sweep = admission.SWEEP_INTERVAL
    assert loop.fire(sweep) == 1 and all(not c.rejected for c in old), "not yet 2 s old"
    clock.now += 1.5  # the old ones are 2.5 s old, the young one 1.5 s
    assert loop.fire(sweep) == 1
    assert [c.rejected for c in old] == [[408]] * 5 and young.rejected == []
    assert stats.busy_handshake_timeouts == 5
    clock.now += 5.0
    assert loop.fire(sweep) == 1
    assert young.rejected == [], "one handshake left is no pressure: it keeps the normal timeout"
    assert loop.fire(sweep) == 0, "and the sweep stops until pressure comes back"


def test_finished_handshakes_are_not_swept(clock: Clock) -> None:
    adm, loop, stats = make(max_connections=20, busy_handshake_timeout=2.0)
    conns = [Conn() for _ in range(6)]
    for i, conn in enumerate(conns):
        adm.opened(conn, ("10.0.0.1", i))
    conns[0].state = State.OPEN  # it finished its handshake meanwhile
    stats.opened += 1
    clock.now += 3.0
    loop.fire(admission.SWEEP_INTERVAL)
    assert conns[0].rejected == [] and [c.rejected for c in conns[1:]] == [[408]] * 5
