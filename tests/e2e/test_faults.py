"""Faults around healthy clients: resets, a client that never reads, garbage, handler crashes.

The healthy clients must finish with full counts, no producer serving them
may wait, the stalled client's producers wait at most once each, nothing may escape unhandled (the autouse fixture in conftest checks
threads and the IO loop), no thread may be left after shutdown, and the server
must accept new clients afterwards.
"""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from repro.checker import StreamSpec
from repro.client import ClientOptions, check_url
from server import Limits
from server.connections.connection import Connection
from server.connections.handle import ConnectionHandle
from server.demo.app import EchoHandler

from ..helpers import client_frame, echo_works, read_server_frames, running_server, stalled_client, wait_until, ws_handshake

pytestmark = pytest.mark.timeout(120)

CLIENTS = 10  # 2 of them (20 %) reset mid-stream
PRODUCERS, COUNT, SIZE = 8, 500, 1024  # 4 MB per healthy stream: always under the outbox limit
LIMIT = 8 * 1024 * 1024


def test_faults_do_not_disturb_healthy_clients(monkeypatch) -> None:
    conns: list[ConnectionHandle] = []  # every connection's handle
    original_start = Connection.start

    def recording_start(self):
        conns.append(self.handle)
        original_start(self)

    monkeypatch.setattr(Connection, "start", recording_start)

    def crashing(self, conn, message):
        if message == "crash":
            raise RuntimeError("worker bug on purpose")
        conn.send(message)

    monkeypatch.setattr(EchoHandler, "on_message", crashing)
    before = {t.ident for t in threading.enumerate()}
    target = f"/stream?producers={PRODUCERS}&count={COUNT}&size={SIZE}&pace=0"

    with running_server(Limits(ping_interval=None, max_queue_bytes=LIMIT, close_timeout=2, stall_timeout=1.0)) as srv:
        results: dict[int, tuple] = {}

        def healthy(i: int) -> None:
            results[i] = check_url("127.0.0.1", srv.port, target, StreamSpec(PRODUCERS, COUNT),
                                   ClientOptions(rcvbuf=None, ping_interval=0.005, time_limit=60))

        def resetter() -> None:
            sock, _ = ws_handshake(srv.port, target)
            sock.recv(65536)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST mid-stream

        threads = [threading.Thread(target=healthy, args=(i,)) for i in range(CLIENTS - 2)]
        threads += [threading.Thread(target=resetter) for _ in range(2)]
        # A client that never reads a 40 MB unpaced stream: closed with 1008 by policy.
        stalled = stalled_client(srv.port, f"/stream?producers=8&count=5000&size={SIZE}&pace=0")
        # A client that sends garbage mid-session, and one whose message crashes a worker.
        garbage, g_rest = ws_handshake(srv.port, "/echo")
        crasher, c_rest = ws_handshake(srv.port, "/echo")
        for t in threads:
            t.start()
        garbage.sendall(client_frame(0x1, b"fine") + b"\x0f\xff garbage, not a frame")
        crasher.sendall(client_frame(0x1, b"crash"))
        for t in threads:
            t.join(90)

        g_frames, _ = read_server_frames(garbage, g_rest)
        c_frames, _ = read_server_frames(crasher, c_rest)
        assert (0x8, struct.pack("!H", 1002)) == (g_frames[-1][0], g_frames[-1][1][:2])
        assert c_frames[-1][0] == 0x8 and c_frames[-1][1][:2] == struct.pack("!H", 1011)
        # The close is recorded before it is counted (Connection._close_for_overflow): the count is enough to wait for.
        assert wait_until(lambda: srv.stats.closed_by_policy == 1, 15), srv.stats.as_dict()
        assert [c.close_code for c in conns if c.close_code == 1008] == [1008], [c.close_code for c in conns]
        for sock in (stalled, garbage, crasher):
            sock.close()

        assert len(results) == CLIENTS - 2
        for i, (summary, ended) in results.items():
            assert summary.anomalies == {}, (i, {k: v.detail for k, v in summary.anomalies.items()})
            assert summary.valid_messages == PRODUCERS * COUNT and summary.close_code == 1000, (i, ended)
        # Producers waited only for the stalled client (until it was closed), never for a healthy one.
        waits = {c.path: c.waits for c in conns if c.waits}
        assert list(waits) == ["/stream"], waits
        assert [c.close_code for c in conns if c.waits] == [1008]
        assert echo_works(srv.port)
        assert srv.stats.handler_errors == 1 and srv.stats.protocol_errors >= 1

    def left() -> list[str]:
        return [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]

    assert wait_until(lambda: not left(), 5), f"threads left after shutdown: {left()}"
