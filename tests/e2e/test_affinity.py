"""The affinity check: socket IO and the loop's IO-thread-only calls refuse any other thread."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import pytest

from server.core import affinity
from server.core.affinity import WriteAffinityError
from server.core.loop import IOLoop
from server.core.sendbuffer import SendBuffer

from ..helpers import raised_on, wait_until, ws_handshake

pytestmark = pytest.mark.timeout(30)


def _nothing() -> None:
    pass


def test_off_thread_socket_write_and_read_raise_naming_both_threads(server) -> None:
    sock, _ = ws_handshake(server.port, "/echo")
    with sock:
        assert wait_until(lambda: len(server.connections) == 1, 5)
        (conn,) = server.registry.connections()  # the IO-thread object: its transport
        idle = threading.Event()  # the IO thread has finished writing the 101
        server.loop.post(idle.set)
        assert idle.wait(5)
        buffer = SendBuffer(release=lambda size: None)
        buffer.append((b"\x81\x00",), 0, 2)  # something to write

        message = raised_on("rogue-writer", lambda: conn.transport.write(buffer))
        assert "socket write to" in message and "rogue-writer" in message and "wsrace-io" in message
        assert buffer.frames, "nothing may have been written"

        message = raised_on("rogue-reader", conn.transport.read)
        assert "socket read from" in message and "rogue-reader" in message and "wsrace-io" in message


def test_every_io_thread_only_loop_call_checks_its_thread() -> None:
    loop = IOLoop()
    loop.start()
    a, b = socket.socketpair()
    try:
        calls: dict[str, Callable[[], object]] = {
            "call_later": lambda: loop.call_later(1.0, lambda: None),
            "call_after_batch": lambda: loop.call_after_batch(lambda: None),
            "set_interest": lambda: loop.set_interest(a, lambda mask: None, read=True, write=False),
            "remove": lambda: loop.remove(a),
        }
        for name, call in calls.items():
            message = raised_on("not-the-io-thread", call)
            assert f"IOLoop.{name}()" in message and "not-the-io-thread" in message, (name, message)
        ran = threading.Event()
        loop.post(lambda: (loop.call_later(0, ran.set), None)[1])  # on the IO thread: allowed
        assert ran.wait(5)
    finally:
        loop.stop()
        assert loop.thread is not None
        loop.thread.join(5)
        loop.close()
        a.close()
        b.close()


def test_check_can_be_switched_off() -> None:
    affinity.set_enabled(False)
    try:
        affinity.check_io_thread(-1, "anything")  # no error when off
    finally:
        affinity.set_enabled(True)
    with pytest.raises(WriteAffinityError):
        affinity.check_io_thread(-1, "anything")


def test_switched_off_the_hot_paths_skip_the_check_and_the_loop_still_serves() -> None:
    # Production runs with the check off: the loop's IO-thread-only calls and the transport's reads and writes
    # then skip it with one global read. Off-thread calls pass unchecked (what the check exists to catch), and
    # a loop serving a socket pair still reads and writes.
    loop = IOLoop()
    affinity.set_enabled(False)
    a, b = socket.socketpair()
    try:
        loop.start()
        loop.call_after_batch(_nothing)  # from this thread: not refused while off
        got = threading.Event()

        def on_readable(mask: int) -> None:
            if a.recv(16) == b"ping":
                got.set()

        def watch() -> None:
            loop.set_interest(a, on_readable, read=True, write=False)

        loop.post(watch)
        b.send(b"ping")
        assert got.wait(5), "the loop did not read"
        loop.post(lambda: loop.remove(a))
        timer_ran = threading.Event()
        loop.post(lambda: (loop.call_later(0, timer_ran.set), None)[1])
        assert timer_ran.wait(5)
    finally:
        affinity.set_enabled(True)
        loop.stop()
        if loop.thread is not None:
            loop.thread.join(5)
        loop.close()
        a.close()
        b.close()


def test_switched_off_an_echo_round_trip_works(server) -> None:
    affinity.set_enabled(False)
    try:
        sock, _ = ws_handshake(server.port, "/echo")
        with sock:
            sock.sendall(b"\x82\x84abcd" + bytes(x ^ y for x, y in zip(b"ping", b"abcd", strict=True)))
            assert sock.recv(16) == b"\x82\x04ping"
    finally:
        affinity.set_enabled(True)
