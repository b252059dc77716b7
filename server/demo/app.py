"""The demo application: ``/``, ``/echo``, ``/echo-inline``, ``/stream``, ``/broadcast[?topic=NAME]`` and ``/live``.

Each route is one small handler class, one instance per connection (as in
Boost.Beast's examples). Handlers run application code on worker threads and
send from there: exactly the situation that corrupts a naive server.
"""

from __future__ import annotations

import importlib.resources
import logging
import re
import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

from .. import (  # the public API, as any application uses it
    LINES,
    BroadcastResult,
    CloseCode,
    ConnectionClosed,
    ConnectionHandle,
    Envelope,
    Handler,
    HttpError,
    HttpRequest,
    Position,
    PositionError,
    Published,
    PublishQueueFull,
    Response,
    Server,
)
from ..observe.live import LiveFeed
from . import streamformat

logger = logging.getLogger(__name__)

MAX_PRODUCERS = 64
MAX_COUNT = 1_000_000
MAX_TOTAL_BYTES = 8 * 1024**3  # per /stream connection


def index_page() -> bytes:
    return importlib.resources.files(__package__ or "server").joinpath("static/index.html").read_bytes()


class EchoHandler:
    """Every message goes to the worker pool; a worker sends it back unchanged.

    Concurrent on purpose: several workers reply on one connection at once,
    which is the situation of the bug (replies may be reordered; each is exact).
    """

    concurrent_messages = True

    def on_open(self, conn: ConnectionHandle) -> None:
        pass

    def on_message(self, conn: ConnectionHandle, message: str | bytes) -> None:
        conn.send(message)

    def on_close(self, conn: ConnectionHandle) -> None:
        pass


class InlineEchoHandler(EchoHandler):
    """``/echo-inline``: the echo on the IO thread itself (``inline``): no hop to the pool and back."""

    inline = True
    concurrent_messages = False


@dataclass(frozen=True)
class StreamParams:
    """Query parameters of ``/stream`` (see README for the message format)."""

    producers: int = 4
    count: int = 100
    size: int = 1024
    max_size: int = 0  # 0: every message is `size` bytes
    big_every: int = 0  # every Nth message per producer is big (0: never)
    big_size: int = 65536
    big_max_size: int = 0
    pace: bool = True  # producers wait for outbox room instead of tripping the overflow policy

    @classmethod
    def parse(cls, query: dict[str, str]) -> StreamParams:
        known = {"producers", "count", "size", "maxsize", "bigevery", "bigsize", "bigmaxsize", "pace"}
        unknown = sorted(set(query) - known)
        if unknown:
            raise HttpError(400, f"unknown /stream parameter(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")

        def num(name: str, default: int, lo: int, hi: int) -> int:
            raw = query.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = int(raw)
            except ValueError:
                raise HttpError(400, f"/stream parameter {name}={raw!r} is not an integer") from None
            if not lo <= value <= hi:
                raise HttpError(400, f"/stream parameter {name}={value} out of range {lo}..{hi}")
            return value

        lo, hi = streamformat.MIN_SIZE, streamformat.MAX_SIZE
        size = num("size", cls.size, lo, hi)
        params = cls(
            producers=num("producers", cls.producers, 1, MAX_PRODUCERS),
            count=num("count", cls.count, 1, MAX_COUNT),
            size=size,
            max_size=num("maxsize", 0, 0, hi),
            big_every=num("bigevery", 0, 0, MAX_COUNT),
            big_size=num("bigsize", cls.big_size, lo, hi),
            big_max_size=num("bigmaxsize", 0, 0, hi),
            pace=num("pace", 1, 0, 1) == 1,
        )
        if params.max_size and params.max_size < size:
            raise HttpError(400, f"/stream maxsize={params.max_size} is below size={size}")
        biggest = max(params.size, params.max_size)
        if params.big_every:
            biggest = max(biggest, params.big_size, params.big_max_size)
        worst = params.producers * params.count * biggest
        if worst > MAX_TOTAL_BYTES:
            raise HttpError(400, f"/stream would send up to {worst} bytes; the limit is {MAX_TOTAL_BYTES}")
        return params

    def size_of(self, producer: int, seq: int) -> int:
        if self.big_every and seq % self.big_every == self.big_every - 1:
            return streamformat.message_size(producer, seq, self.big_size, self.big_max_size)
        return streamformat.message_size(producer, seq, self.size, self.max_size)


