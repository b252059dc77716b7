"""Connection behaviour: keepalive, send() after close, close() from any thread, per-thread order."""

from __future__ import annotations

import random
import socket
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.sync.client import connect

from server import ConnectionClosed, ConnectionHandle, Limits
from server.connections.handle import State

from ..helpers import (
    assert_same_messages,
    client_frame,
    close_code_of,
    read_server_frames,
    running_server,
    stalled_client,
    wait_until,
    ws_handshake,
)

pytestmark = pytest.mark.timeout(30)


def test_client_that_never_answers_pings_is_closed_with_1011() -> None:
    with running_server(Limits(ping_interval=0.1, ping_timeout=0.3)) as srv:
        sock, rest = ws_handshake(srv.port, "/echo")  # a raw client: it never sends a pong
        with sock:
            frames, _ = read_server_frames(sock, rest, timeout=5)
            assert any(op == 0x9 for op, _ in frames), "the server should have pinged"
            assert close_code_of(frames) == 1011
            assert b"keepalive ping timeout" in frames[-1][1]
        assert srv.stats.ping_timeouts == 1


def test_client_that_answers_pings_stays_connected() -> None:
    rounds = 10
    # ping_timeout well above a scheduler pause: this test counts pongs, it does not time them.
    with running_server(Limits(ping_interval=0.05, ping_timeout=3.0)) as srv:
        with connect(f"{srv.url}/echo") as ws:  # websockets answers every ping on its own thread
            # Counted, not timed: keepalive must really ping, and the client's pongs must reach it.
            assert wait_until(lambda: srv.stats.keepalive_pongs >= rounds, 10), srv.stats.as_dict()
            ws.send("still here")
            assert ws.recv(timeout=5) == "still here"
            assert len(srv.open_connections()) == 1
        assert srv.stats.keepalive_pings >= rounds
        assert srv.stats.ping_timeouts == 0


def test_send_after_close_raises_connection_closed_with_the_code(server) -> None:
    with connect(f"{server.url}/echo") as ws:
        ws.send("hello")
        ws.recv(timeout=5)
        assert wait_until(lambda: len(server.connections) == 1, 5)
        conn = next(iter(server.connections))
        ws.close(code=4001, reason="client done")
    assert conn.wait_closed(5)
    assert conn.close_code == 4001
    with pytest.raises(ConnectionClosed) as info:
        conn.send("too late")
    assert info.value.code == 4001
    assert "4001" in str(info.value)


