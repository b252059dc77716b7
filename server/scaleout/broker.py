"""Brokers: how a published message reaches the subscribers of every process.

``memory://`` (the default) delivers in-process, on the publisher's thread:
one process is one broadcast domain, as before brokers existed.

``redis://host:port/db`` joins processes and hosts through Redis Streams (one
stream per topic, ``XADD … MAXLEN ~ N``). Per process:

* **one publisher thread** sends publishes in the order they were made, from
  a bounded local queue: while Redis is down they wait there and go out in
  order when it is back; when the queue is full, :meth:`Broker.publish`
  raises :class:`PublishQueueFull` (nothing is dropped silently);
* **one reader thread** does ``XREAD BLOCK`` from its last ID and hands each
  message to the server's local fan-out; after a broken connection it
  reconnects with backoff and resumes from that ID.

Every entry carries ``n``, a per-topic counter incremented atomically with the
``XADD`` (one Lua script), so a reader knows when entries it never saw were
trimmed away or the stream vanished (Redis restarted without it): it reports
a *gap* (``on_missed``), and the server closes that topic's subscribers with
1013. ``p``/``q`` (publisher id, publisher sequence) let a reader drop the
duplicate a retried pipeline may leave behind.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from ..errors import WsraceError
from ..histogram import Histogram
from ..stats import Stats
from .positions import Lost, Position, Published, new_epoch

logger = logging.getLogger(__name__)

Message = str | bytes
Deliver = Callable[[str, Position, Message], object]  # (topic, position, message) -> the local fan-out's result
# A resume's answer, in delivery order: the history after ``since``, then where live delivery goes on
# from (the topic's last position), or why the history cannot serve it.
Attach = Callable[[list[tuple[Position, Message]], "Position | Lost"], None]
Missed = Callable[[str, str, int], None]  # (topic, reason, how many messages are known to be lost; 0: unknown)

DEFAULT_MAXLEN = 10_000
DEFAULT_PUBLISH_QUEUE = 10_000
DEFAULT_HISTORY_TOPICS = 1000  # memory://: topics that keep a history (the most recently used)
REPLAY_CHUNK = 1000  # entries per XRANGE of a resume
DEDUPE_LOOKBACK = 1024  # entries up to a resume's position whose publisher sequences the replay knows
REDIS_EXTRA = "pip install 'wsrace[redis]'"


class BrokerError(WsraceError):
    """A broker could not be set up, or was used after :meth:`Broker.close`."""


class PublishQueueFull(BrokerError):
    """The broker is unreachable and the local publish queue is full: the message was NOT published."""


class Broker(Protocol):
    """What :class:`~server.server.Server` needs from a broker."""

    def start(self, deliver: Deliver, missed: Missed, stats: Stats) -> None:
        """Begin delivering: ``deliver(topic, position, message)`` for each message of a subscribed topic."""

    def publish(self, topic: str, message: Message) -> Published[object]:
        """Publish to every process's subscribers of ``topic``. Any thread; never blocks on the network.

        Raises :class:`PublishQueueFull` when the message cannot be accepted.
        """

    def join(self, topic: str, since: Position | None, attach: Attach) -> None:
        """Call ``attach(history after since, tail or Lost)`` where no delivery of ``topic`` can come between:
        a subscriber attached there gets the history, then every live message, each once. Any thread but
        the IO thread (``Server.subscribe`` hands such joins to the pool). ``attach`` runs on the caller's
        thread or the broker's, holding no lock; its sends may wait for room like any fan-out's."""

    def subscribe(self, topic: str) -> None:
        """This process has subscribers of ``topic`` (any thread, never blocks)."""

    def unsubscribe(self, topic: str) -> None:
        """This process no longer has subscribers of ``topic``."""

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (at most ``timeout`` s), stop the threads."""

    def metrics(self) -> dict[str, object]:
        """The broker's own figures for ``Server.metrics`` (any thread): see :meth:`RedisBroker.metrics`."""