class StreamHandler:
    """W producer threads per connection, each sending N verifiable messages.

    ``launcher`` starts the producers off the IO thread: ``Thread.start()``
    waits until the new thread runs, which under GIL contention from hundreds
    of busy producers takes long enough to stall every other connection.
    """

    def __init__(self, params: StreamParams, launcher: Executor | None = None) -> None:
        self.params = params
        self.launcher = launcher
        self._remaining = params.producers
        self._lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.sent = 0

    def on_open(self, conn: ConnectionHandle) -> None:
        if self.launcher is None:
            self._start_producers(conn)
        else:
            self.launcher.submit(self._start_producers, conn)

    def _start_producers(self, conn: ConnectionHandle) -> None:
        for producer in range(self.params.producers):
            thread = threading.Thread(
                target=self._produce, args=(conn, producer), name=f"wsrace-producer-{conn.peer}-{producer}", daemon=True
            )
            self.threads.append(thread)
            thread.start()

    def _produce(self, conn: ConnectionHandle, producer: int) -> None:
        params = self.params
        sent = 0
        try:
            for seq in range(params.count):
                size = params.size_of(producer, seq)
                message = streamformat.encode(producer, seq, size)
                if params.pace:
                    conn.send_paced(message)
                else:
                    conn.send(message)
                sent += 1
        except ConnectionClosed as exc:
            logger.debug("%s: producer %d stopped after %d messages: %s", conn.peer, producer, sent, exc)
            return
        finally:
            with self._lock:
                self.sent += sent
                self._remaining -= 1
                last = self._remaining == 0
        if last:
            # Every producer's messages were posted before this close: it goes out after them.
            conn.close(CloseCode.NORMAL, "stream complete")

    def on_message(self, conn: ConnectionHandle, message: str | bytes) -> None:
        pass  # /stream ignores what the client says

    def on_close(self, conn: ConnectionHandle) -> None:
        pass  # producers see ConnectionClosed on their next send and stop

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in list(self.threads):
            if thread.ident is not None:  # started
                thread.join(max(0.0, deadline - time.monotonic()))


class BroadcastHub:
    """``/broadcast``: subscribers per topic, publishes through the server's broker, optional tickers.

    With ``--broker redis://…`` every process and host sharing the Redis is
    one broadcast domain: a message published on any of them reaches every
    subscriber of its topic.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self._stop = threading.Event()
        self._tickers: list[threading.Thread] = []
        self.published = 0
        self.refused = 0  # publishes refused: broker unreachable and the local queue full

    @property
    def subscribers(self) -> frozenset[ConnectionHandle]:
        """This process's subscribers of the default topic."""
        return self.server.subscribers("")

    def subscribe(self, conn: ConnectionHandle, topic: str = "", since: Position | None = None,
                  envelope: Envelope | None = None) -> None:
        self.server.subscribe(conn, topic, since, envelope)

    def unsubscribe(self, conn: ConnectionHandle, topic: str = "") -> None:
        self.server.unsubscribe(conn, topic)

    def publish(self, message: str | bytes, topic: str = "") -> Published[BroadcastResult]:
        """Publish to ``topic``'s subscribers in every process on the broker. Any thread.

        See :meth:`Server.publish`. Raises :class:`PublishQueueFull`.
        """
        self.published += 1
        return self.server.publish(message, topic)

    def start_tickers(self, publishers: int, rate: float) -> None:
        """``publishers`` threads, each publishing ``rate`` messages per second."""
        for n in range(publishers):
            thread = threading.Thread(target=self._tick, args=(n, rate), name=f"wsrace-ticker-{n}", daemon=True)
            self._tickers.append(thread)
            thread.start()

    def _tick(self, n: int, rate: float) -> None:
        period = 1.0 / rate
        seq = 0
        next_at = time.monotonic()
        last_warning = 0.0
        while not self._stop.is_set():
            try:
                self.publish(f'{{"publisher": {n}, "seq": {seq}, "t": {time.time():.6f}}}')
            except PublishQueueFull as exc:
                self.refused += 1
                if time.monotonic() - last_warning > 5:
                    last_warning = time.monotonic()
                    logger.warning("ticker %d: %s (%d refused so far)", n, exc, self.refused)
            seq += 1
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -1.0:
                next_at = time.monotonic()  # fell behind: do not burst to catch up

    def stop(self) -> None:
        self._stop.set()
        for thread in self._tickers:
            thread.join(5)


