"""Soak: 100 clients (half with permessage-deflate, half over wss://) x 8 producers, 500,000+ messages.

Mostly small messages (16 B - 2 KiB), one in every 1,000 between 64 KiB and
1 MiB. Every message is checked by the strict wire checker: zero anomalies,
zero loss, per-producer order kept. Prints totals and the rate.

A port speaks TLS or not, so two servers run side by side in the process, one
plain and one TLS (the throwaway certificate of tests/tls.py), each with its
IO thread: 25 clients each of plain, plain+deflate, TLS and TLS+deflate.
"""

from __future__ import annotations

import threading
import time

import pytest

from repro.checker import StreamSpec
from repro.client import ClientOptions, check_url
from server import Limits

from ..helpers import running_server
from ..tls import TLSFiles

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

CLIENTS = 100
PRODUCERS = 8
COUNT = 625  # per producer: 5,000 messages per client, 500,000 in all
# bigevery is per producer: every 125th of a producer's messages is every 1,000th of the connection's.
TARGET = (f"/stream?producers={PRODUCERS}&count={COUNT}&size=16&maxsize=2048"
          "&bigevery=125&bigsize=65536&bigmaxsize=1048576")


@pytest.mark.timing  # under coverage's tracing, 50 TLS handshakes at once outlasted the client's timeout (once in CI-like runs)
def test_soak_100_clients_half_deflate_half_tls(tls_files: TLSFiles) -> None:
    results: list[tuple] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    limits = Limits(ping_interval=None, max_queue_bytes=4 * 1024 * 1024)

    with running_server(limits, workers=8) as plain, \
            running_server(limits, workers=8, ssl_context=tls_files.server_context()) as secure:

        def client(i: int) -> None:
            tls = i % 4 >= 2
            try:
                summary, ended = check_url("127.0.0.1", (secure if tls else plain).port, TARGET, StreamSpec(PRODUCERS, COUNT),
                                           ClientOptions(rcvbuf=None, ping_interval=None, deflate=i % 2 == 1, time_limit=200,
                                                         ssl_context=tls_files.client_context() if tls else None))
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
        tls_opened = secure.stats.opened

    assert not errors, errors[:3]
    assert len(results) == CLIENTS
    assert tls_opened == CLIENTS // 2
    total = sum(s.valid_messages for _, s, _ in results)
    total_bytes = sum(s.bytes_checked for _, s, _ in results)
    over_tls = sum(s.valid_messages for i, s, _ in results if i % 4 >= 2)
    bad = {i: {k: (a.count, a.detail) for k, a in s.anomalies.items()} for i, s, _ in results if s.anomalies}
    print(f"\nsoak: {CLIENTS} clients ({CLIENTS // 2} with deflate, {CLIENTS // 2} over TLS), {total:,} messages "
          f"({over_tls:,} over TLS), {total_bytes / 1e6:,.0f} MB on the wire in {elapsed:.1f} s: "
          f"{total / elapsed:,.0f} messages/s, {total_bytes / 1e6 / elapsed:,.1f} MB/s")
    assert not bad, f"{len(bad)} clients saw anomalies, e.g. {next(iter(bad.items()))}"
    assert total == CLIENTS * PRODUCERS * COUNT >= 500_000
    assert over_tls == total // 2
    assert all(s.close_code == 1000 for _, s, _ in results)
