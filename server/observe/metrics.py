"""``Server.metrics``: a snapshot of the server's counters, latencies, queues and IO thread.

Most figures are counted where they happen, by their one writer (the IO
thread, mostly: :class:`~server.stats.Stats`). What only the IO thread may
read — every connection's queue and the age of its oldest message — is
sampled by :class:`Sampler`: once per ``interval`` a small thread posts a
probe to the IO thread (``IOLoop.post``, as producers do), and the probe
measures how long it waited (the IO thread's lag) and walks the connections.
Snapshots are plain immutable data: any thread may read them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from ..admission import LogThrottle
from ..connections.connection import Connection
from ..connections.handle import State
from ..core.loop import IOLoop
from ..histogram import Histogram, HistogramSnapshot
from ..stats import Stats

logger = logging.getLogger(__name__)

# Over connections, at one instant: how old each one's oldest queued message is, and how many bytes it has queued.
AGE_BUCKETS = (0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
QUEUED_BUCKETS = (1024.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0)
TOP_N = 10


@dataclass(frozen=True)
class SlowConnection:
    """One connection among the slowest: its oldest queued message's age and what it has queued."""

    peer: str
    path: str
    age: float
    queued_bytes: int


@dataclass(frozen=True)
class Sample:
    """What the IO thread saw at one probe (see :class:`Sampler`)."""

    at: float = 0.0  # time.monotonic() of the probe
    io_lag: float = 0.0  # how long the probe, posted from another thread, waited to run
    io_busy: float = 0.0  # the IO thread's CPU time over the last interval, as a share of it (0..1)
    connections: int = 0  # open (and closing) WebSocket connections
    handshakes: int = 0  # connections still in their HTTP (or TLS) handshake
    queued_bytes: int = 0  # over every connection: reserved by messages the sockets have not taken
    oldest_age: float = 0.0  # the oldest queued message of any connection: its age
    slow: int = 0  # connections whose oldest queued message is older than Limits.slow_warn
    in_handlers: int = 0  # messages received and not yet handled (queued for or running in a handler)
    producer_waits: int = 0  # times producers found a client's queue full and waited (open connections)
    age_histogram: HistogramSnapshot = field(default_factory=lambda: Histogram(AGE_BUCKETS).snapshot())
    queued_histogram: HistogramSnapshot = field(default_factory=lambda: Histogram(QUEUED_BUCKETS).snapshot())
    slowest: tuple[SlowConnection, ...] = ()