TOPIC_RE = re.compile(r"[A-Za-z0-9_.:-]{0,64}")


class BroadcastHandler:
    """One ``/broadcast?topic=NAME[&positions=1][&since=POSITION]`` client: subscribed to its topic; what it
    sends is published there. With ``positions=1`` (implied by ``since=``) messages come as
    :class:`~server.topics.LineEnvelope` lines; ``since=`` resumes after that position."""

    def __init__(self, hub: BroadcastHub, topic: str = "", since: Position | None = None,
                 positions: bool = False) -> None:
        self.hub = hub
        self.topic = topic
        self.since = since
        self.envelope = LINES if positions or since is not None else None

    @classmethod
    def from_query(cls, hub: BroadcastHub, query: dict[str, str]) -> BroadcastHandler:
        """The handler for a request's query; :class:`HttpError` 400 for a bad topic, flag or position."""
        topic = query.get("topic", "")
        if not TOPIC_RE.fullmatch(topic):
            raise HttpError(400, "/broadcast topic must be at most 64 characters of A-Z a-z 0-9 _ . : -")
        positions = query.get("positions", "0")
        if positions not in ("0", "1"):
            raise HttpError(400, "/broadcast positions must be 0 or 1")
        try:
            since = Position.parse(query["since"]) if "since" in query else None
        except PositionError as exc:
            raise HttpError(400, f"/broadcast since: {exc}") from None
        return cls(hub, topic, since, positions == "1")

    def on_open(self, conn: ConnectionHandle) -> None:
        self.hub.subscribe(conn, self.topic, self.since, self.envelope)

    def on_message(self, conn: ConnectionHandle, message: str | bytes) -> None:
        try:
            self.hub.publish(message, self.topic)
        except PublishQueueFull:
            self.hub.refused += 1
            conn.close(CloseCode.TRY_AGAIN_LATER, "try again later: broker unreachable, publish queue full")

    def on_close(self, conn: ConnectionHandle) -> None:
        self.hub.unsubscribe(conn, self.topic)


class DemoApp:
    """Routes requests by path. Pass the class itself to :class:`Server`."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.hub = BroadcastHub(server)
        self._streams: list[StreamHandler] = []
        self._page = index_page()
        # /live: the page's charts (server.observe.live); none with Server(metrics=False).
        self.live = LiveFeed(lambda: server.metrics, server.sampler) if server.sampler is not None else None
        # One thread that starts producer threads, so the IO thread never waits for a start.
        self._launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsrace-launcher")
        self._launcher.submit(lambda: None).result()  # create its thread now, not on the IO thread

    def route(self, request: HttpRequest) -> Handler | Response:
        path = request.path
        if path == "/" or path == "/index.html":
            if request.method not in ("GET", "HEAD"):
                raise HttpError(405, f"method {request.method} not allowed on {path}", [(b"Allow", b"GET, HEAD")])
            return Response.html(self._page)
        if path == "/echo":
            return EchoHandler()
        if path == "/echo-inline":
            return InlineEchoHandler()
        if path == "/stream":
            params = StreamParams.parse(request.query)
            handler = StreamHandler(params, self._launcher)
            self._streams = [s for s in self._streams if any(t.is_alive() for t in s.threads) or not s.threads]
            self._streams.append(handler)
            return handler
        if path == "/broadcast":
            return BroadcastHandler.from_query(self.hub, request.query)
        if path == "/live" and self.live is not None:
            return self.live.handler()
        raise HttpError(404, f"no route for {path}; try /, /echo, /stream, /broadcast or /live")

    def close(self) -> None:
        """Stop tickers and join producer threads (called by Server.shutdown)."""
        self.hub.stop()
        self._launcher.shutdown(wait=True)
        for stream in self._streams:
            stream.join(5)
