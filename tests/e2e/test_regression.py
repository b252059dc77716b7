"""The regression test: real, independent clients against the fixed server — and against the bug.

Against ``queued`` every client must receive every message intact, in
per-producer order, with close code 1000. Against ``direct`` and ``locked``
each client must notice (protocol error, or a message that fails its CRC or
sequence check) — proof that these tests can fail. ``make mutation`` runs this
module against mutated servers and requires it to go red.

The fixed-server tests run again over wss:// (the throwaway CA of tests/tls.py),
with the same workloads. Over TLS the unsafe ``direct`` discipline (in a child
process) breaks the SSL object itself: the IO thread's retry of a write the
worker threads interleaved with fails (``SSL: BAD_LENGTH``) and the server
drops the connection, a torn record reaches the client
(``DECRYPTION_FAILED_OR_BAD_RECORD_MAC``, ``WRONG_VERSION_NUMBER``), or the
server crashes. Every client then ends without the complete stream and a 1000
— the assertion of the fixed-server tests fails — though simple_websocket.Client
often sees only a close without a code (1005) and nothing delivered.
"""

from __future__ import annotations

import pytest

from repro.disciplines import serve
from repro.server_proc import ServerProcess

from ..clients import CLIENTS, Outcome
from ..helpers import StreamCheck
from ..tls import TLSFiles

pytestmark = pytest.mark.timeout(180)

PRODUCERS = 8
COUNT = 300  # per producer: 2,400 messages per run
# Mostly 16 B - 64 KiB, every 50th message per producer 256 KiB - 1 MiB.
MIXED = f"/stream?producers={PRODUCERS}&count={COUNT}&size=16&maxsize=65536&bigevery=50&bigsize=262144&bigmaxsize=1048576"
# What makes the bug show: large frames, small buffers (see README, "Why it is timing-dependent").
TEARING = "/stream?producers=8&count=100&size=262144"
TEARING_COUNT = 100
# A tiny server SO_SNDBUF keeps every write partial. (It also slows loopback TCP to a crawl
# with a large client window — ACK pacing — so the plain delivery runs use the OS default.)
SNDBUF = 16 * 1024
# In the unsafe runs the server's IO thread also sends keepalive pings every 2 ms, as
# simple-websocket's reader thread does: that is what tears the `locked` discipline.
KEEPALIVE = 0.002

CASES = [pytest.param(name, deflate, id=f"{name}-{'deflate' if deflate else 'plain'}")
         for name, (_, supports) in CLIENTS.items() for deflate in ([False, True] if supports else [False])]


@pytest.mark.parametrize("client,deflate", CASES)
def test_fixed_server_delivers_every_message_intact(client: str, deflate: bool) -> None:
    run, _ = CLIENTS[client]
    check = StreamCheck(PRODUCERS, COUNT)
    with serve("queued") as served:
        outcome = run(served.port, MIXED, check, deflate, False)
    assert not outcome.error, outcome
    assert outcome.close_code == 1000, outcome
    check.assert_complete()


@pytest.mark.parametrize("client,deflate", CASES)
def test_fixed_server_under_backpressure_and_pings(client: str, deflate: bool) -> None:
    """The tearing workload (small buffers, client pinging) — clean on the fixed server."""
    run, _ = CLIENTS[client]
    check = StreamCheck(8, 30)
    # simple_websocket.Client makes its own socket, so its window stays large: skip the tiny SO_SNDBUF.
    with serve("queued", sndbuf=None if client == "simple_websocket.Client" else SNDBUF) as served:
        outcome = run(served.port, TEARING.replace("count=100", "count=30"), check, deflate, True)
    assert not outcome.error, outcome
    assert outcome.close_code == 1000, outcome
    check.assert_complete()


@pytest.mark.parametrize("discipline", ["direct", "locked"])
@pytest.mark.parametrize("client", list(CLIENTS))
def test_unsafe_server_is_caught_by_every_client(client: str, discipline: str) -> None:
    run, _ = CLIENTS[client]
    check = StreamCheck(8, TEARING_COUNT)
    with serve(discipline, sndbuf=SNDBUF, ping_interval=KEEPALIVE) as served:
        outcome = run(served.port, TEARING, check, False, True)
    caught = outcome.protocol_error or bool(check.errors)
    assert caught, f"{client} accepted a {discipline} stream: {outcome}, {check.received} messages, no errors"


def _assert_clean(outcome: Outcome, check: StreamCheck) -> None:
    assert not outcome.error, outcome
    assert outcome.close_code == 1000, outcome
    check.assert_complete()


@pytest.mark.parametrize("client,deflate", CASES)
def test_fixed_server_over_wss_delivers_every_message_intact(client: str, deflate: bool, tls_files: TLSFiles) -> None:
    run, _ = CLIENTS[client]
    check = StreamCheck(PRODUCERS, COUNT)
    with serve("queued", ssl_context=tls_files.server_context()) as served:
        outcome = run(served.port, MIXED, check, deflate, False, ssl_context=tls_files.client_context())
    _assert_clean(outcome, check)


@pytest.mark.parametrize("client,deflate", CASES)
def test_fixed_server_over_wss_under_backpressure_and_pings(client: str, deflate: bool, tls_files: TLSFiles) -> None:
    """Small buffers on both sides: the server's TLS writes keep meeting want-write and retrying the same bytes."""
    run, _ = CLIENTS[client]
    check = StreamCheck(8, 30)
    with serve("queued", sndbuf=None if client == "simple_websocket.Client" else SNDBUF,
               ssl_context=tls_files.server_context()) as served:
        outcome = run(served.port, TEARING.replace("count=100", "count=30"), check, deflate, True,
                      ssl_context=tls_files.client_context())
    _assert_clean(outcome, check)


@pytest.mark.parametrize("client", list(CLIENTS))
def test_unsafe_server_over_wss_is_caught_by_every_client(client: str, tls_files: TLSFiles) -> None:
    """``direct`` over TLS: what the fixed-server tests assert (every message intact, then 1000) fails for every client.

    The server runs in a child process: two threads in one SSL object can also crash it (``malloc(): unsorted
    double linked list corrupted``, once in 50 runs here), which must not take the test run with it.
    """
    run, _ = CLIENTS[client]
    check = StreamCheck(8, TEARING_COUNT)
    server = ServerProcess("direct", tls_files.cert, tls_files.key, sndbuf=SNDBUF)
    port = server.start()
    try:
        outcome = run(port, TEARING, check, False, True, ssl_context=tls_files.client_context())
    finally:
        died = server.stop()
    with pytest.raises(AssertionError):
        _assert_clean(outcome, check)
    print(f"{client} against direct over TLS: {outcome}, {check.received} messages, {len(check.errors)} bad; "
          f"server: {died.exit}, {died.fatal or died.errors}")
