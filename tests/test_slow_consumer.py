"""A client that stops reading is closed by policy; the others get everything; producers never block."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from websockets.sync.client import connect

from server import Limits, OverflowPolicy

from .helpers import StreamCheck, running_server, wait_until, ws_handshake

pytestmark = pytest.mark.timeout(60)

MESSAGES = 300
SIZE = 32 * 1024
LIMIT = 1024 * 1024


def _stalled_subscriber(port: int, path: str) -> socket.socket:
    sock, _ = ws_handshake(port, path)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock  # never read again


def test_broadcast_closes_the_stalled_client_and_serves_the_rest() -> None:
    with running_server(Limits(ping_interval=None, max_queue_bytes=LIMIT, close_timeout=1.0)) as srv:
        hub = srv.router.hub
        received: list[bytes] = []
        with connect(f"{srv.url}/broadcast", max_size=None, compression=None) as healthy:
            stalled = _stalled_subscriber(srv.port, "/broadcast")
            assert wait_until(lambda: len(hub.subscribers) == 2, 5)
            reader = threading.Thread(target=lambda: received.extend(healthy.recv(timeout=20) for _ in range(MESSAGES)))
            reader.start()
            longest = 0.0
            for i in range(MESSAGES):
                payload = i.to_bytes(4, "big") + bytes(SIZE - 4)
                t0 = time.perf_counter()
                hub.publish(payload)
                longest = max(longest, time.perf_counter() - t0)
                time.sleep(0.001)  # a rate the healthy client keeps up with
            reader.join(30)
            stalled.close()
        assert [int.from_bytes(m[:4], "big") for m in received] == list(range(MESSAGES))
        assert wait_until(lambda: srv.stats.closed_by_policy == 1, 10), srv.stats.as_dict()
        # publish() only posts: a blocked call would hang here for good, not take 1 s.
        assert longest < 1.0, f"a publish() call took {longest:.3f} s"


def test_unpaced_stream_producers_never_block_on_a_stalled_client() -> None:
    limits = Limits(ping_interval=None, max_queue_bytes=LIMIT, close_timeout=1.0)
    with running_server(limits) as srv:
        stalled = _stalled_subscriber(srv.port, "/stream?producers=4&count=2000&size=16384&pace=0")
        with stalled:
            # All 4 producers end (on ConnectionClosed) although nobody reads.
            assert wait_until(lambda: srv.stats.closed_by_policy == 1, 10), srv.stats.as_dict()
            assert wait_until(lambda: not [t for t in threading.enumerate() if "producer" in t.name], 10)
        with connect(f"{srv.url}/stream?producers=4&count=200&size=16384", max_size=None) as ws:
            check = StreamCheck(4, 200)
            for message in ws:
                check.add(message)
        check.assert_complete()


def test_drop_policy_discards_and_counts_instead_of_closing() -> None:
    limits = Limits(ping_interval=None, max_queue_bytes=LIMIT, overflow=OverflowPolicy.DROP)
    with running_server(limits) as srv:
        hub = srv.router.hub
        stalled = _stalled_subscriber(srv.port, "/broadcast")
        with stalled:
            assert wait_until(lambda: len(hub.subscribers) == 1, 5)
            for _ in range(200):
                hub.publish(bytes(SIZE))
            assert wait_until(lambda: srv.stats.dropped_messages > 0, 10)
            assert srv.stats.closed_by_policy == 0
            assert len(hub.subscribers) == 1
