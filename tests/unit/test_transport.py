"""SocketTransport with a scripted socket: partial writes, would-block, EOF, failures and interest.

No network: the fake socket's ``sendmsg`` takes as many bytes as the script
says, cutting frames anywhere; a socketpair lends it a file descriptor so the
loop's selector can watch it (the loop is never run).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from server.core.loop import IOLoop
from server.core.sendbuffer import SendBuffer
from server.core.transport import SocketTransport

pytestmark = pytest.mark.timeout(10)


class ScriptedSocket:
    """Takes ``takes[i]`` bytes on the i-th sendmsg (None: would block); records what it took."""

    def __init__(self, fd_owner: socket.socket, takes: list[int | None], incoming: list[bytes | OSError] | None = None):
        self._fd_owner = fd_owner
        self.takes = list(takes)
        self.incoming = list(incoming or [])
        self.wire = bytearray()
        self.calls = 0

    def fileno(self) -> int:
        return self._fd_owner.fileno()

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 4242)

    def setblocking(self, flag: bool) -> None:
        pass

    def sendmsg(self, buffers: list[bytes | memoryview]) -> int:
        self.calls += 1
        take = self.takes.pop(0) if self.takes else None
        if take is None:
            raise BlockingIOError
        data = b"".join(bytes(b) for b in buffers)
        self.wire += data[:take]
        return min(take, len(data))

    def recv(self, n: int) -> bytes:
        if not self.incoming:
            raise BlockingIOError
        item = self.incoming.pop(0)
        if isinstance(item, OSError):
            raise item
        return item

    def close(self) -> None:
        pass


@pytest.fixture
def loop() -> Iterator[IOLoop]:
    loop = IOLoop()
    yield loop
    loop.close()


@pytest.fixture
def fd() -> Iterator[socket.socket]:
    a, b = socket.socketpair()
    yield a
    a.close()
    b.close()


def _nothing() -> None:
    pass


def buffer_with(*frames: bytes) -> SendBuffer:
    box = SendBuffer(release=lambda size: None)
    for frame in frames:
        box.append((frame,), 0, len(frame))
    return box


FRAMES = [b"\x81\x05hello", b"\x82\x03abc", b"\x81\x00", b"\x89\x04ping"]
WIRE = b"".join(FRAMES)


@pytest.mark.parametrize("takes", [
    [len(WIRE)],  # all at once
    [1, None, 3, 7, None, 2, 100],  # inside headers and payloads, with would-blocks between
    [7, 5, 2, 6],  # exactly on frame boundaries
    [12, None, None, 8],  # across two frames, then two refusals
])
def test_partial_writes_put_every_byte_on_the_wire_once_in_order(loop: IOLoop, fd: socket.socket,
                                                                 takes: list[int | None]) -> None:
    sock = ScriptedSocket(fd, takes)
    transport = SocketTransport(loop, sock)  # type: ignore[arg-type]
    transport.start(_nothing, _nothing)
    box = buffer_with(*FRAMES)
    for _ in range(len(takes)):
        transport.write(box)
        if not box.frames:
            break
        assert transport.writing, "bytes are left: the transport must wait for writability"
    assert bytes(sock.wire) == WIRE
    assert not box.frames and not transport.writing, "all written: stop watching for writability"


def test_would_block_leaves_the_buffer_whole_and_watches_for_writability(loop: IOLoop, fd: socket.socket) -> None:
    sock = ScriptedSocket(fd, [None])
    transport = SocketTransport(loop, sock)  # type: ignore[arg-type]
    transport.start(_nothing, _nothing)
    box = buffer_with(*FRAMES)
    transport.write(box)
    assert sock.wire == b"" and len(box.frames) == len(FRAMES) and transport.writing and transport.reading


def test_progress_time_moves_only_when_bytes_are_taken(loop: IOLoop, fd: socket.socket) -> None:
    sock = ScriptedSocket(fd, [None, 3])
    transport = SocketTransport(loop, sock)  # type: ignore[arg-type]
    transport.last_progress = 0.0
    transport.write(buffer_with(*FRAMES))
    assert transport.last_progress == 0.0
    transport.write(buffer_with(*FRAMES))
    assert transport.last_progress > 0.0


def test_read_says_data_nothing_eof_or_raises(loop: IOLoop, fd: socket.socket) -> None:
    sock = ScriptedSocket(fd, [], incoming=[b"abc", b"", ConnectionResetError(104, "reset")])
    transport = SocketTransport(loop, sock)  # type: ignore[arg-type]
    assert transport.read() == b"abc"
    assert transport.read() == b""  # EOF
    with pytest.raises(ConnectionResetError):
        transport.read()
    assert transport.read() is None  # nothing now


def test_a_failing_socket_raises_out_of_write(loop: IOLoop, fd: socket.socket) -> None:
    class Broken(ScriptedSocket):
        def sendmsg(self, buffers: list[bytes | memoryview]) -> int:
            raise BrokenPipeError(32, "broken pipe")

    transport = SocketTransport(loop, Broken(fd, []))  # type: ignore[arg-type]
    with pytest.raises(BrokenPipeError):
        transport.write(buffer_with(*FRAMES))


def test_close_runs_once_and_stops_interest_changes(loop: IOLoop, fd: socket.socket) -> None:
    transport = SocketTransport(loop, ScriptedSocket(fd, []))  # type: ignore[arg-type]
    transport.start(_nothing, _nothing)
    transport.close()
    transport.close()
    transport.set_reading(False)
    assert transport.closed and transport.reading, "a closed transport changes no interest"
