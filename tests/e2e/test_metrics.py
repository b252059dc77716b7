"""Metrics (issue 23) as an operator sees them: ``python -m server --metrics-port 0`` scraped over HTTP.

The scrape is parsed with prometheus_client's own parser. A client that
stops reading must show up before it is closed: its queue age rising, the
slow-connection gauge, the log line; the send-to-socket histogram fills with
ordinary traffic. With ``--processes 2`` (a real redis-server as the broker)
one scrape covers both processes, labelled by process.
"""

from __future__ import annotations

import socket
import sys
import time
import urllib.request

import pytest
from websockets.sync.client import connect

from server import DemoApp, Limits, Server
from server.cli import main as cli_main

from ..helpers import wait_until
from ..instance import Instance
from ..redis_server import RedisServer

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.timeout(90),
              pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")]


def scrape(instance: Instance) -> dict[str, list]:
    """Samples by sample name (``x_total``, ``x_bucket``, ...), each ``(labels, value)``."""
    assert instance.metrics_url is not None
    with urllib.request.urlopen(instance.metrics_url, timeout=10) as reply:
        assert reply.headers.get_content_type() == "text/plain"
        text = reply.read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for got, v in samples.get(name, []) if labels.items() <= got.items())


def stuck_client(url: str, path: str) -> socket.socket:
    """A client that completes the handshake and then never reads again (a tiny receive buffer)."""
    host, port = url.removeprefix("ws://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += sock.recv(1)  # byte by byte: nothing after the reply's head is read
    assert reply.startswith(b"HTTP/1.1 101"), reply
    return sock


def test_a_stuck_client_shows_in_the_scrape_before_it_is_closed(instances) -> None:
    srv = Instance("--metrics-port", "0", "--slow-warn", "0.5")
    instances.append(srv)
    with connect(f"{srv.url}/echo") as echo:  # ordinary traffic: fills the send-to-socket histogram
        for i in range(50):
            echo.send(f"m{i}")
            assert echo.recv(timeout=10) == f"m{i}"
    stuck = stuck_client(srv.url, "/stream?producers=1&count=2000&size=65536")
    try:
        assert wait_until(lambda: value(scrape(srv), "wsrace_slow_connections") == 1, 15), srv.log()[-2000:]
        first = scrape(srv)
        time.sleep(1.5)
        second = scrape(srv)
    finally:
        stuck.close()

    # The stuck client's oldest queued message ages, one scrape to the next; the queue holds megabytes.
    assert value(second, "wsrace_oldest_queued_seconds") > value(first, "wsrace_oldest_queued_seconds") > 0.5
    assert value(second, "wsrace_queued_bytes") > 1 << 20
    assert value(second, "wsrace_connections_by_queue_age", le="0.5") == 0  # the one queued connection is older
    assert value(second, "wsrace_connections_by_queue_age", le="+Inf") == 1
    assert value(second, "wsrace_slow_client_warnings_total") == 1  # once for the episode, not once per probe
    assert "slow client: its oldest queued message is" in srv.log()
    # Counted where it happened: 50 echoes each way, one histogram observation per batch, the IO thread probed.
    assert value(second, "wsrace_received_messages_total") == 50
    assert 1 <= value(second, "wsrace_send_to_socket_seconds_count") <= 50 + 2000
    assert value(second, "wsrace_send_to_socket_seconds_bucket", le="+Inf") == value(second, "wsrace_send_to_socket_seconds_count")
    assert value(second, "wsrace_io_lag_seconds_count") >= 2
    assert value(second, "wsrace_connections_closed_total", code="1000", by="client") == 1  # the echo client
    assert srv.stop() == 0


def test_with_two_processes_one_scrape_covers_both(instances) -> None:
    redis = RedisServer().start()
    try:
        srv = Instance("--metrics-port", "0", "--processes", "2", "--broker", redis.url)
        instances.append(srv)
        # SO_REUSEPORT spreads connections by hash: 24 of them reach both processes (all on one: p = 2**-23).
        for _ in range(24):
            with connect(f"{srv.url}/echo") as ws:
                ws.send("x")
                assert ws.recv(timeout=10) == "x"
        # One publish through Redis: the publishing process times it; every process's reader reads it.
        with connect(f"{srv.url}/broadcast") as pub:
            pub.send("hello, both")
            assert pub.recv(timeout=10) == "hello, both"

        def read_by_both(samples: dict[str, list]) -> bool:
            return all(value(samples, "wsrace_broker_read_lag_seconds_count", process=p) >= 1 for p in ("0", "1"))

        assert wait_until(lambda: read_by_both(scrape(srv)), 10)
        samples = scrape(srv)
        assert sorted(labels["process"] for labels, v in samples["wsrace_process_up"] if v == 1) == ["0", "1"]
        opened = {labels["process"]: v for labels, v in samples["wsrace_connections_opened_total"]}
        assert sorted(opened) == ["0", "1"] and sum(opened.values()) == 25 and min(opened.values()) >= 1, opened
        assert value(samples, "wsrace_broker_publish_seconds_count") == 1
        assert value(samples, "wsrace_broker_publish_queue") == 0
        assert {labels["process"] for labels, _ in samples["wsrace_broker_topic_lag_seconds"]} == {"0", "1"}
        assert srv.stop() == 0
    finally:
        redis.stop()


def test_metrics_port_without_prometheus_client_names_the_extra(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails as if not installed
    assert cli_main(["--port", "0", "--metrics-port", "0"]) == 2
    assert "pip install 'wsrace[metrics]'" in capsys.readouterr().err


def test_server_metrics_snapshot_in_process() -> None:
    """``Server.metrics`` without Prometheus: the same figures, as data; ``metrics=False`` turns them off."""
    srv = Server(DemoApp, port=0, limits=Limits(ping_interval=None)).start()
    try:
        with connect(f"{srv.url}/echo") as ws:
            for i in range(20):
                ws.send(b"%d" % i)
                assert ws.recv(timeout=10) == b"%d" % i
        assert wait_until(lambda: srv.metrics.closes == {(1000, "client"): 1}, 5), srv.metrics.closes
        m = srv.metrics
        assert m.counters["messages_in"] == 20 and m.counters["opened"] == 1
        assert m.handler_seconds.count == 20
        assert 1 <= m.send_latency.count <= 20
        assert wait_until(lambda: srv.metrics.io_lag.count >= 1, 5)
        assert m.as_dict()["closes"] == {"1000/client": 1}
    finally:
        srv.shutdown()
    off = Server(DemoApp, port=0, limits=Limits(ping_interval=None), metrics=False).start()
    try:
        with connect(f"{off.url}/echo") as ws:
            ws.send("x")
            assert ws.recv(timeout=10) == "x"
        m = off.metrics
        assert m.counters["messages_in"] == 1  # counters stay on
        assert m.send_latency.count == 0 and m.counters["bytes_out"] == 0  # the send path's figures are off
    finally:
        off.shutdown()
