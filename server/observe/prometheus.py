"""Prometheus exposition of ``Server.metrics``, with ``prometheus_client`` (``pip install 'wsrace[metrics]'``).

A custom collector: nothing on the hot path calls prometheus_client. Each
scrape takes one :class:`~server.observe.metrics.Metrics` snapshot and turns
it into metric families, named as Prometheus asks (``wsrace_`` prefix,
``_total`` counters, ``_seconds`` and ``_bytes`` units, no per-connection
labels: the slowest connections are in ``Server.metrics`` and the log).

Served on a port of its own (:func:`serve`, ``--metrics-port``), not as a
route of the WebSocket port: that port is public, and with ``--processes N``
each request would reach one random process. The supervisor of
``--processes N`` serves the one port, gathering every child's text and
labelling it ``process="i"`` (:func:`serve_gathered`).
"""

from __future__ import annotations

import logging
import threading
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import WsraceError
from ..histogram import HistogramSnapshot
from .metrics import Metrics

logger = logging.getLogger(__name__)

METRICS_EXTRA = "pip install 'wsrace[metrics]'"

# Stats counters by name: (metric name without _total, help, (label name, label value)).
_COUNTERS: dict[str, tuple[str, str, tuple[str, str] | None]] = {
    "accepted": ("wsrace_connections_accepted", "TCP connections accepted (or adopted from a WSGI server).", None),
    "opened": ("wsrace_connections_opened", "WebSocket handshakes completed (101 sent).", None),
    "closed": ("wsrace_connections_ended", "Connections whose socket was closed, in any phase.", None),
    "http_errors": ("wsrace_http_errors", "Requests answered with an HTTP error instead of a 101.", None),
    "route_errors": ("wsrace_route_errors", "route() raised something other than HttpError: answered 500.", None),
    "handshake_timeouts": ("wsrace_handshake_timeouts", "No complete request (or TLS handshake) in time.", None),
    "busy_handshake_timeouts": ("wsrace_busy_handshake_timeouts", "408 after the shorter timeout under pressure.", None),
    "tls_handshake_errors": ("wsrace_tls_handshake_errors", "TLS handshakes that failed.", None),
    "rejected_busy": ("wsrace_admission_refused", "Connections refused by admission.", ("reason", "busy")),
    "rejected_per_ip": ("wsrace_admission_refused", "Connections refused by admission.", ("reason", "per_ip")),
    "accept_errors": ("wsrace_accept_errors", "accept() failures (EMFILE, ENFILE, ...).", None),
    "accept_pauses": ("wsrace_accept_pauses", "Times the listener was paused after such a failure.", None),
    "closed_stalled": ("wsrace_closed_by_policy", "Clients closed with 1008 by the overflow policy.", ("reason", "stalled")),
    "closed_too_slow": ("wsrace_closed_by_policy", "Clients closed with 1008 by the overflow policy.", ("reason", "too_slow")),
    "dropped_messages": ("wsrace_dropped_messages", "Messages discarded by the drop overflow policy.", None),
    "protocol_errors": ("wsrace_protocol_errors", "Clients that broke the WebSocket protocol (closed 1002/1007/1009).", None),
    "ping_timeouts": ("wsrace_ping_timeouts", "Clients closed for not answering a keepalive ping.", None),
    "keepalive_pings": ("wsrace_keepalive_pings", "Keepalive pings sent.", None),
    "keepalive_pongs": ("wsrace_keepalive_pongs", "Pongs received for them.", None),
    "handler_errors": ("wsrace_handler_errors", "Handler calls that raised (the client is closed with 1011).", None),
    "inline_slow": ("wsrace_inline_slow", "Inline handlers that held the IO thread past Limits.inline_warn.", None),
    "bytes_in": ("wsrace_received_bytes", "Bytes read from client sockets.", None),
    "messages_in": ("wsrace_received_messages", "Data messages received and handed to handlers.", None),
    "bytes_out": ("wsrace_sent_bytes", "Bytes client sockets took.", None),
    "frames_out": ("wsrace_sent_frames", "Frames client sockets took whole (data, control and HTTP replies).", None),
    "producer_waits": ("wsrace_producer_waits", "Times a producer found a client's queue full and waited.", None),
    "slow_client_warnings": ("wsrace_slow_client_warnings",
                             "Connections whose oldest queued message passed Limits.slow_warn (once per episode).", None),
    "broker_reconnects": ("wsrace_broker_reconnects", "Times the publisher or reader reconnected to the broker.", None),
    "broker_publishes_queued": ("wsrace_broker_publishes_queued",
                                "Publishes made while the broker was unreachable (sent once it is back).", None),
    "broker_publishes_failed": ("wsrace_broker_publishes_failed",
                                "Publishes refused (local queue full) or unsent at shutdown.", None),
    "broker_gaps": ("wsrace_broker_gaps", "Times a reader found entries it never read were gone.", None),
    "broker_messages_missed": ("wsrace_broker_messages_missed", "Messages known lost in those gaps.", None),
    "broker_subscribers_closed": ("wsrace_broker_subscribers_closed",
                                  "Subscribers closed with 1013 because of a gap.", None),
    "broker_duplicates": ("wsrace_broker_duplicates", "Second copies of a retried publish, dropped by the reader.", None),
    "resumes": ("wsrace_resumes", "Subscriptions that resumed from a position (since=).", None),
    "replayed": ("wsrace_replayed_messages", "Messages sent from a topic's history to resuming subscribers.", None),
    "resumes_refused": ("wsrace_resumes_refused",
                        "Resumes refused with 4410: the history no longer held the position.", None),
}
_SUMS = {"closed_by_policy"}  # the sum of labelled series above: exposing it too would double every sum()