@dataclass(frozen=True)
class Metrics:
    """Everything ``Server.metrics`` reports, at one time (``time.time()``: :attr:`wall`). Counters only rise."""

    wall: float
    counters: dict[str, int]  # Stats.as_dict(), plus the producers' waits of finished connections
    closes: dict[tuple[int, str], int]  # opened connections closed, by (close code, "client" | "server" | "none")
    send_latency: HistogramSnapshot  # send()/broadcast() -> the socket took the batch's last byte
    handler_seconds: HistogramSnapshot
    io_lag: HistogramSnapshot
    sample: Sample  # the IO thread's last probe
    backlog_bytes: int  # server-wide: sent by producers, not yet taken by the IO thread
    backlog_waits: int  # times a producer waited for that backlog
    workers: int  # worker threads started
    broker: dict[str, object]  # the broker's own figures (Broker.metrics())

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: histograms as ``{"count", "sum", "p50", "p99"}`` (bucket upper bounds), closes as "code/by"."""
        def hist(h: HistogramSnapshot) -> dict[str, object]:
            return {"count": h.count, "sum": h.sum, "p50": h.quantile(0.5), "p99": h.quantile(0.99)}

        s = self.sample
        return {
            "wall": self.wall, "counters": self.counters,
            "closes": {f"{code}/{by}": n for (code, by), n in sorted(self.closes.items())},
            "send_latency": hist(self.send_latency), "handler_seconds": hist(self.handler_seconds),
            "io_lag": hist(self.io_lag), "io_busy": s.io_busy, "connections": s.connections,
            "handshakes": s.handshakes, "queued_bytes": s.queued_bytes, "oldest_age": s.oldest_age, "slow": s.slow,
            "in_handlers": s.in_handlers, "backlog_bytes": self.backlog_bytes, "backlog_waits": self.backlog_waits,
            "workers": self.workers, "broker": self.broker,
            "slowest": [vars(c) for c in s.slowest],
        }


class Sampler:
    """Probes the IO thread every ``interval`` seconds from a thread of its own; keeps the last :class:`Sample`.

    ``connections()`` lists the server's connections (IO thread). A connection
    whose oldest queued message passes ``slow_warn`` seconds is counted as
    slow and logged once per episode (rate-limited across connections).
    """

    def __init__(self, loop: IOLoop, stats: Stats, connections: Callable[[], list[Connection]],
                 slow_warn: float, interval: float = 1.0) -> None:
        self._loop = loop
        self._stats = stats
        self._connections = connections
        self.slow_warn = slow_warn
        self.interval = interval
        self.latest = Sample()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._slow: set[Connection] = set()  # IO thread: connections in a slow episode (logged once each)
        self._log: LogThrottle | None = None
        self._cpu_at = (0.0, 0.0)  # (time.monotonic(), the IO thread's time.thread_time()) at the last probe
        self.on_sample: list[Callable[[Sample], None]] = []  # IO thread, after each probe (the live feed)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wsrace-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._loop.post(partial(self.probe, time.monotonic()))

    def probe(self, posted_at: float) -> Sample:
        """IO thread: measure the lag since ``posted_at``, walk the connections, publish the sample."""
        now = time.monotonic()
        lag = max(0.0, now - posted_at)
        self._stats.io_lag.observe(lag)
        if self._log is None:
            self._log = LogThrottle(self._loop, logger, interval=10.0)
        ages, queued_hist = Histogram(AGE_BUCKETS), Histogram(QUEUED_BUCKETS)
        connections = handshakes = queued_bytes = in_handlers = producer_waits = 0
        oldest_age = 0.0
        slowest: list[SlowConnection] = []
        slow_now: set[Connection] = set()
        for conn in self._connections():
            state = conn.state
            if state is State.HANDSHAKE:
                handshakes += 1
                continue
            if state is not State.OPEN and state is not State.CLOSING:
                continue
            connections += 1
            outbox = conn.writer.outbox
            queued = outbox.queued
            queued_bytes += queued
            producer_waits += outbox.waits
            if conn.session is not None:
                in_handlers += conn.session.inflight
            queued_hist.observe(queued)
            since = conn.writer.oldest_queued_since
            age = max(0.0, now - since) if since is not None else 0.0
            ages.observe(age)
            oldest_age = max(oldest_age, age)
            if since is not None:
                slowest.append(SlowConnection(conn.peer, conn.handle.path or "", age, queued))
            if age > self.slow_warn:
                slow_now.add(conn)
                if conn not in self._slow:  # a new episode: say so once
                    self._stats.slow_client_warnings += 1
                    self._log.note("slow-client", logging.WARNING,
                                   f"{conn.peer} {conn.handle.path or ''}: slow client: its oldest queued message "
                                   f"is {age:.1f} s old, {queued / (1 << 20):.1f} MiB queued (closed with 1008 "
                                   "if it takes nothing for stall_timeout)")
        self._slow = slow_now
        slowest.sort(key=lambda c: c.age, reverse=True)
        # Read here, on the IO thread: thread_time() is the calling thread's CPU time. Nothing is timed in the loop.
        last_at, last_cpu = self._cpu_at
        cpu = time.thread_time()
        self._cpu_at = (now, cpu)
        busy = (cpu - last_cpu) / (now - last_at) if last_at else 0.0
        self.latest = Sample(at=now, io_lag=lag, io_busy=min(1.0, max(0.0, busy)), connections=connections,
                             handshakes=handshakes, queued_bytes=queued_bytes, oldest_age=oldest_age,
                             slow=len(slow_now), in_handlers=in_handlers, producer_waits=producer_waits,
                             age_histogram=ages.snapshot(), queued_histogram=queued_hist.snapshot(),
                             slowest=tuple(slowest[:TOP_N]))
        for listener in self.on_sample:
            try:
                listener(self.latest)
            except Exception:
                logger.exception("metrics listener %r failed", listener)
        return self.latest
