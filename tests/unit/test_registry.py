"""server/registry.py without sockets: stand-in connections with their own send()."""

from __future__ import annotations

import pytest

from server import ConnectionClosed
from server.connections.handle import State
from server.registry import Registry

pytestmark = pytest.mark.timeout(10)


class Conn:
    """A stand-in for a connection and its handle at once (``handle`` is itself).

    Not a server ConnectionHandle: its class has its own send(), so broadcast delivers through it.
    """

    def __init__(self, path: str = "/", is_open: bool = True, answer: bool | None = True) -> None:
        self.handle = self
        self.path, self.answer = path, answer
        self.state = State.OPEN if is_open else State.CLOSED
        self.got: list[bytes] = []

    def send(self, message: object) -> bool:
        if self.answer is None:
            raise ConnectionClosed(1000)
        self.got.append(message.payload)  # type: ignore[attr-defined]
        return self.answer


def test_snapshots_and_open_connections_by_path() -> None:
    reg = Registry(fanout_wait=0.1)
    a, b, closed = Conn("/a"), Conn("/b"), Conn("/a", is_open=False)
    for conn in (a, b, closed):
        reg.add(conn)  # type: ignore[arg-type]
    assert len(reg) == 3 and set(reg.snapshot()) == {a, b, closed}
    assert set(reg.open()) == {a, b}
    assert reg.open("/a") == [a]
    reg.discard(b)  # type: ignore[arg-type]
    assert set(reg.snapshot()) == {a, closed}


def test_broadcast_counts_queued_dropped_and_closed_through_a_connections_own_send() -> None:
    reg = Registry(fanout_wait=0.1)
    queued, dropped, gone = Conn(), Conn(answer=False), Conn(answer=None)
    for conn in (queued, dropped, gone):
        reg.add(conn)  # type: ignore[arg-type]
    result = reg.broadcast(b"x")
    assert (result.queued, result.dropped, result.closed) == (1, 1, 1)
    assert queued.got == [b"x"]
    only = reg.broadcast("t", [queued])  # type: ignore[list-item]
    assert only.queued == 1 and len(dropped.got) == 1