def _histogram(name: str, doc: str, h: HistogramSnapshot) -> Any:
    from prometheus_client.core import HistogramMetricFamily

    buckets = [(_le(bound), count) for bound, count in h.cumulative()]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h.sum)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def families(m: Metrics) -> Iterator[Any]:
    """The metric families of one snapshot."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    counters: dict[str, Any] = {}
    for key, value in m.counters.items():
        if key in _SUMS:
            continue
        name, doc, label = _COUNTERS.get(key) or (f"wsrace_{key}", f"Server counter {key} (server/stats.py).", None)
        family = counters.get(name)
        if family is None:
            family = counters[name] = CounterMetricFamily(name, doc, labels=[label[0]] if label else None)
        family.add_metric([label[1]] if label else [], value)
    closes = CounterMetricFamily("wsrace_connections_closed", "WebSocket connections closed, by close code and by "
                                 "who sent the first close frame (none: no closing handshake).", labels=["code", "by"])
    for (code, by), n in sorted(m.closes.items()):
        closes.add_metric([str(code), by], n)
    backlog_waits = CounterMetricFamily("wsrace_backlog_waits", "Times a producer waited for the server-wide backlog.")
    backlog_waits.add_metric([], m.backlog_waits)
    yield from counters.values()
    yield closes
    yield backlog_waits

    yield _histogram("wsrace_send_to_socket_seconds", "From send()/broadcast() queueing a message to the socket taking "
                     "its last byte; observed per batch a producer queued, for its first (longest-waiting) message.",
                     m.send_latency)
    yield _histogram("wsrace_handler_seconds", "Time in on_message (worker pool or inline).", m.handler_seconds)
    yield _histogram("wsrace_io_lag_seconds", "How long a callable posted to the IO thread from another thread waits "
                     "before it runs (probed once a second).", m.io_lag)

    s = m.sample
    gauges: tuple[tuple[str, str, float], ...] = (
        ("wsrace_connections_open", "Open (or closing) WebSocket connections.", s.connections),
        ("wsrace_handshakes_in_progress", "Connections still in their HTTP or TLS handshake.", s.handshakes),
        ("wsrace_queued_bytes", "Bytes queued for clients and not yet taken by their sockets.", s.queued_bytes),
        ("wsrace_oldest_queued_seconds", "Age of the oldest message queued for any client.", s.oldest_age),
        ("wsrace_slow_connections", "Connections whose oldest queued message is older than Limits.slow_warn.", s.slow),
        ("wsrace_messages_in_handlers", "Messages received and not yet handled (queued or running).", s.in_handlers),
        ("wsrace_backlog_bytes", "Server-wide: bytes producers sent that the IO thread has not taken yet.",
         m.backlog_bytes),
        ("wsrace_io_busy_ratio", "The IO thread's CPU time over the last second, as a share of it.", s.io_busy),
        ("wsrace_worker_threads", "Worker threads started.", m.workers),
    )
    for name, doc, reading in gauges:
        gauge = GaugeMetricFamily(name, doc)
        gauge.add_metric([], reading)
        yield gauge
    # Distributions over connections, now: cumulative counts by upper bound (the classic text format has no
    # gauge histogram: prometheus_client writes one as _bucket/_gcount/_gsum that its own parser splits apart).
    for name, doc, h in (
        ("wsrace_connections_by_queue_age", "Open connections whose oldest queued message is at most le seconds old "
         "(none queued: 0).", s.age_histogram),
        ("wsrace_connections_by_queued_bytes", "Open connections with at most le bytes queued.", s.queued_histogram),
    ):
        over = GaugeMetricFamily(name, doc, labels=["le"])
        for bound, count in h.cumulative():
            over.add_metric([_le(bound)], count)
        yield over

    broker = m.broker
    if broker:
        queue = GaugeMetricFamily("wsrace_broker_publish_queue", "Publishes not yet acknowledged by the broker.")
        queue.add_metric([], broker["publish_queue"])  # type: ignore[arg-type]
        yield queue
        yield _histogram("wsrace_broker_publish_seconds", "From publish() to the broker acknowledging it.",
                         broker["publish_seconds"])  # type: ignore[arg-type]
        yield _histogram("wsrace_broker_read_lag_seconds", "From an entry's broker timestamp to its local fan-out "
                         "(includes clock skew to the broker's host).", broker["read_lag"])  # type: ignore[arg-type]
        lag = GaugeMetricFamily("wsrace_broker_topic_lag_seconds", "That lag for each topic's last entry read.",
                                labels=["topic"])
        for topic, seconds in sorted(broker["topic_lag"].items()):  # type: ignore[attr-defined]
            lag.add_metric([topic], seconds)
        yield lag


class SnapshotCollector:
    """A prometheus_client collector over a ``Metrics`` source (``Server.metrics``): one snapshot per scrape."""

    def __init__(self, snapshot: Callable[[], Metrics]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Any]:
        return list(families(self._snapshot()))


def require_client() -> Any:
    """The prometheus_client module; :class:`WsraceError` naming the extra when it is not installed."""
    try:
        import prometheus_client
    except ImportError:
        raise WsraceError(f"--metrics-port needs prometheus_client, an optional extra: {METRICS_EXTRA}") from None
    return prometheus_client


class MetricsHttpServer:
    """The ``/metrics`` HTTP server of one process (a thread of prometheus_client's), stopped with :meth:`close`."""

    def __init__(self, httpd: Any, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.port: int = httpd.server_port

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def _serve(collector: Any, host: str, port: int) -> MetricsHttpServer:
    client = require_client()
    registry = client.CollectorRegistry(auto_describe=False)
    registry.register(collector)
    httpd, thread = client.start_http_server(port, addr=host, registry=registry)
    return MetricsHttpServer(httpd, thread)


def serve(snapshot: Callable[[], Metrics], host: str, port: int) -> MetricsHttpServer:
    """Serve ``snapshot()`` as Prometheus text on ``http://host:port/metrics`` (port 0: a free one)."""
    return _serve(SnapshotCollector(snapshot), host, port)


class GatheringCollector:
    """The supervisor's: every child's families, each sample labelled ``process="i"``, merged by name."""

    def __init__(self, children: Callable[[], list[tuple[int, str | None]]], timeout: float = 2.0) -> None:
        self._children = children  # (process index, its metrics URL or None while it starts)
        self._timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="wsrace-metrics-gather")

    def _fetch(self, url: str) -> str:
        with urllib.request.urlopen(url, timeout=self._timeout) as reply:  # our own child, on 127.0.0.1
            return reply.read().decode("utf-8")  # type: ignore[no-any-return]

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily, Metric
        from prometheus_client.parser import text_string_to_metric_families

        children = self._children()
        up = GaugeMetricFamily("wsrace_process_up", "1 if the process answered this scrape.", labels=["process"])
        fetches = {index: self._pool.submit(self._fetch, url) for index, url in children if url}
        merged: dict[str, Any] = {}
        for index, _url in children:
            future = fetches.get(index)
            try:
                text = future.result() if future is not None else None
            except Exception as exc:  # a child restarting, or stuck: the scrape still answers for the others
                logger.info("metrics: process %d did not answer: %s", index, exc)
                text = None
            up.add_metric([str(index)], 1 if text is not None else 0)
            for family in text_string_to_metric_families(text or ""):
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                for sample in family.samples:
                    into.samples.append(sample._replace(labels={**sample.labels, "process": str(index)}))
        return [up, *merged.values()]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def serve_gathered(children: Callable[[], list[tuple[int, str | None]]], host: str, port: int) -> MetricsHttpServer:
    """The supervisor's ``/metrics``: every child's metrics on one port, labelled by process index."""
    return _serve(GatheringCollector(children), host, port)
