"""The stall judgement on one connection, driven by hand: the client is judged by what its TCP really takes.

A white-box test: no running loop, the test thread plays the IO thread (and
calls the connection's IO-thread callbacks itself), a TCP pair on 127.0.0.1
plays the client, and the clock is moved by shifting the times the judgement
reads (``_idle_for``: as if the IO thread had been busy, or the client silent,
for a long time).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from server import Limits, Stats
from server.connections.connection import Connection
from server.connections.handle import ConnectionHandle, State
from server.connections.pool import WorkerPool
from server.core.loop import IOLoop
from server.core.transport import SocketTransport

from ..helpers import upgrade_request, wait_until

pytestmark = pytest.mark.timeout(30)
LIMIT = 256 * 1024


class _Sink:
    def on_open(self, conn: ConnectionHandle) -> None:
        pass

    def on_message(self, conn: ConnectionHandle, message: str | bytes) -> None:
        pass

    def on_close(self, conn: ConnectionHandle) -> None:
        pass


class _Router:
    def route(self, request: object) -> _Sink:
        return _Sink()


@pytest.fixture
def pair() -> Iterator[tuple[Connection, socket.socket, Stats]]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # before connect: the window is fixed then
        client.connect(listener.getsockname())
        ours, _ = listener.accept()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)  # small, fixed buffers: full after a few KiB
    loop = IOLoop()
    loop._thread_id = threading.get_ident()  # this thread is "the IO thread"
    stats = Stats()
    # Every judgement below backdates the clocks by 10 s; 5 s keeps "too early to judge" true on a slow machine.
    limits = Limits(max_queue_bytes=LIMIT, stall_timeout=5.0, ping_interval=None, deflate=False)
    conn = Connection(loop, SocketTransport(loop, ours), _Router(), WorkerPool(1), limits=limits, stats=stats)
    conn.start()
    client.sendall(upgrade_request("/"))

    def handshake_done() -> bool:
        conn._on_readable()  # what the loop would call: the real handshake, driven by hand
        return conn.state is State.OPEN

    assert wait_until(handshake_done, 5)
    while conn.handle.queued_bytes < LIMIT:
        conn.handle.send(bytes(64 * 1024))  # on "the IO thread": never waits
    conn.writer.drain()
    for _ in range(100):  # fill our send buffer and the client's receive buffer: then the socket is not writable
        conn.writer.flush()
        if not conn.transport.can_write_now():
            break
        threading.Event().wait(0.005)  # loopback moves what we wrote into the client's buffer
    assert conn.writer.buffer.blocked_since is not None and conn.writer.outbox.full
    yield conn, client, stats
    client.close()
    conn.transport.close()
    loop.close()


def _idle_for(conn: Connection, seconds: float) -> None:
    """As if the socket refused bytes, and nothing was seen to be taken or acknowledged, ``seconds`` ago."""
    assert conn.writer.buffer.blocked_since is not None
    conn.writer.buffer.blocked_since -= seconds
    conn.transport.idle_since()  # the baseline look, if none was taken yet
    conn.transport.last_progress -= seconds
    conn.transport._watched_since -= seconds


def _read_all(sock: socket.socket) -> int:
    sock.setblocking(False)
    total = 0
    try:
        while chunk := sock.recv(1 << 20):
            total += len(chunk)
    except BlockingIOError:
        pass
    return total


def test_a_client_that_read_while_the_io_thread_was_busy_is_not_stalled(pair) -> None:
    conn, client, stats = pair
    _idle_for(conn, 10)  # refused 10 s ago: the IO thread was busy ever since
    # ... but the client read meanwhile, until the kernel had room again (window updates are asynchronous):
    # its TCP acknowledged what it read, and the kernel's count says so at the next look.
    assert wait_until(lambda: _read_all(client) >= 0 and conn.transport.can_write_now(), 5)
    conn.writer.check_stall()
    assert stats.closed_by_policy == 0 and conn.state is State.OPEN
    assert conn.writer.buffer.blocked_since is None or conn.writer.buffer.blocked_since > 0  # the socket took bytes again


def test_a_client_that_did_not_read_is_stalled(pair) -> None:
    conn, _, stats = pair
    _idle_for(conn, 10)
    conn.writer.check_stall()
    assert stats.closed_by_policy == 1 and stats.closed_stalled == 1
    assert conn.state is State.CLOSING and conn.handle.close_code == 1008
    assert conn.handle.close_reason.startswith("client stalled")


def test_a_client_whose_tcp_acknowledged_bytes_is_not_stalled_while_the_socket_stays_unwritable(pair, monkeypatch) -> None:
    """Linux reports writability only once a third of the send buffer is free (seconds apart for a reader at
    1 MB/s); the client's TCP acknowledging bytes — the kernel's unacknowledged count falling — is progress."""
    conn, client, stats = pair
    monkeypatch.setattr(conn.transport, "can_write_now", lambda: False)  # the writability gap, for certain
    _idle_for(conn, 10)
    before = conn.transport.unacknowledged()
    assert before > 0
    assert wait_until(lambda: _read_all(client) >= 0 and conn.transport.unacknowledged() < before, 5)
    conn.writer.check_stall()
    assert stats.closed_by_policy == 0 and conn.state is State.OPEN
    assert conn.writer.stall_pending  # still full: it is looked at again


def test_a_client_is_watched_for_the_whole_timeout_before_it_is_judged(pair) -> None:
    """The first look after a write only sets the baseline: a judgement needs stall_timeout of seeing nothing."""
    conn, _, stats = pair
    conn.writer.buffer.blocked_since -= 10
    conn.transport.last_progress -= 10  # the last write long ago, but nobody has looked since
    conn.transport._unacked = None
    conn.writer.check_stall()
    assert stats.closed_by_policy == 0 and conn.writer.stall_pending


def test_not_yet_stalled_arms_a_timer_instead(pair) -> None:
    conn, _, stats = pair
    conn.writer.check_stall()  # refused just now: too early to judge
    assert stats.closed_by_policy == 0 and conn.writer.stall_pending


def test_a_fan_out_member_that_read_while_the_io_thread_was_busy_is_not_too_slow(pair) -> None:
    """A fan-out waited past fanout_wait, but the member read meanwhile: the IO thread writes before it judges.

    The member's kernel has room for its whole queue now (a send buffer larger than the queue, as with Linux's
    autotuned 4 MiB): only the IO thread was behind.
    """
    conn, client, stats = pair
    conn.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * LIMIT)
    assert wait_until(lambda: _read_all(client) >= 0 and conn.transport.can_write_now(), 5)
    conn.writer.check_behind()
    assert stats.closed_by_policy == 0 and conn.state is State.OPEN
    assert conn.writer.outbox.behind < LIMIT // 2 or not conn.writer.outbox.full


def test_a_fan_out_member_whose_socket_takes_nothing_is_too_slow_for_the_feed(pair) -> None:
    conn, _, stats = pair
    conn.writer.check_behind()
    assert stats.closed_too_slow == 1 and stats.closed_stalled == 0
    assert conn.handle.close_code == 1008 and conn.handle.close_reason.startswith("too slow for this feed: ")
