"""The live feed: one small JSON point per metrics sample, pushed to every WebSocket on its route.

The demo mounts it at ``/live`` and its page (``/``) draws the points;
an application mounts it with ``LiveFeed(server)`` and routes a path to
:meth:`LiveFeed.handler`. Points are rates and percentiles over the last
interval, computed once per sample on the IO thread (after the probe) and
sent with ``send()`` from there, which never waits: one point a second.
A new viewer first gets the last :data:`HISTORY` points.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable
from typing import Any

from ..connections.handle import ConnectionHandle
from ..errors import ConnectionClosed
from .metrics import Metrics, Sample, Sampler

HISTORY = 300  # points kept for a new viewer: five minutes at one a second


def _ms(seconds: float | None) -> float | None:
    if seconds is None:
        return None
    return None if seconds == float("inf") else round(seconds * 1000, 3)


def point(now: Metrics, before: Metrics) -> dict[str, Any]:
    """What changed between two snapshots, per second, and the latest queue and IO-thread figures."""
    dt = max(now.wall - before.wall, 1e-6)

    def rate(name: str) -> float:
        return round((now.counters.get(name, 0) - before.counters.get(name, 0)) / dt, 1)

    latency = now.send_latency.since(before.send_latency)
    s = now.sample
    return {
        "t": round(now.wall, 3),
        "in_per_s": rate("messages_in"), "out_per_s": rate("frames_out"), "out_bytes_per_s": rate("bytes_out"),
        "latency_p50_ms": _ms(latency.quantile(0.5)), "latency_p99_ms": _ms(latency.quantile(0.99)),
        "latency_count": latency.count,
        "queued_bytes": s.queued_bytes, "oldest_age_s": round(s.oldest_age, 3),
        "io_lag_ms": round(s.io_lag * 1000, 3), "io_busy": round(s.io_busy, 3),
        "connections": s.connections, "slow": s.slow,
        "slowest": [{"peer": c.peer, "path": c.path, "age_s": round(c.age, 2), "queued_bytes": c.queued_bytes}
                    for c in s.slowest[:5]],
        "pid": os.getpid(),
    }


class LiveFeed:
    """Pushes a :func:`point` to its viewers after every sample of ``sampler`` (IO thread)."""

    def __init__(self, metrics: Callable[[], Metrics], sampler: Sampler) -> None:
        self._metrics = metrics
        self._viewers: set[ConnectionHandle] = set()  # IO thread: on_open, on_close and the sample listener
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._last: Metrics | None = None
        sampler.on_sample.append(self._on_sample)

    def handler(self) -> LiveFeedHandler:
        """The handler for one viewer's connection (what a router returns for the feed's path)."""
        return LiveFeedHandler(self)

    def _on_sample(self, sample: Sample) -> None:
        now = self._metrics()
        if self._last is not None:
            p = point(now, self._last)
            self.history.append(p)
            text = json.dumps({"point": p})
            for conn in list(self._viewers):
                try:
                    conn.send(text)
                except ConnectionClosed:
                    self._viewers.discard(conn)
        self._last = now

    def add_viewer(self, conn: ConnectionHandle) -> None:
        self._viewers.add(conn)
        conn.send(json.dumps({"history": list(self.history)}))

    def remove_viewer(self, conn: ConnectionHandle) -> None:
        self._viewers.discard(conn)


class LiveFeedHandler:
    """One viewer: gets the history, then a point per sample. What it sends is ignored. Runs on the IO thread."""

    inline = True

    def __init__(self, feed: LiveFeed) -> None:
        self._feed = feed

    def on_open(self, conn: ConnectionHandle) -> None:
        self._feed.add_viewer(conn)

    def on_message(self, conn: ConnectionHandle, message: str | bytes) -> None:
        pass

    def on_close(self, conn: ConnectionHandle) -> None:
        self._feed.remove_viewer(conn)