class _History:
    """One topic's last messages in this process (``memory://``), and its deliveries and joins in order.

    ``lock`` guards every field and is held only to change them, never while
    fanning out: a fan-out may wait for the IO thread (a full subscriber), and
    the IO thread may publish or join (inline handlers, ``on_open``).
    """

    __slots__ = ("dead", "delivering", "entries", "epoch", "lock", "n", "queue")

    def __init__(self, maxlen: int) -> None:
        self.lock = threading.Lock()
        self.epoch = new_epoch()  # this history's: a topic whose history was dropped gets a new one
        self.n = 0  # messages published to the topic so far
        self.entries: deque[tuple[Position, Message]] = deque(maxlen=maxlen)
        # What is to be done for the topic, in order: (position, message) to fan out, or a join's attach().
        self.queue: deque[tuple[Position, Message] | Callable[[], None]] = deque()
        self.delivering = False  # a thread is working through queue (it takes what is added meanwhile)
        self.dead = False  # dropped (least recently used): callers fetch the topic's new history


class MemoryBroker:
    """In-process: ``publish`` fans out on the caller's thread (the embedded default).

    Each topic keeps its last ``maxlen`` messages, so a subscriber can resume
    from a position as with Redis; the ``max_topics`` most recently used
    topics without subscribers keep one (memory stays bounded however many
    topics clients make up). A topic's publishes are numbered, and fanned out
    in that order by one thread at a time: the publisher, or — while another
    publisher is fanning out — that one, which takes the rest of the queue
    (then ``Published.result`` is None). No lock is held during a fan-out.
    Each history has an epoch of its own, new in each process and for a topic
    whose history was dropped: such positions are refused, never misread.
    """

    url = "memory://"

    def __init__(self, maxlen: int = DEFAULT_MAXLEN, max_topics: int = DEFAULT_HISTORY_TOPICS) -> None:
        self.maxlen = maxlen
        self.max_topics = max_topics
        self.dropped_histories = 0  # histories of least recently used topics dropped past max_topics
        self._deliver: Deliver | None = None
        self._topics: OrderedDict[str, _History] = OrderedDict()  # least recently used first
        self._subscribed: dict[str, int] = {}  # topics with local subscribers: their histories are kept
        self._lock = threading.Lock()  # adds and drops _History entries; taken before a history's lock

    def start(self, deliver: Deliver, missed: Missed, stats: Stats) -> None:
        self._deliver = deliver

    def _history(self, topic: str) -> _History:
        history = self._topics.get(topic)
        if history is not None:
            try:
                self._topics.move_to_end(topic)
            except KeyError:
                pass  # dropped meanwhile: the caller finds it dead and asks again
            return history
        with self._lock:
            history = self._topics.get(topic)
            if history is None:
                history = self._topics[topic] = _History(self.maxlen)
                self._drop_least_used()
        return history

    def _drop_least_used(self) -> None:
        """Past max_topics: drop the least recently used histories of topics nobody here subscribes to (under _lock)."""
        excess = len(self._topics) - self.max_topics
        for name in [name for name in self._topics if name not in self._subscribed][:max(excess, 0)]:
            victim = self._topics.pop(name)
            with victim.lock:
                victim.dead = True
            self.dropped_histories += 1

    def epoch_of(self, topic: str) -> str:
        """The epoch of ``topic``'s history (made now if it has none)."""
        return self._history(topic).epoch

    def publish(self, topic: str, message: Message) -> Published[object]:
        if self._deliver is None:
            raise BrokerError("broker not started (Server.start() starts it)")
        while True:
            history = self._history(topic)
            with history.lock:
                if history.dead:
                    continue
                history.n += 1
                position = Position(history.epoch, history.n)
                history.entries.append((position, message))
                if history.delivering:
                    history.queue.append((position, message))
                    return Published(position)  # the thread fanning out now takes it, in order
                history.delivering = True
                break
        try:  # the queue was empty: ours is next, and whatever is queued meanwhile comes after it
            result = self._deliver(topic, position, message)
        except Exception:
            logger.exception("memory broker: delivery on topic %r failed", topic)
            result = None
        self._work(topic, history)
        return Published(position, result)

    def join(self, topic: str, since: Position | None, attach: Attach) -> None:
        while True:
            history = self._history(topic)
            with history.lock:
                if history.dead:
                    continue
                # The history up to here now; the live messages after it are queued behind this join.
                history.queue.append(partial(attach, *self._answer(history, since)))
                if history.delivering:
                    return
                history.delivering = True
                break
        self._work(topic, history)

    def _answer(self, history: _History, since: Position | None) -> tuple[list[tuple[Position, Message]], Position | Lost]:
        tail = Position(history.epoch, history.n)
        if since is None:
            return [], tail
        first = history.entries[0][0].n if history.entries else history.n + 1
        if since.epoch != history.epoch or since.entry_id:
            return [], Lost.other_epoch()
        if since.n > history.n:
            return [], Lost.ahead()
        if since.n + 1 < first:
            return [], Lost.trimmed(first)
        return list(itertools.islice(history.entries, since.n + 1 - first, None)), tail

    def _work(self, topic: str, history: _History) -> None:
        """Fan out and attach what is queued for the topic, in order, until nothing is (the delivering thread)."""
        assert self._deliver is not None
        while True:
            with history.lock:
                if not history.queue:
                    history.delivering = False
                    return
                job = history.queue.popleft()
            try:
                if isinstance(job, tuple):
                    self._deliver(topic, *job)
                else:
                    job()
            except Exception:
                logger.exception("memory broker: delivery on topic %r failed", topic)

    def subscribe(self, topic: str) -> None:
        with self._lock:
            self._subscribed[topic] = self._subscribed.get(topic, 0) + 1

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            left = self._subscribed.get(topic, 0) - 1
            if left > 0:
                self._subscribed[topic] = left
            else:
                self._subscribed.pop(topic, None)

    def close(self, timeout: float = 2.0) -> None:
        pass

    def metrics(self) -> dict[str, object]:
        return {}  # publish is the local fan-out itself: nothing queued, no lag


