"""Resuming subscriptions (issue 24): positions, ``since=``, 4410, rolling restarts — real servers and clients.

In-process servers use the ``memory://`` history; the cluster tests start
Debian's ``redis-server`` (a free port, a temp dir, stopped by PID) and run
``python -m server`` as a user does. Subscribers are the package's reference
client, :class:`server.client.Subscription`, each on a thread of its own.
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from server import HISTORY_LOST, ConnectionHandle, HttpRequest, Limits, LineEnvelope, Position, Server
from server.client import HistoryLost, Subscription
from server.demo.app import DemoApp
from server.scaleout.broker import _XADD_LUA, MemoryBroker, Message, RedisBroker
from server.scaleout.positions import Lost
from server.stats import Stats

from ..helpers import (
    drain_in_background,
    echo_works,
    http_exchange,
    running_server,
    stalled_client,
    upgrade_request,
    wait_until,
    ws_handshake,
)
from ..instance import Instance
from ..redis_server import RedisServer

pytestmark = pytest.mark.timeout(180)


class Follower:
    """A :class:`Subscription` iterated on its own thread: what it got, in order, and how it ended."""

    def __init__(self, url: str, topic: str = "", since: str | None = None, name: str = "") -> None:
        self.sub = Subscription(url, topic, since, min_backoff=0.02, max_backoff=0.5)
        self.name = name or url
        self.got: list[tuple[str, str | bytes]] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"follower-{self.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for item in self.sub:
                self.got.append(item)
        except BaseException as exc:  # the test reads it
            self.error = exc

    def drop(self) -> None:
        """Cut the current connection from the client's side (as a network change does): it must resume."""
        self.sub.reconnect()

    def stop(self) -> None:
        self.sub.close()
        self.thread.join(10)

    def messages(self) -> list[str | bytes]:
        return [m for _, m in self.got]


def assert_exactly_once_in_order(follower: Follower, publishers: int, count: int) -> None:
    """Every publisher's ``p:i`` for i in 0..count-1, once each and in order; positions counting up by one."""
    seqs: dict[int, list[int]] = {p: [] for p in range(publishers)}
    for message in follower.messages():
        p, i = re.fullmatch(r"(\d+):(\d+)", str(message)).groups()  # type: ignore[union-attr]
        seqs[int(p)].append(int(i))
    for p, seq in seqs.items():
        assert seq == list(range(count)), (
            f"{follower.name}: publisher {p}: {len(seq)} messages, {len(set(seq))} distinct, "
            f"first wrong at {next((k for k, v in enumerate(seq) if v != k), None)}")
    ns = [Position.parse(position).n for position, _ in follower.got]
    assert ns == list(range(ns[0], ns[0] + len(ns))), f"{follower.name}: positions not contiguous"


# -- one process, memory:// ------------------------------------------------------------


