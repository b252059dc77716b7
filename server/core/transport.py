"""Transports: the one object per connection that touches its socket, on the IO thread only.

In the manner of asyncio's transports: a transport owns the socket — selector
interest, reads, writes with the partial-write bookkeeping, half-close — and
knows nothing of HTTP or WebSocket. The connection above it calls
:meth:`SocketTransport.read` when the loop reports the socket readable and
:meth:`SocketTransport.write` to push its :class:`~server.core.sendbuffer.SendBuffer` out.

:class:`SocketTransport` is plain TCP (one ``sendmsg`` of many frames per
write, nothing copied). A TLS transport is the second implementation of the
same methods.
"""

from __future__ import annotations

import fcntl
import logging
import select
import selectors
import socket
import struct
import sys
import termios
import time
from collections.abc import Callable

from . import affinity
from .loop import IOLoop
from .sendbuffer import SendBuffer

logger = logging.getLogger(__name__)

# Bytes asked for per read. recv(n) allocates n bytes and shrinks them to what came: kept under glibc's mmap
# threshold (128 KiB), or every read of a 256-byte message maps and unmaps the buffer (measured with 256 KiB:
# 16 us a recv instead of 2). Large enough that a 64 KiB message and its header arrive in one read.
RECV_SIZE = 124 * 1024
# SIOCOUTQ (Linux; the same number as TIOCOUTQ): bytes written to a TCP socket and not yet acknowledged by the peer.
_SIOCOUTQ = termios.TIOCOUTQ if sys.platform.startswith("linux") else None


def unacknowledged_bytes(sock: socket.socket) -> int | None:
    """The kernel's count of bytes sent on ``sock`` and not yet acknowledged by the peer (None where unknown).

    It falls whenever the client's TCP acknowledges data, however slowly the
    client reads — unlike writability, which Linux reports only once about a
    third of the send buffer is free (seconds apart for a reader at 1 MB/s;
    ``shared/notes/flow-control.md``). For a TLS socket it counts ciphertext.
    """
    if _SIOCOUTQ is None:
        return None
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0])
    except (OSError, ValueError):
        return None


class SocketTransport:
    """A non-blocking TCP socket driven by one IO thread."""

    established = True  # ready for HTTP bytes (a TLS transport: once its handshake is done)

    def __init__(self, loop: IOLoop, sock: socket.socket) -> None:
        self._loop = loop
        self._sock = sock
        try:
            host, port = sock.getpeername()[:2]
            self.peer = f"{host}:{port}"
        except OSError:
            self.peer = "?"
        self.reading = False
        self.writing = False  # watching for EVENT_WRITE: the send buffer has bytes the socket refused
        self.closed = False
        self.last_progress = time.monotonic()  # when the socket last took bytes or the client's TCP acknowledged some
        self._unacked: int | None = None  # unacknowledged_bytes() at the last look (None: look again first)
        self._watched_since = 0.0  # when that look was the first since a write
        self._on_readable: Callable[[], None] = _nothing
        self._on_writable: Callable[[], None] = _nothing

    @property
    def socket(self) -> socket.socket:
        """The socket itself: for options and diagnostics. Reading or writing it bypasses the IO thread's ownership."""
        return self._sock

    def start(self, on_readable: Callable[[], None], on_writable: Callable[[], None]) -> None:
        """Watch the socket: ``on_readable`` / ``on_writable`` run on the IO thread when it is ready."""
        self._on_readable, self._on_writable = on_readable, on_writable
        self._sock.setblocking(False)
        self.set_reading(True)

    def read(self) -> bytes | None:
        """What the socket has: bytes, ``b""`` at EOF, ``None`` if nothing now. Raises OSError on failure."""
        if affinity.enabled:
            affinity.check_io_thread(self._loop.thread_id, "socket read from", self.peer)
        try:
            return self._sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return None

    def write(self, buffer: SendBuffer) -> None:
        """Write as much of ``buffer`` as the socket takes; watch for writability if it refuses some.

        Raises OSError when the socket fails (the peer reset, ...).
        """
        if affinity.enabled:
            affinity.check_io_thread(self._loop.thread_id, "socket write to", self.peer)
        while buffer.frames:
            buffers, frames, offered, reserved = buffer.gather()
            try:
                sent = self._sock.sendmsg(buffers)
            except (BlockingIOError, InterruptedError):
                sent = 0
            buffer.written(sent, offered, frames, reserved)
            if sent:
                self._took_bytes()
            if sent < offered:
                break  # the socket is full: resume when writable
        self._set_writing(bool(buffer.frames))

    def _took_bytes(self) -> None:
        self.last_progress = time.monotonic()
        self._unacked = None  # the count just rose by what was written: the next look starts afresh

    def idle_since(self) -> float:
        """Since when the client is known to have taken nothing: no byte accepted, none acknowledged.

        A client draining a full send buffer takes bytes long before the socket
        is writable again: its TCP acknowledges them, and the kernel's count of
        unacknowledged bytes falls. Each call looks at that count; a fall since
        the previous look is progress. The first look after a write only sets
        the baseline, so it counts as the start of the watch, not as idle time.
        Where the count is unknown (not Linux), only accepted bytes count.
        """
        unacked = unacknowledged_bytes(self._sock)
        if unacked is None:
            return self.last_progress
        now = time.monotonic()
        if self._unacked is None:
            self._watched_since = now
        elif unacked < self._unacked:
            self.last_progress = now
        self._unacked = unacked
        return max(self.last_progress, self._watched_since)

    def unacknowledged(self) -> int:
        """Bytes the kernel holds for the client, sent or not, not yet acknowledged (0 where unknown)."""
        return unacknowledged_bytes(self._sock) or 0

    def can_write_now(self) -> bool:
        """Ask the socket (not the selector, which may be behind) whether it would take bytes now."""
        poller = select.poll()
        poller.register(self._sock, select.POLLOUT)
        return bool(poller.poll(0))

    def shutdown_write(self) -> None:
        """Half-close: our last bytes are out; keep reading until the peer's EOF. Raises OSError."""
        self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Stop watching and close the socket; runs once."""
        if self.closed:
            return
        self.closed = True
        self._loop.remove(self._sock)
        try:
            self._sock.close()
        except OSError:
            pass

    def set_reading(self, reading: bool) -> None:
        if reading != self.reading and not self.closed:
            self.reading = reading
            self._update_interest()

    def _set_writing(self, writing: bool) -> None:
        if writing != self.writing and not self.closed:
            self.writing = writing
            self._update_interest()

    def _update_interest(self) -> None:
        self._loop.set_interest(self._sock, self._on_ready, read=self.reading, write=self.writing)

    def _on_ready(self, mask: int) -> None:
        if mask & selectors.EVENT_WRITE and not self.closed:
            self._on_writable()
        if mask & selectors.EVENT_READ and not self.closed:
            self._on_readable()


def _nothing() -> None:
    pass
