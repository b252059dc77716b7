"""Soak: 100 clients (half with permessage-deflate) x 8 producers, 500,000+ messages.

Mostly small messages (16 B - 2 KiB), one in every 1,000 between 64 KiB and
1 MiB. Every message is checked by the strict wire checker: zero anomalies,
zero loss, per-producer order kept. Prints totals and the rate.
"""

from __future__ import annotations

import threading
import time

import pytest

from repro.checker import StreamSpec
from repro.client import ClientOptions, check_url
from server import Limits

from .helpers import running_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

CLIENTS = 100
PRODUCERS = 8
COUNT = 625  # per producer: 5,000 messages per client, 500,000 in all
# bigevery is per producer: every 125th of a producer's messages is every 1,000th of the connection's.
TARGET = (f"/stream?producers={PRODUCERS}&count={COUNT}&size=16&maxsize=2048"
          "&bigevery=125&bigsize=65536&bigmaxsize=1048576")


def test_soak_100_clients_half_deflate() -> None:
    results: list[tuple] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    with running_server(Limits(ping_interval=None, max_queue_bytes=4 * 1024 * 1024), workers=8) as srv:

        def client(i: int) -> None:
            try:
                summary, ended = check_url("127.0.0.1", srv.port, TARGET, StreamSpec(PRODUCERS, COUNT),
                                           ClientOptions(rcvbuf=None, ping_interval=None, deflate=i % 2 == 1, time_limit=200))
                with lock:
                    results.append((i, summary, ended))
            except BaseException as exc:
                with lock:
                    errors.append(exc)

        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,), name=f"soak-client-{i}") for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(220)
        elapsed = time.monotonic() - started

    assert not errors, errors[:3]
    assert len(results) == CLIENTS
    total = sum(s.valid_messages for _, s, _ in results)
    total_bytes = sum(s.bytes_checked for _, s, _ in results)
    bad = {i: {k: (a.count, a.detail) for k, a in s.anomalies.items()} for i, s, _ in results if s.anomalies}
    print(f"\nsoak: {CLIENTS} clients ({CLIENTS // 2} with deflate), {total:,} messages, {total_bytes / 1e6:,.0f} MB on the wire "
          f"in {elapsed:.1f} s: {total / elapsed:,.0f} messages/s, {total_bytes / 1e6 / elapsed:,.1f} MB/s")
    assert not bad, f"{len(bad)} clients saw anomalies, e.g. {next(iter(bad.items()))}"
    assert total == CLIENTS * PRODUCERS * COUNT >= 500_000
    assert all(s.close_code == 1000 for _, s, _ in results)