def test_a_subscriber_cut_off_five_times_gets_every_message_once_in_order() -> None:
    """Server-side closes (1012, 1001, 1013) and client-side cuts while two threads publish: the reference
    client resumes each time with since= and ends with every message exactly once."""
    with running_server() as srv:
        follower = Follower(srv.url, "news", name="memory")
        assert wait_until(lambda: follower.sub.position is not None, 10), "the bookmark arrived"
        count, publishers = 2000, 2

        def publish(p: int) -> None:
            for i in range(count):
                srv.publish(f"{p}:{i}", "news")
                if i % 10 == 9:
                    time.sleep(0.01)  # about 2 s: the cuts come while messages flow

        threads = [threading.Thread(target=publish, args=(p,)) for p in range(publishers)]
        for thread in threads:
            thread.start()
        for cut in range(5):
            # Cut a live connection: the previous cut was noticed and messages flow on the new one.
            assert wait_until(lambda: follower.sub.reconnects >= cut, 10), follower.sub.reconnects  # noqa: B023
            seen = len(follower.got)
            assert wait_until(lambda: len(follower.got) > seen, 10), "messages flow after the resume"  # noqa: B023
            if cut % 2:
                follower.drop()
            else:
                for conn in srv.subscribers("news"):
                    conn.close((1012, 1001, 1013)[cut // 2], "cut by the test")
        for thread in threads:
            thread.join(30)
        assert wait_until(lambda: len(follower.got) >= publishers * count, 20), len(follower.got)
        follower.stop()
    assert follower.error is None, follower.error
    assert follower.sub.reconnects >= 5
    assert_exactly_once_in_order(follower, publishers, count)
    assert srv.stats.resumes >= 5


def test_a_position_older_than_the_history_is_refused_with_4410_at_once() -> None:
    with running_server(broker=MemoryBroker(maxlen=10)) as srv:
        first = srv.publish("m0", "t").position()
        for i in range(1, 50):
            srv.publish(f"m{i}", "t")
        started = time.monotonic()
        with connect(f"{srv.url}/broadcast?topic=t&since={first}", open_timeout=10) as ws:
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
            took = time.monotonic() - started
            assert ws.close_code == HISTORY_LOST, (ws.close_code, ws.close_reason)
            assert ws.close_reason == "position too old: the history starts at message 41; start over"
        assert took < 5, took  # measured: milliseconds; the issue asks for under 1 s
        follower = Follower(srv.url, "t", str(first), name="too-old")
        follower.thread.join(10)
        assert isinstance(follower.error, HistoryLost) and follower.error.code == HISTORY_LOST, (
            follower.error, follower.thread.is_alive(), follower.sub.close_codes, follower.sub.reconnects)
        assert follower.got == [] and srv.stats.resumes_refused == 2


def test_a_position_from_another_process_lifetime_is_refused_and_a_bad_one_is_400() -> None:
    with running_server() as first:
        old = first.publish("m", "t").position()
    with running_server() as srv:  # a restart with memory://: a new epoch
        srv.publish("m", "t")
        with connect(f"{srv.url}/broadcast?topic=t&since={old}", open_timeout=10) as ws:
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
            assert ws.close_code == HISTORY_LOST and "another epoch" in (ws.close_reason or ""), ws.close_reason
        for query, why in (("since=yesterday", b"not a position"), ("positions=yes", b"positions must be 0 or 1")):
            reply = http_exchange(srv.port, upgrade_request(f"/broadcast?topic=t&{query}"))
            assert reply.startswith(b"HTTP/1.1 400") and why in reply, reply[:300]


def test_joins_on_the_io_thread_never_wait_for_a_publisher_that_waits_for_the_io_thread() -> None:
    """A publisher fanning out to subscribers that never read waits for the IO thread (to judge them too slow);
    positions=1 subscribers joining meanwhile (on_open: the IO thread) must not wait for that publisher. (With
    the fan-out under the topic's lock, the IO thread blocked on the lock and the server hung for good.)"""
    with running_server(limits=Limits(ping_interval=None, max_queue_bytes=64 * 1024), workers=4) as srv:
        stalled = [stalled_client(srv.port, "/broadcast?topic=t") for _ in range(20)]
        stop = threading.Event()

        def publish() -> None:
            while not stop.is_set():
                srv.publish("x" * 8192, "t")

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        joiners = [ws_handshake(srv.port, "/broadcast?topic=t&positions=1")[0] for _ in range(20)]  # on_open joins
        assert echo_works(srv.port), "the IO thread still serves"
        stop.set()
        publisher.join(10)
        assert not publisher.is_alive()
        for sock in [*joiners, *stalled]:
            sock.close()


def test_a_join_in_on_open_replays_from_a_worker_not_the_io_thread() -> None:
    """on_open runs on the IO thread, where a send never waits for room: a replay there would queue thousands of
    messages past every limit. Server.subscribe hands such a join to the pool."""
    threads: list[str] = []

    class Recording(LineEnvelope):
        def wrap(self, position: str, message: str | bytes) -> str | bytes:
            threads.append(threading.current_thread().name)
            return super().wrap(position, message)

    class Resume:
        def __init__(self, server: Server) -> None:
            self.server = server

        def route(self, request: HttpRequest) -> Resume:
            return self

        def on_open(self, conn: ConnectionHandle) -> None:
            self.server.subscribe(conn, "t", f"{self.server.broker.epoch_of('t')}.1", Recording())  # type: ignore[attr-defined]

        def on_message(self, conn: ConnectionHandle, message: str | bytes) -> None:
            pass

        def on_close(self, conn: ConnectionHandle) -> None:
            self.server.unsubscribe(conn, "t")

    with running_server(router=Resume) as srv:
        srv.publish("m1", "t")
        srv.publish("m2", "t")
        with connect(f"{srv.url}/", open_timeout=10) as ws:
            assert ws.recv(timeout=10) == f"{srv.broker.epoch_of('t')}.2\nm2"  # type: ignore[attr-defined]
    assert threads and all(name.startswith("wsrace-worker") for name in threads), threads


def test_binary_and_text_messages_keep_their_type_in_the_envelope() -> None:
    with running_server() as srv:
        follower = Follower(srv.url, "mixed")
        assert wait_until(lambda: follower.sub.position is not None, 10)
        srv.publish("text\nwith a newline", "mixed")
        srv.publish(b"\x00\nbinary", "mixed")
        assert wait_until(lambda: len(follower.got) == 2, 10)
        follower.stop()
    assert follower.messages() == ["text\nwith a newline", b"\x00\nbinary"]


# -- the cluster: real redis-server, python -m server ------------------------------------


@pytest.mark.timing  # 180,000 deliveries parsed in this process: under coverage's tracing, minutes
def test_cluster_resumes_and_a_rolling_restart_lose_nothing(redis_server: RedisServer, instances: list[Instance]) -> None:
    """The issue's acceptance run: 3 processes (an instance of 2 and one of 1) on a real Redis; 9 subscribers
    that each drop and resume 5 times during 20,000 publishes, and one rolling restart (SIGHUP) of the
    2-process instance: every subscriber has every message exactly once, in per-publisher order; then a
    position the trimmed stream no longer holds is refused with 4410."""
    # The history covers the run: a subscriber of this test process (nine of them parse 180,000 deliveries
    # under one GIL) can be 10,000 messages behind in its socket and queue when it is cut off, and resumes from
    # there (README: size --stream-maxlen to cover the deepest client queue too).
    pair = Instance("--broker", redis_server.url, "--processes", "2", "--stream-maxlen", "40000")
    instances.append(pair)
    single = Instance("--broker", redis_server.url, "--stream-maxlen", "40000")
    instances.append(single)
    old_children = set(pair.children())
    followers = [Follower((pair.url, single.url)[i % 2], "feed", name=f"sub{i}") for i in range(9)]
    assert wait_until(lambda: all(f.sub.position is not None for f in followers), 20), "every bookmark arrived"
    publishers, count = 2, 10_000
    finished = [threading.Event() for _ in range(publishers)]

    def publish(p: int) -> None:
        # Through the instance that is not restarted: what is tested is the subscribers' side. The publisher
        # is a subscriber of the feed too; a thread drains what it gets.
        with connect(f"{single.url}/broadcast?topic=feed", open_timeout=10, max_size=None) as ws:
            drain_in_background(ws)
            for i in range(count):
                ws.send(f"{p}:{i}")
                if i % 100 == 99:
                    time.sleep(0.05)
            finished[p].set()
            time.sleep(1)  # let the server publish what it read before the close

    threads = [threading.Thread(target=publish, args=(p,), name=f"publisher-{p}") for p in range(publishers)]
    for thread in threads:
        thread.start()
    rng = random.Random(24)
    drops = dict.fromkeys(range(len(followers)), 0)
    # A follower is cut again only once the last cut was noticed (it reconnected) and messages came on the
    # new connection since: each cut is a resume in the middle of the stream.
    reconnected_at: dict[int, int] = {}
    grown_from: dict[int, int] = {}
    restarted = False
    deadline = time.monotonic() + 90
    while any(n < 5 for n in drops.values()) or not restarted:
        assert time.monotonic() < deadline, (drops, restarted, [(len(f.got), f.sub.reconnects, dict(f.sub.close_codes),
                                                                 f.sub.position, f.error) for f in followers])
        if not restarted and min(len(f.got) for f in followers) > publishers * count // 3:
            pair.proc.send_signal(signal.SIGHUP)
            restarted = True
        for i, f in enumerate(followers):
            if i in reconnected_at and f.sub.reconnects > reconnected_at[i]:
                del reconnected_at[i]
                grown_from[i] = len(f.got)
        ready = [i for i, n in drops.items()
                 if n < 5 and i not in reconnected_at and len(followers[i].got) > grown_from.get(i, -1)]
        if ready:
            i = rng.choice(ready)
            reconnected_at[i] = followers[i].sub.reconnects
            followers[i].drop()
            drops[i] += 1
        time.sleep(0.05)
    for thread in threads:
        thread.join(60)
    assert all(done.is_set() for done in finished)
    total = publishers * count
    assert wait_until(lambda: all(len(f.got) >= total for f in followers), 60), (
        [(f.name, len(f.got), f.error, f.sub.reconnects, dict(f.sub.close_codes), f.sub.position) for f in followers],
        single.log()[-2000:], pair.log()[-3000:])
    assert wait_until(lambda: "rolling restart done" in pair.log(), 30), pair.log()[-3000:]
    for f in followers:
        f.stop()
        assert f.error is None, (f.name, f.error)
        assert_exactly_once_in_order(f, publishers, count)
        assert f.sub.reconnects >= 5, (f.name, f.sub.reconnects)
    assert sum(f.sub.close_codes[1012] for f in followers) >= 1, [f.sub.close_codes for f in followers]
    assert not old_children & set(pair.children()), "every child was replaced"

    for inst in (pair, single):
        assert inst.stop() == 0, inst.log()[-3000:]

    # A position the trimmed stream no longer holds: an instance keeping 1,000 per topic, 3,000 more published.
    short = Instance("--broker", redis_server.url, "--stream-maxlen", "1000")
    instances.append(short)
    oldest = followers[0].got[0][0]
    _publisher(short.url, 3000, start=count).join(60)
    started = time.monotonic()
    refused = Follower(short.url, "feed", oldest, name="too-old")
    refused.thread.join(10)
    took = time.monotonic() - started
    assert isinstance(refused.error, HistoryLost) and "too old" in refused.error.reason, refused.error
    assert took < 5, took  # measured: a few hundred ms (the reader's next turn); the issue asks for under 1 s


def _publisher(url: str, count: int, start: int = 0, pace: int = 100) -> threading.Thread:
    """A thread publishing ``0:start`` … ``0:start+count-1`` on /broadcast?topic=feed of ``url`` (draining its echo)."""

    def run() -> None:
        with connect(f"{url}/broadcast?topic=feed", open_timeout=10, max_size=None) as ws:
            drain_in_background(ws)
            for i in range(start, start + count):
                ws.send(f"0:{i}")
                if i % pace == pace - 1:
                    time.sleep(0.05)
            time.sleep(1)  # let the server publish what it read before the close

    thread = threading.Thread(target=run, name="publisher", daemon=True)
    thread.start()
    return thread


def test_a_killed_child_and_a_move_to_a_sibling_lose_nothing(redis_server: RedisServer, instances: list[Instance]) -> None:
    """SIGKILL one child of a 2-process instance mid-stream (its subscribers see 1006, reconnect to whichever
    process the port gives them), and move a subscriber from one instance to another with its position:
    everyone ends with every message once, in order."""
    pair = Instance("--broker", redis_server.url, "--processes", "2")
    instances.append(pair)
    single = Instance("--broker", redis_server.url)
    instances.append(single)
    followers = [Follower(pair.url, "feed", name=f"pair{i}") for i in range(4)]
    mover = Follower(single.url, "feed", name="mover")
    assert wait_until(lambda: all(f.sub.position is not None for f in [*followers, mover]), 20)
    count = 3000
    publisher = _publisher(single.url, count)
    assert wait_until(lambda: min(len(f.got) for f in followers) > count // 3, 60)
    victim = pair.children()[0]
    os.kill(victim, signal.SIGKILL)
    mover.stop()  # leaves single ...
    moved = Follower(pair.url, "feed", mover.sub.position, name="moved")  # ... and resumes on the other instance
    publisher.join(60)
    assert wait_until(lambda: all(len(f.got) >= count for f in followers)
                      and len(mover.got) + len(moved.got) >= count, 60), (
        [(f.name, len(f.got), f.error, dict(f.sub.close_codes)) for f in [*followers, mover, moved]], pair.log()[-3000:])
    for f in [*followers, moved]:
        f.stop()
        assert f.error is None, (f.name, f.error)
    for f in followers:
        assert_exactly_once_in_order(f, 1, count)
    assert sum(f.sub.close_codes[1006] for f in followers) >= 1, "the killed child's subscribers were cut off"
    mover.got += moved.got
    assert_exactly_once_in_order(mover, 1, count)
    assert wait_until(lambda: len(pair.children()) == 2 and victim not in pair.children(), 30), "the child was restarted"


@pytest.mark.parametrize("persistent", [True, False], ids=["with-its-data", "without-its-data"])
def test_a_redis_restart_keeps_positions_only_if_it_keeps_its_data(persistent: bool, instances: list[Instance]) -> None:
    """Redis killed and restarted. With its data (AOF): a subscriber that drops afterwards resumes from its
    position and misses nothing. Without: the stream's epoch is gone, so the subscriber (closed with 1013
    when the reader finds the stream lost) is refused with 4410 when it resumes: told, not misled."""
    redis_server = RedisServer(persistent=persistent).start()
    try:
        inst = Instance("--broker", redis_server.url)
        instances.append(inst)
        follower = Follower(inst.url, "feed", name="follower")
        assert wait_until(lambda: follower.sub.position is not None, 20)
        _publisher(inst.url, 200).join(30)
        assert wait_until(lambda: len(follower.got) >= 200, 20)
        redis_server.kill()
        redis_server.start()
        if persistent:
            follower.drop()
            _publisher(inst.url, 200, start=200).join(30)
            assert wait_until(lambda: len(follower.got) >= 400, 30), (len(follower.got), inst.log()[-3000:])
            follower.stop()
            assert follower.error is None and follower.sub.reconnects >= 1, follower.error
            assert_exactly_once_in_order(follower, 1, 400)
        else:
            follower.thread.join(30)
            assert isinstance(follower.error, HistoryLost), (follower.error, inst.log()[-3000:])
            assert "another epoch" in follower.error.reason and follower.sub.close_codes[1013] == 1, follower.error
            assert_exactly_once_in_order(follower, 1, 200)
    finally:
        redis_server.stop()


def test_a_resume_replays_no_second_copy_of_a_retried_publish(redis_server: RedisServer) -> None:
    """A batch Redis applied but whose reply was lost is sent again: the stream holds q1000, q1001, then their
    copies. Live subscribers get each once; a resume from between them must not replay the first copies again."""
    import redis

    broker = RedisBroker(redis_server.url)
    live: list[tuple[int, Message]] = []
    broker.start(lambda topic, position, message: live.append((position.n, message)), lambda *a: None, Stats())
    try:
        broker.subscribe("t")
        assert wait_until(lambda: broker._ready.is_set(), 10)
        time.sleep(0.3)  # the reader holds the topic
        script = redis.Redis.from_url(redis_server.url).register_script(_XADD_LUA)

        def xadd(q: int, data: str) -> list:
            return script(keys=[broker.stream_key("t"), broker.counter_key("t"), broker.epoch_key("t")],
                          args=[broker.maxlen, "retried", q, "t", data, "e0"])

        replies = [xadd(1000, "A"), xadd(1001, "B"), xadd(1000, "A"), xadd(1001, "B"), xadd(1002, "C")]
        assert wait_until(lambda: len(live) == 3, 10), live
        assert [m for _, m in live] == ["A", "B", "C"]
        entry_id, n, epoch = replies[1]
        answers: list = []
        done = threading.Event()

        def attach(entries: list, tail: Position | Lost) -> None:
            answers.append(entries)
            done.set()

        broker.join("t", Position(epoch.decode(), int(n), entry_id.decode()), attach)
        assert done.wait(10)
        assert [m for _, m in answers[0]] == ["C"], answers
    finally:
        broker.close()


def test_a_reader_behind_a_sibling_catches_up_instead_of_refusing_its_position(redis_server: RedisServer) -> None:
    """A client of a fast process moves to a slow one (its reader behind) with its last position: the slow
    reader reads up to that position first, then serves the resume; no 'ahead of the stream' refusal."""
    slow, fast = RedisBroker(redis_server.url), RedisBroker(redis_server.url)
    delivered: list[int] = []

    def slow_fan_out(topic: str, position: Position, message: Message) -> None:
        time.sleep(0.002)
        delivered.append(position.n)

    slow.start(slow_fan_out, lambda *a: None, Stats())
    fast.start(lambda *a: None, lambda *a: None, Stats())
    try:
        slow.subscribe("t")
        fast.subscribe("t")
        time.sleep(0.3)
        last = [fast.publish("t", f"m{i}") for i in range(300)][-1].position(10)
        answer: list = []
        done = threading.Event()

        def attach(entries: list, tail: Position | Lost) -> None:
            answer.append((entries, tail))
            done.set()

        slow.join("t", last, attach)
        assert done.wait(20)
        entries, tail = answer[0]
        assert entries == [] and isinstance(tail, Position) and tail.n == last.n, tail
        assert delivered == list(range(1, 301)), "the live subscribers got everything first, in order"
    finally:
        slow.close()
        fast.close()


def test_a_rolling_restart_replaces_every_child_and_its_subscribers_resume(redis_server: RedisServer,
                                                                           instances: list[Instance]) -> None:
    """SIGHUP to a 2-process supervisor while an in-process publisher publishes: each child is replaced by a
    fresh one (ready before the old one leaves), the old one's subscribers see 1012 and resume: every message
    once, in order. (The 20,000-message version with 9 subscribers is the timing test above.)"""
    pair = Instance("--broker", redis_server.url, "--processes", "2")
    instances.append(pair)
    old_children = set(pair.children())
    followers = [Follower(pair.url, "feed", name=f"sub{i}") for i in range(4)]
    assert wait_until(lambda: all(f.sub.position is not None for f in followers), 20)
    publisher = Server(DemoApp, host="127.0.0.1", port=None, broker=RedisBroker(redis_server.url)).start()
    count = 1500
    try:
        def publish() -> None:
            for i in range(count):
                publisher.publish(f"0:{i}", "feed")
                if i % 50 == 49:
                    time.sleep(0.05)

        thread = threading.Thread(target=publish)
        thread.start()
        assert wait_until(lambda: min(len(f.got) for f in followers) > 100, 30)
        pair.proc.send_signal(signal.SIGHUP)
        thread.join(60)
        assert wait_until(lambda: all(len(f.got) >= count for f in followers), 60), (
            [(f.name, len(f.got), dict(f.sub.close_codes)) for f in followers], pair.log()[-3000:])
        assert wait_until(lambda: "rolling restart done" in pair.log(), 30), pair.log()[-3000:]
    finally:
        publisher.shutdown()
    for f in followers:
        f.stop()
        assert f.error is None, (f.name, f.error)
        assert_exactly_once_in_order(f, 1, count)
    # Each was on an old child (and some reconnected to the other old one before its turn came).
    assert all(f.sub.close_codes[1012] >= 1 for f in followers), [f.sub.close_codes for f in followers]
    assert not old_children & set(pair.children()) and len(pair.children()) == 2
    assert pair.stop() == 0, pair.log()[-3000:]