def test_close_from_many_threads_runs_one_handshake(server) -> None:
    with connect(f"{server.url}/echo") as ws:
        ws.send("x")
        ws.recv(timeout=5)
        conn = next(iter(server.connections))
        threads = [threading.Thread(target=conn.close, args=(4000 + i, f"t{i}")) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with pytest.raises(WsConnectionClosed):
            ws.recv(timeout=5)
        assert ws.close_code is not None and 4000 <= ws.close_code < 4008
    assert conn.wait_closed(5) and conn.close_code == ws.close_code


def test_messages_from_one_thread_arrive_in_order(server) -> None:
    with connect(f"{server.url}/broadcast", max_size=None) as ws:
        assert wait_until(lambda: len(server.connections) == 1, 5)
        conn = next(iter(server.connections))
        sent = [f"{i}".encode() * (1 + i % 50) for i in range(2000)]

        def producer() -> None:
            for m in sent:
                conn.send(m)

        t = threading.Thread(target=producer)
        t.start()
        got = [ws.recv(timeout=10) for _ in sent]
        t.join()
        assert_same_messages(got, sent)


class _Recorder:
    """Records each message with the number of this connection's handlers running at that moment."""

    def __init__(self, log: list[str], overlap: list[int], concurrent: bool) -> None:
        self.log, self.overlap, self.concurrent_messages = log, overlap, concurrent
        self.running = 0

    def on_open(self, conn) -> None:
        pass

    def on_message(self, conn, message) -> None:
        self.running += 1
        self.overlap.append(self.running)
        time.sleep(random.random() * 0.002)  # 0-2 ms of work, as a real handler does
        self.log.append(message)
        self.running -= 1
        if message == "299":
            conn.send("done")

    def on_close(self, conn) -> None:
        pass


@pytest.mark.parametrize("concurrent", [False, True])
def test_one_connections_messages_are_handled_in_order(concurrent: bool) -> None:
    """Default: a strand per connection (in order, one at a time). Opt-in: concurrent, as /echo is."""
    log: list[str] = []
    overlap: list[int] = []

    class App:
        def __init__(self, server) -> None:
            pass

        def route(self, request):
            return _Recorder(log, overlap, concurrent)

    sent = [str(i) for i in range(300)]
    with running_server(workers=8, router=App) as srv, connect(f"{srv.url}/ordered") as ws:
        for m in sent:
            ws.send(m)
        assert ws.recv(timeout=20) is not None
        assert wait_until(lambda: len(log) == len(sent), 10)
    if concurrent:
        # The opt-in really runs them side by side (else this test could not tell the two apart).
        assert max(overlap) > 1 and log != sent
    else:
        assert max(overlap) == 1, "two of one connection's handlers ran at once"
        assert_same_messages(log, sent)


@pytest.mark.parametrize("code,reason", [(999, ""), (1005, ""), (1006, ""), (1015, ""), (2999, ""), (5000, ""), (1000, "é" * 62)])
def test_close_refuses_codes_and_reasons_a_close_frame_cannot_carry(server, code: int, reason: str) -> None:
    with connect(f"{server.url}/echo") as ws:
        ws.send("x")
        ws.recv(timeout=5)
        conn = server.connections[0]
        with pytest.raises(ValueError):
            conn.close(code, reason)
        conn.close(4000, "é" * 61)  # 122 bytes: fits
        with pytest.raises(WsConnectionClosed):
            ws.recv(timeout=5)
        assert ws.close_code == 4000


BURST = 64


class _Burst:
    """On open, queue 64 messages of 64 KiB (on the IO thread: never waits), more than the kernel takes."""

    def on_open(self, conn: ConnectionHandle) -> None:
        for _ in range(BURST):
            conn.send(bytes(65536))

    def on_message(self, conn: ConnectionHandle, message: str | bytes) -> None:
        pass

    def on_close(self, conn: ConnectionHandle) -> None:
        pass


class _BurstRouter:
    def route(self, request: object) -> _Burst:
        return _Burst()


def test_a_server_close_is_finished_at_once_even_while_reading_was_paused() -> None:
    """Input flow control pauses reading while the queue is past half full; the server's close must resume it.

    Otherwise the client's close reply sits unread and the connection ends only at ``close_timeout``.
    """
    limits = Limits(max_queue_bytes=1024 * 1024, close_timeout=30.0, ping_interval=None, deflate=False)
    with running_server(limits, router=_BurstRouter()) as srv:
        sock = stalled_client(srv.port, "/burst")  # reads nothing yet: most of the 4 MiB stays queued
        with sock:
            assert wait_until(lambda: len(srv.connections) == 1, 5)
            conn = next(iter(srv.connections))
            (io_conn,) = srv.registry.connections()
            assert wait_until(lambda: conn.queued_bytes > limits.max_queue_bytes // 2, 10)
            sock.sendall(client_frame(0x9, b"are you there"))  # read while the queue is past half full
            assert wait_until(lambda: not io_conn.transport.reading, 5), "reading should pause"
            conn.close(1000, "bye")  # closing while reading is paused
            sock.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(65536)
            frames, _ = read_server_frames(sock, head.split(b"\r\n\r\n", 1)[1], timeout=10)  # up to the close
            assert [op for op, _ in frames].count(0x2) == BURST and close_code_of(frames) == 1000
            sock.sendall(client_frame(0x8, frames[-1][1][:2]))  # the close reply
            try:
                assert sock.recv(1) == b"", "the server sent more after its close frame"  # its FIN, once it read the reply
            except TimeoutError:
                pytest.fail("the client's close reply was never read: the server would wait for close_timeout")
            sock.shutdown(socket.SHUT_WR)
            assert conn.wait_closed(5)
        assert conn.close_code == 1000 and conn.close_reason == "bye"


def test_open_connections_lists_a_connection_from_its_101_until_its_close_begins(server) -> None:
    sock, _ = ws_handshake(server.port, "/echo")  # a raw client: it never answers our close frame
    with sock:
        assert wait_until(lambda: len(server.open_connections()) == 1, 5)
        conn = server.open_connections()[0]
        assert conn.state is State.OPEN and conn.is_open
        conn.close(1000, "bye")
        assert wait_until(lambda: conn.state is State.CLOSING, 5)  # waiting for the client's close frame
        assert server.open_connections() == [] and not conn.is_open and conn in server.connections
