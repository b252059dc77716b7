"""A client that stops reading is closed by policy; the others get everything; producers go on.

The exact rules (room, waiting, stall judgement, drop counts) are tested in
test_flow_control.py and test_outbox.py; these run the demo routes.
"""

from __future__ import annotations

import threading

import pytest
from websockets.sync.client import connect

from server import Limits

from ..helpers import StreamCheck, running_server, stalled_client, wait_until

pytestmark = pytest.mark.timeout(60)

MESSAGES = 300
SIZE = 32 * 1024
LIMIT = 1024 * 1024
WINDOW = 8  # messages the healthy client may be behind: 256 KiB, a quarter of its queue limit


def test_broadcast_closes_the_stalled_client_and_serves_the_rest() -> None:
    with running_server(Limits(ping_interval=None, max_queue_bytes=LIMIT, close_timeout=1.0, stall_timeout=0.3)) as srv:
        hub = srv.router.hub  # type: ignore[attr-defined]
        received: list[bytes] = []
        with connect(f"{srv.url}/broadcast", max_size=None, compression=None) as healthy:
            stalled = stalled_client(srv.port, "/broadcast")
            assert wait_until(lambda: len(hub.subscribers) == 2, 5)
            # The publisher stays at most WINDOW messages ahead of the healthy client (counted, not timed), so
            # its queue never fills and nothing but the stalled client can be judged, however loaded the machine.
            credit = threading.Semaphore(WINDOW)

            def read() -> None:
                for _ in range(MESSAGES):
                    message = healthy.recv(timeout=20)
                    assert isinstance(message, bytes)
                    received.append(message)
                    credit.release()

            reader = threading.Thread(target=read)
            reader.start()
            outcomes = []
            for i in range(MESSAGES):
                assert credit.acquire(timeout=20), f"the healthy client stopped after {len(received)} messages"
                payload = i.to_bytes(4, "big") + bytes(SIZE - 4)
                outcomes.append(hub.publish(payload).result)
            reader.join(30)
            stalled.close()
        assert [int.from_bytes(m[:4], "big") for m in received] == list(range(MESSAGES))
        assert wait_until(lambda: srv.stats.closed_by_policy == 1, 10), srv.stats.as_dict()
        # Every publish reached the healthy client; once the stalled one was closed, publishes say so.
        assert all(o.queued >= 1 for o in outcomes)
        assert outcomes[-1].queued == 1 and sum(o.closed for o in outcomes) >= 1


def test_unpaced_stream_producers_end_once_the_stalled_client_is_closed() -> None:
    limits = Limits(ping_interval=None, max_queue_bytes=LIMIT, close_timeout=1.0, stall_timeout=0.3)
    with running_server(limits) as srv:
        stalled = stalled_client(srv.port, "/stream?producers=4&count=2000&size=16384&pace=0")
        with stalled:
            # All 4 producers end (on ConnectionClosed) although nobody reads.
            assert wait_until(lambda: srv.stats.closed_by_policy == 1, 10), srv.stats.as_dict()
            assert wait_until(lambda: not [t for t in threading.enumerate() if "producer" in t.name], 10)
        with connect(f"{srv.url}/stream?producers=4&count=200&size=16384", max_size=None) as ws:
            check = StreamCheck(4, 200)
            for message in ws:
                check.add(message)
        check.assert_complete()
