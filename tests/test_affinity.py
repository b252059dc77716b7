"""The write-affinity check catches a socket write from any thread but the IO thread."""

from __future__ import annotations

import threading

import pytest

from server import affinity
from server.affinity import WriteAffinityError

from .helpers import wait_until, ws_handshake

pytestmark = pytest.mark.timeout(30)


def test_off_thread_write_raises_naming_both_threads(server) -> None:
    sock, _ = ws_handshake(server.port, "/echo")
    with sock:
        assert wait_until(lambda: len(server.connections) == 1, 5)
        conn = next(iter(server.connections))
        errors: list[BaseException] = []
        idle = threading.Event()  # the IO thread has finished writing the 101 (else it may write our frame too)
        server.loop.post(idle.set)
        assert idle.wait(5)

        def rogue() -> None:
            try:
                conn._flush()  # what a worker writing "directly" would do
            except WriteAffinityError as exc:
                errors.append(exc)

        conn._outbox.append((b"\x81\x00",), 0, 2)  # something to write
        t = threading.Thread(target=rogue, name="rogue-worker")
        t.start()
        t.join()
        assert errors, "an off-thread write must be refused"
        message = str(errors[0])
        assert "rogue-worker" in message and "wsrace-io" in message


def test_check_can_be_switched_off() -> None:
    affinity.set_enabled(False)
    try:
        affinity.check_write(io_thread_id=-1, peer="anything")  # no error when off
    finally:
        affinity.set_enabled(True)
    with pytest.raises(WriteAffinityError):
        affinity.check_write(io_thread_id=-1, peer="anything")