# KEYS: stream, counter, epoch. ARGV: maxlen, publisher id, publisher seq, type (t|b), data, a new epoch.
# The epoch key is created with the topic's first message and vanishes with the stream and counter
# (Redis restarted without its data): the history that follows has a new epoch.
_XADD_LUA = """
local e = redis.call('GET', KEYS[3])
if not e then
  e = ARGV[6]
  redis.call('SET', KEYS[3], e)
end
local n = redis.call('INCR', KEYS[2])
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'n', n, 'e', e, 'p', ARGV[2], 'q', ARGV[3], 't', ARGV[4], 'd', ARGV[5])
return {id, n, e}
"""


class _Topic:
    """The reader's position in one topic's stream."""

    __slots__ = ("epoch", "last_id", "last_n", "publishers")

    def __init__(self, last_id: str, last_n: int, epoch: str) -> None:
        self.last_id = last_id
        self.last_n = last_n
        self.epoch = epoch
        self.publishers: dict[str, int] = {}  # publisher id -> last publisher seq delivered (dedupe)


class RedisBroker:
    """Redis Streams through redis-py: one publisher thread and one reader thread per process."""

    def __init__(self, url: str, maxlen: int = DEFAULT_MAXLEN, max_queue: int = DEFAULT_PUBLISH_QUEUE,
                 prefix: str = "wsrace", block_ms: int = 100, max_backoff: float = 2.0,
                 ready_timeout: float = 5.0) -> None:
        try:
            import redis
        except ImportError:
            raise BrokerError(f"--broker {url} needs redis-py, an optional extra: {REDIS_EXTRA}") from None
        self._redis = redis
        self.url = url
        self.maxlen = maxlen
        self.max_queue = max_queue
        self.prefix = prefix
        self.block_ms = block_ms
        self.max_backoff = max_backoff
        self.ready_timeout = ready_timeout
        self.publisher_id = uuid.uuid4().hex[:16]
        self._q = itertools.count()
        self._stats = Stats()
        self._deliver: Deliver | None = None
        self._missed: Missed | None = None
        self._cond = threading.Condition()
        # (topic, type, data, publisher seq, at, what publish() returned)
        self._queue: deque[tuple[str, bytes, bytes, int, float, Published[object]]] = deque()
        self._acked = threading.Condition()  # notified when the publisher thread has set a batch's positions
        self._joins: list[tuple[str, Position | None, Attach]] = []  # resumes for the reader thread (under _cond)
        self.publish_seconds = Histogram()  # publish() -> its XADD acknowledged (publisher thread writes)
        self.read_lag = Histogram()  # an entry's Redis timestamp -> handed to the local fan-out (reader thread writes)
        self.topic_lag: dict[str, float] = {}  # per topic: that lag for the last entry read
        self._publisher_up = False  # last attempt to reach Redis from the publisher succeeded
        self._wanted: dict[str, int] = {"": 1}  # topics with local subscribers (the default one always)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._flush_deadline = 0.0
        self._client_args: dict[str, Any] = {
            "socket_timeout": 5.0 + block_ms / 1000,
            "socket_connect_timeout": 2.0,
            "retry": redis.retry.Retry(redis.backoff.NoBackoff(), 0),  # we retry ourselves, with backoff
        }
        self._connect()  # validate the URL now (no network yet)

    def _connect(self) -> Any:
        try:
            return self._redis.Redis.from_url(self.url, **self._client_args)
        except ValueError as exc:
            raise BrokerError(f"bad --broker URL {self.url!r}: {exc}") from None

    def stream_key(self, topic: str) -> str:
        return f"{self.prefix}:stream:{topic}"

    def counter_key(self, topic: str) -> str:
        return f"{self.prefix}:seq:{topic}"

    def epoch_key(self, topic: str) -> str:
        return f"{self.prefix}:epoch:{topic}"

    # -- any thread ------------------------------------------------------

    def start(self, deliver: Deliver, missed: Missed, stats: Stats) -> None:
        self._deliver, self._missed, self._stats = deliver, missed, stats
        for name, target in (("publisher", self._publish_loop), ("reader", self._read_loop)):
            thread = threading.Thread(target=target, name=f"wsrace-broker-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()
        if not self._ready.wait(self.ready_timeout):
            logger.warning("broker %s not reachable yet; the reader keeps trying (subscribers get messages once it is)",
                           self.url)

    def publish(self, topic: str, message: Message) -> Published[object]:
        kind, data = (b"t", message.encode("utf-8")) if isinstance(message, str) else (b"b", bytes(message))
        with self._cond:
            if self._closed:
                raise BrokerError("broker closed")
            if len(self._queue) >= self.max_queue:
                self._stats.broker_publishes_failed += 1
                raise PublishQueueFull(f"broker {self.url} unreachable and {len(self._queue)} publishes already "
                                       "queued: not published, try again later")
            if not self._publisher_up:
                self._stats.broker_publishes_queued += 1
            published: Published[object] = Published(acked=self._acked)
            self._queue.append((topic, kind, data, next(self._q), time.monotonic(), published))
            self._cond.notify()
        return published

    def join(self, topic: str, since: Position | None, attach: Attach) -> None:
        # The reader thread runs it between two reads: nothing of the topic is delivered meanwhile.
        with self._cond:
            self._joins.append((topic, since, attach))

    @property
    def queued(self) -> int:
        """Publishes waiting to be sent to Redis."""
        return len(self._queue)

    def metrics(self) -> dict[str, object]:
        """``publish_queue`` (publishes not yet acknowledged by Redis), ``publish_seconds`` (publish() to the
        acknowledged XADD), ``read_lag`` (an entry's Redis timestamp to its local fan-out: includes clock
        skew between this host and Redis's) and ``topic_lag`` (that lag for each topic's last entry)."""
        return {"publish_queue": len(self._queue), "publish_seconds": self.publish_seconds.snapshot(),
                "read_lag": self.read_lag.snapshot(), "topic_lag": dict(self.topic_lag)}

    def subscribe(self, topic: str) -> None:
        with self._cond:
            self._wanted[topic] = self._wanted.get(topic, 0) + 1

    def unsubscribe(self, topic: str) -> None:
        with self._cond:
            left = self._wanted.get(topic, 0) - 1
            if left > 0 or topic == "":
                self._wanted[topic] = max(left, 1 if topic == "" else 0)
            else:
                self._wanted.pop(topic, None)

    def close(self, timeout: float = 2.0) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._flush_deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout + 6)
        left = len(self._queue)
        if left:
            self._stats.broker_publishes_failed += left
            logger.error("broker %s: %d publishes could not be sent before shutdown", self.url, left)
            with self._cond, self._acked:  # whoever waits for a position learns it may never come
                for *_, published in self._queue:
                    published._fail(BrokerError(f"not published: broker {self.url} closed before Redis "
                                                "acknowledged it (a batch in flight may still have reached it)"))
                self._acked.notify_all()

    # -- publisher thread ------------------------------------------------

    def _publish_loop(self) -> None:
        client: Any = None
        script: Any = None
        backoff = 0.05
        down_since: float | None = None
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                if self._closed and time.monotonic() > self._flush_deadline:
                    return
                batch = list(itertools.islice(self._queue, 0, 256))
            try:
                if client is None:
                    client = self._connect()
                    script = client.register_script(_XADD_LUA)
                pipe = client.pipeline(transaction=False)
                epoch = new_epoch()  # fresh for each attempt: a topic's history created by it gets this name
                for topic, kind, data, q, *_ in batch:
                    script(keys=[self.stream_key(topic), self.counter_key(topic), self.epoch_key(topic)],
                           args=[self.maxlen, self.publisher_id, q, kind, data, epoch], client=pipe)
                replies = pipe.execute()
            except self._redis.RedisError as exc:  # connection lost, timeout, or Redis refusing (e.g. OOM)
                with self._cond:
                    self._publisher_up = False
                if down_since is None:
                    down_since = time.monotonic()
                    logger.warning("broker %s: publish failed (%s); %d publishes wait in the local queue, retrying",
                                   self.url, exc, len(batch))
                client = None
                time.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            with self._cond:
                for _ in batch:
                    self._queue.popleft()
                self._publisher_up = True
            done = time.monotonic()
            for (*_, at, published), (entry_id, n, epoch) in zip(batch, replies, strict=True):
                published._set(Position(_s(epoch), int(n), _s(entry_id)))
                self.publish_seconds.observe(done - at)
            with self._acked:
                self._acked.notify_all()
            if down_since is not None:
                self._stats.broker_reconnects += 1
                logger.warning("broker %s: publisher reconnected after %.1f s", self.url, time.monotonic() - down_since)
                down_since = None
            backoff = 0.05

    # -- reader thread ---------------------------------------------------

    def _read_loop(self) -> None:
        topics: dict[str, _Topic] = {}
        client: Any = None
        run_id: str | None = None
        backoff = 0.05
        down_since: float | None = None
        while not self._stop.is_set():
            try:
                if client is None:
                    client = self._connect()
                    new_run_id = str(client.info("server").get("run_id"))
                    if run_id is not None and new_run_id != run_id:
                        self._check_survived(client, topics)
                    run_id = new_run_id
                    if down_since is not None:
                        self._stats.broker_reconnects += 1
                        logger.warning("broker %s: reader reconnected after %.1f s; resuming from its last IDs",
                                       self.url, time.monotonic() - down_since)
                        down_since = None
                self._sync_topics(client, topics)
                self._run_joins(client, topics)
                self._ready.set()
                reply = client.xread({self.stream_key(t): s.last_id for t, s in topics.items()},
                                     count=512, block=self.block_ms)
                backoff = 0.05
            except self._redis.RedisError as exc:
                if down_since is None:
                    down_since = time.monotonic()
                    logger.warning("broker %s: reader lost its connection (%s); reconnecting with backoff", self.url, exc)
                client = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            for key, entries in reply or ():
                topic = _topic_of(key, self.prefix)
                state = topics.get(topic)
                if state is not None:
                    self._handle(topic, state, entries)

    def _sync_topics(self, client: Any, topics: dict[str, _Topic]) -> None:
        with self._cond:
            wanted = set(self._wanted)
        for topic in list(topics):
            if topic not in wanted:
                del topics[topic]
        for topic in wanted - set(topics):
            topics[topic] = self._newest(client, topic)

    def _newest(self, client: Any, topic: str) -> _Topic:
        """A reader position after the topic's newest entry (read atomically with the counter and the
        epoch, so no entry slips between; the epoch is created here if the topic has none yet)."""
        pipe = client.pipeline(transaction=True)
        pipe.set(self.epoch_key(topic), new_epoch(), nx=True)
        pipe.xrevrange(self.stream_key(topic), "+", "-", count=1)
        pipe.get(self.counter_key(topic))
        pipe.get(self.epoch_key(topic))
        _, newest, counter, epoch = pipe.execute()
        if newest:
            entry_id, fields = newest[0]
            return _Topic(_s(entry_id), int(fields[b"n"]), _s(epoch))
        return _Topic("0-0", int(counter or 0), _s(epoch))

    def _run_joins(self, client: Any, topics: dict[str, _Topic]) -> None:
        with self._cond:
            joins, self._joins = self._joins, []
        for i, (topic, since, attach) in enumerate(joins):
            try:
                state = topics.get(topic)
                if state is None:  # its subscriber may have left already; attach() finds out
                    state = topics[topic] = self._newest(client, topic)
                if since is not None and since.epoch == state.epoch and since.n > state.last_n:
                    self._catch_up(client, topic, state, since.n)  # a faster sibling handed out that position
                entries, tail = self._replay(client, topic, state, since)
            except self._redis.RedisError:
                with self._cond:
                    self._joins[:0] = joins[i:]  # after the reconnect, in the same order
                raise
            try:
                attach(entries, tail)
            except Exception:
                logger.exception("broker %s: attaching a subscriber of topic %r failed", self.url, topic)

    def _catch_up(self, client: Any, topic: str, state: _Topic, n: int) -> None:
        """Read and deliver the topic up to entry ``n`` now (this reader is behind the position a client brings)."""
        while state.last_n < n:
            rows = client.xrange(self.stream_key(topic), "(" + state.last_id, "+", count=REPLAY_CHUNK)
            if not rows:
                return
            self._handle(topic, state, rows)

    def _replay(self, client: Any, topic: str, state: _Topic,
                since: Position | None) -> tuple[list[tuple[Position, Message]], Position | Lost]:
        """The topic's entries after ``since`` up to the reader's position, or why the stream cannot give them."""
        tail = Position(state.epoch, state.last_n, state.last_id)
        if since is None:
            return [], tail
        if since.epoch != state.epoch or not since.entry_id:
            return [], Lost.other_epoch()
        if since.n > state.last_n:
            return [], Lost.ahead()
        entries: list[tuple[Position, Message]] = []
        # A retried publish may leave a second copy after the first (at most a batch, 256, apart): what the
        # client saw up to since includes the first copies of those just before it.
        publishers: dict[str, int] = {}
        for _, fields in client.xrevrange(self.stream_key(topic), since.entry_id, "-", count=DEDUPE_LOOKBACK):
            publisher, q = _sequence(fields)
            publishers[publisher] = max(q, publishers.get(publisher, -1))
        expect, start = since.n + 1, "(" + since.entry_id
        while expect <= state.last_n:
            rows = client.xrange(self.stream_key(topic), start, state.last_id, count=REPLAY_CHUNK)
            if not rows:
                return [], Lost.trimmed(None)
            for entry_id, fields in rows:
                n = int(fields[b"n"])
                if n != expect:
                    return [], Lost.trimmed(n)
                expect += 1
                publisher, q = _sequence(fields)
                if q > publishers.get(publisher, -1):  # else a retried pipeline's second copy
                    publishers[publisher] = q
                    entries.append((Position(state.epoch, n, _s(entry_id)), _message(fields)))
            start = "(" + _s(rows[-1][0])
        return entries, tail

    def _check_survived(self, client: Any, topics: dict[str, _Topic]) -> None:
        """Redis restarted: a stream that no longer holds our last entry vanished with what we had not read."""
        for topic, state in topics.items():
            if state.last_id == "0-0" and state.last_n == 0:
                topics[topic] = self._newest(client, topic)  # nothing to lose; its epoch may be new
                continue
            held = client.xrange(self.stream_key(topic), state.last_id, state.last_id, count=1) if state.last_id != "0-0" else []
            if held and int(held[0][1][b"n"]) == state.last_n:
                logger.warning("broker %s: Redis restarted; stream %r survived, resuming", self.url, topic)
                continue
            self._gap(topic, "stream lost in a Redis restart", 0)
            topics[topic] = self._newest(client, topic)  # a new history: a new epoch

    def _handle(self, topic: str, state: _Topic, entries: list[tuple[Any, dict[bytes, bytes]]]) -> None:
        for entry_id, fields in entries:
            n = int(fields[b"n"])
            epoch = _s(fields.get(b"e", state.epoch))
            if n != state.last_n + 1 or epoch != state.epoch:
                if n <= state.last_n or epoch != state.epoch:
                    self._gap(topic, "stream reset", 0)
                    state.publishers.clear()
                else:
                    self._gap(topic, f"{n - state.last_n - 1} trimmed", n - state.last_n - 1)
            state.last_id, state.last_n, state.epoch = _s(entry_id), n, epoch
            lag = max(0.0, time.time() - int(state.last_id.split("-", 1)[0]) / 1000)  # IDs start with Redis's ms clock
            self.read_lag.observe(lag)
            self.topic_lag[topic] = lag
            publisher, q = _sequence(fields)
            if q <= state.publishers.get(publisher, -1):
                self._stats.broker_duplicates += 1  # a retried pipeline's second copy
                continue
            state.publishers[publisher] = q
            assert self._deliver is not None
            try:
                self._deliver(topic, Position(epoch, n, state.last_id), _message(fields))
            except Exception:
                logger.exception("broker %s: local fan-out of topic %r failed", self.url, topic)

    def _gap(self, topic: str, what: str, count: int) -> None:
        self._stats.broker_gaps += 1
        self._stats.broker_messages_missed += count
        logger.error("broker %s: topic %r: messages missed (%s); closing its subscribers with 1013", self.url, topic, what)
        assert self._missed is not None
        try:
            self._missed(topic, f"messages were missed ({what}); reconnect", count)
        except Exception:
            logger.exception("broker %s: on_missed failed", self.url)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _sequence(fields: dict[bytes, bytes]) -> tuple[str, int]:
    """An entry's (publisher id, publisher sequence): what tells a retried publish's second copy."""
    return _s(fields[b"p"]), int(fields[b"q"])


def _message(fields: dict[bytes, bytes]) -> Message:
    data = fields[b"d"]
    return data.decode("utf-8") if fields[b"t"] == b"t" else data


def _topic_of(key: bytes | str, prefix: str) -> str:
    return _s(key)[len(prefix) + len(":stream:"):]


def make_broker(url: str, maxlen: int = DEFAULT_MAXLEN, max_queue: int = DEFAULT_PUBLISH_QUEUE) -> Broker:
    """``memory://`` or ``redis://host:port/db`` (``rediss://`` for TLS). Raises :class:`BrokerError`.

    ``maxlen``: messages each topic's history keeps (Redis: ``MAXLEN ~``; a resume further back is refused).
    """
    scheme = url.split(":", 1)[0].lower()
    if scheme == "memory":
        return MemoryBroker(maxlen)
    if scheme in ("redis", "rediss", "unix"):
        return RedisBroker(url, maxlen=maxlen, max_queue=max_queue)
    raise BrokerError(f"unknown broker {url!r}: use memory:// or redis://HOST:PORT/DB")
