"""Flow control judges the client, not the server.

Producers here are the user's own threads calling ``conn.send()`` in a loop
over clients (or ``broadcast``), clients are strict checkers reading as fast
as they can. A client that keeps up must never be closed, whatever the
producers do; only a client whose socket stops taking bytes is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

import pytest

from repro.checker import StreamSpec
from repro.client import ClientOptions, check_url
from server import Limits, OverflowPolicy, Server
from server.demo import streamformat

from ..helpers import running_server, stalled_client, wait_until

pytestmark = pytest.mark.timeout(120)


class FanOut:
    """A router whose only route registers each connection; the test's threads do the sending."""

    def __init__(self, server: Server) -> None:
        self.conns: list = []
        self._lock = threading.Lock()

    def route(self, request):
        router = self

        class Handler:
            def on_open(self, conn) -> None:
                with router._lock:
                    router.conns.append(conn)

            def on_message(self, conn, message) -> None:
                pass

            def on_close(self, conn) -> None:
                pass

        return Handler()


def _produce(srv: Server, conns: list, producer: int, count: int, size: int, send: Callable) -> None:
    for seq in range(count):
        send(srv, conns, streamformat.encode(producer, seq, size))


def produce_then_close(srv: Server, conns: list, producers: int, count: int, size: int, send: Callable,
                       timeout: float = 90) -> None:
    """Run ``producers`` threads of ``_produce`` to the end, then close every connection still open with 1000."""
    threads = [threading.Thread(target=_produce, args=(srv, conns, p, count, size, send)) for p in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    for conn in conns:
        if not conn.closed:
            try:
                conn.close(1000, "done")
            except Exception:
                pass


def per_client_loop(srv: Server, conns: list, message: bytes) -> None:
    for conn in conns:  # the loop users write
        conn.send(message)


@contextmanager
def fan_out(limits: Limits, clients: int, producers: int, count: int, size: int, send: Callable = per_client_loop,
            stalled: int = 0, **server_args) -> Iterator[tuple[Server, dict, list]]:
    """Start checking clients (and never-reading ones), run the producers, close every connection; yield results."""
    with running_server(limits, router=FanOut, **server_args) as srv:
        app = cast(FanOut, srv.router)
        results: dict[int, tuple] = {}
        spec = StreamSpec(producers, count)
        options = ClientOptions(rcvbuf=None, ping_interval=None, time_limit=90)
        readers = [threading.Thread(target=lambda i=i: results.__setitem__(i, check_url("127.0.0.1", srv.port, "/fanout", spec, options)))
                   for i in range(clients)]
        for t in readers:
            t.start()
        dead = []
        for _ in range(stalled):
            dead.append(stalled_client(srv.port, "/fanout"))
        assert wait_until(lambda: len(app.conns) == clients + stalled, 10), len(app.conns)
        conns = list(app.conns)
        produce_then_close(srv, conns, producers, count, size, send)
        for t in readers:
            t.join(90)
        for sock in dead:
            sock.close()
        yield srv, results, conns


def _tolerant(send: Callable) -> Callable:
    """A producer loop that carries on past a closed client (the one that never reads)."""
    from server import ConnectionClosed

    def loop(srv: Server, conns: list, message: bytes) -> None:
        for conn in conns:
            try:
                send(conn, message)
            except ConnectionClosed:
                pass

    return loop


def assert_all_delivered(results: dict, clients: int, producers: int, count: int) -> None:
    assert len(results) == clients
    for i, (summary, ended) in results.items():
        assert not summary.anomalies, (i, ended, {k: v.detail for k, v in summary.anomalies.items()})
        assert summary.valid_messages == producers * count, (i, summary.valid_messages, ended)
        assert summary.close_code == 1000, (i, summary.close_code, ended)


def test_producers_outrunning_the_io_thread_close_no_fast_client() -> None:
    """B: 64 KiB messages, 4 producers x 4 clients, per-client send(), a 1 MiB queue limit: all delivered."""
    with fan_out(Limits(ping_interval=None, max_queue_bytes=1 << 20), clients=4, producers=4, count=150, size=65536) as (srv, results, _):
        assert_all_delivered(results, 4, 4, 150)
        assert srv.stats.closed_by_policy == 0


def test_fast_small_fan_out_closes_nobody() -> None:
    """C without the stuck client: 256 B messages, 4 producers at full speed x 20 clients, 4 MiB limit."""
    with fan_out(Limits(ping_interval=None, max_queue_bytes=4 << 20), clients=20, producers=4, count=1500, size=256) as (srv, results, _):
        assert_all_delivered(results, 20, 4, 1500)
        assert srv.stats.closed_by_policy == 0


def test_a_never_reading_client_is_the_only_one_closed() -> None:
    limits = Limits(ping_interval=None, max_queue_bytes=256 << 10, stall_timeout=1.0, close_timeout=1)
    send = _tolerant(lambda conn, message: conn.send(message))
    with fan_out(limits, clients=6, producers=4, count=400, size=8192, send=send, stalled=1) as (srv, results, conns):
        assert_all_delivered(results, 6, 4, 400)
        assert srv.stats.closed_by_policy == 1
        closed = [c for c in conns if c.close_code == 1008]
        assert len(closed) == 1 and "stalled" in closed[0].close_reason
        # It was closed because producers found its queue full (and its socket stuck), not for being slow alone.
        assert closed[0].waits >= 1


def test_a_busy_io_thread_never_evicts_a_reading_client() -> None:
    """The IO thread sleeps (a stand-in for a long batch) while a reading client's queue is full: no eviction."""
    # A stall_timeout well above a scheduler pause of the in-process readers; the naps are 3 x it.
    limits = Limits(ping_interval=None, max_queue_bytes=256 << 10, stall_timeout=1.0)

    def broadcast_with_naps(srv: Server, conns: list, message: bytes) -> None:
        if int.from_bytes(message[4:8], "big") % 100 == 50:
            srv.loop.post(lambda: threading.Event().wait(3.0))  # 3 x stall_timeout without a write
        srv.broadcast(message, conns)

    with fan_out(limits, clients=2, producers=1, count=200, size=32768, send=broadcast_with_naps) as (srv, results, _):
        assert_all_delivered(results, 2, 1, 200)
        assert srv.stats.closed_by_policy == 0


def test_the_server_wide_backlog_bound_holds() -> None:
    """Producers far faster than a slowed IO thread: what is posted and not taken stays near the bound."""
    bound = 1 << 20
    limits = Limits(ping_interval=None, max_queue_bytes=64 << 20)

    def send_and_slow_the_loop(srv: Server, conns: list, message: bytes) -> None:
        if int.from_bytes(message[4:8], "big") % 20 == 0:
            srv.loop.post(lambda: threading.Event().wait(0.05))
        per_client_loop(srv, conns, message)

    with fan_out(limits, clients=2, producers=4, count=200, size=65536, send=send_and_slow_the_loop,
                 max_backlog_bytes=bound) as (srv, results, _):
        assert_all_delivered(results, 2, 4, 200)
        backlog = srv.send_backlog
        assert backlog.waits > 0, "the bound never engaged: the test did not overload the IO thread"
        # Each producer may add one message past the bound before it waits.
        assert backlog.peak <= bound + 4 * (65536 + 10), backlog.peak
        assert backlog.bytes == 0


def test_a_message_larger_than_the_limit_is_delivered_whatever_is_queued() -> None:
    """Room means 'the queue is below the limit': ``send("tick"); send(3 MiB)`` never depends on timing."""
    limits = Limits(ping_interval=None, max_queue_bytes=1 << 20)
    with running_server(limits, router=FanOut) as srv:
        from websockets.sync.client import connect

        with connect(f"{srv.url}/fanout", max_size=None) as ws:
            app = cast(FanOut, srv.router)
            assert wait_until(lambda: len(app.conns) == 1, 5)
            conn = app.conns[0]
            gate = threading.Event()
            srv.loop.post(gate.wait)  # the IO thread holds everything: "tick" is certainly still queued
            assert conn.send("tick")
            assert conn.send(bytes(3 << 20))
            gate.set()
            assert ws.recv(timeout=10) == "tick"
            assert len(ws.recv(timeout=10)) == 3 << 20
        assert srv.stats.closed_by_policy == 0


def test_drop_policy_drops_exactly_what_does_not_fit() -> None:
    limit, size = 1 << 20, 32768
    limits = Limits(ping_interval=None, max_queue_bytes=limit, overflow=OverflowPolicy.DROP)
    with running_server(limits, router=FanOut) as srv:
        from websockets.sync.client import connect

        with connect(f"{srv.url}/fanout", max_size=None) as ws:
            app = cast(FanOut, srv.router)
            assert wait_until(lambda: len(app.conns) == 1, 5)
            conn = app.conns[0]
            gate = threading.Event()
            srv.loop.post(gate.wait)  # nothing drains while the producer sends
            accepted = [conn.send(bytes(size)) for _ in range(100)]
            gate.set()
            frame = size + 4  # 4-byte header for 126..65535-byte payloads
            fit = -(-limit // frame)  # accepted while the queue is below the limit
            assert accepted == [True] * fit + [False] * (100 - fit)
            assert conn.dropped_messages == 100 - fit
            assert wait_until(lambda: srv.stats.dropped_messages == 100 - fit, 5)
            for _ in range(fit):
                assert len(ws.recv(timeout=10)) == size
        assert srv.stats.closed_by_policy == 0
