"""Scale-out (issue 10): processes on one port, instances joined by a real Redis, no silent loss.

Every test starts Debian's ``redis-server`` on a free port with its own temp
dir (``tests/redis_server.py``) and stops it by PID; instances run as
``python -m server`` subprocesses on 127.0.0.1. Without ``redis-server`` the
Redis tests skip, except under ``CI=true`` where that is a failure.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from websockets.sync.client import ClientConnection, connect

from server import DemoApp, Server
from server.scaleout.broker import BrokerError, PublishQueueFull, RedisBroker

from ..helpers import ROOT, wait_until
from ..instance import Instance
from ..redis_server import RedisServer, free_port, require_redis

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")]



class Subscriber:
    """A /broadcast client reading on its own thread; records messages, close code and reason."""

    def __init__(self, url: str, name: str = "") -> None:
        self.ws: ClientConnection = connect(f"{url}/broadcast", open_timeout=10, max_size=None)
        self.name = name or url
        self.messages: list[str] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                message = self.ws.recv(timeout=60)
                assert isinstance(message, str)
                self.messages.append(message)
        except Exception:
            pass
        self.close_code, self.close_reason = self.ws.close_code, self.ws.close_reason or ""

    def data(self) -> list[str]:
        return [m for m in self.messages if not m.startswith("hello")]

    def join(self, timeout: float = 20) -> None:
        self._thread.join(timeout)

    def close(self) -> None:
        self.ws.close()
        self._thread.join(10)


def _two_instances_with_subscribers(url: str, instances: list[Instance]) -> tuple[Instance, Instance, list[Subscriber]]:
    """Two instances on one broker (registered for cleanup), three /broadcast subscribers on each."""
    a = Instance("--broker", url)
    instances.append(a)
    b = Instance("--broker", url)
    instances.append(b)
    return a, b, [Subscriber(inst.url, f"{tag}{i}") for tag, inst in (("a", a), ("b", b)) for i in range(3)]


def _all_hear(subs: list[Subscriber], send: ClientConnection, timeout: float = 15) -> None:
    """Publish markers until every subscriber got one: all subscriptions are live everywhere."""
    deadline = time.monotonic() + timeout
    n = 0
    while not all(any(m.startswith("hello") for m in s.messages) for s in subs):
        assert time.monotonic() < deadline, [s.name for s in subs if not s.messages]
        send.send(f"hello {n}")
        n += 1
        time.sleep(0.1)


def _assert_per_publisher_order(sub: Subscriber, publishers: int, count: int, complete: bool = True) -> bool:
    """Each publisher's messages strictly in order, no duplicates; returns whether all arrived."""
    last = dict.fromkeys(range(publishers), -1)
    for m in sub.data():
        p, seq = (int(x) for x in re.fullmatch(r"p(\d+) (\d+)", m).groups())  # type: ignore[union-attr]
        assert seq > last[p], f"{sub.name}: publisher {p} seq {seq} after {last[p]} (reordered or duplicated)"
        last[p] = seq
    got_all = all(v == count - 1 for v in last.values()) and len(sub.data()) == publishers * count
    if complete:
        assert got_all, f"{sub.name}: got {len(sub.data())} of {publishers * count}; last per publisher {last}"
    return got_all


def test_two_instances_and_two_processes_form_one_broadcast_domain(redis_server, instances) -> None:
    """2 instances on 2 ports + 1 with --processes 2, on one Redis: every subscriber gets every message of
    every publisher, in each publisher's order. (With Server.publish bypassing the broker, i.e. fanning out
    locally only, subscribers of the other instances get nothing and this fails.)"""
    a = Instance("--broker", redis_server.url)
    instances.append(a)
    b = Instance("--broker", redis_server.url)
    instances.append(b)
    c = Instance("--broker", redis_server.url, "--processes", "2")
    instances.append(c)
    assert wait_until(lambda: len(c.children()) == 2, 10), c.log()
    subs = [Subscriber(inst.url, f"{tag}{i}") for tag, inst, k in (("a", a, 3), ("b", b, 3), ("c", c, 8))
            for i in range(k)]
    pubs = [connect(f"{inst.url}/broadcast", open_timeout=10) for inst in (a, b, c)]
    try:
        _all_hear(subs, pubs[0])
        count = 200

        def publish(p: int) -> None:
            for seq in range(count):
                pubs[p].send(f"p{p} {seq}")

        threads = [threading.Thread(target=publish, args=(p,)) for p in range(len(pubs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        want = len(pubs) * count
        assert wait_until(lambda: all(len(s.data()) >= want for s in subs), 30), \
            {s.name: len(s.data()) for s in subs}
        for s in subs:
            _assert_per_publisher_order(s, len(pubs), count)
    finally:
        for ws in pubs:
            ws.close()
        for s in subs:
            s.close()
    for inst in (a, b, c):
        assert inst.stop() == 0, inst.log()
        assert "Traceback" not in inst.log(), inst.log()


def _publish_through_outage(redis_server: RedisServer, pub: ClientConnection, count: int) -> None:
    """Publish ``count`` messages at ~150/s; Redis is killed after a third and restarted 1 s later."""
    for seq in range(count):
        if seq == count // 3:
            redis_server.kill()  # SIGKILL: a crash
        if seq == count // 3 + 150:
            redis_server.start()
        pub.send(f"p0 {seq}")
        time.sleep(1 / 150)


def test_redis_crash_and_restart_with_its_data_loses_nothing(instances) -> None:
    """Redis (AOF, fsync always) killed mid-stream and restarted: the instances survive, publishes made while
    it was down wait locally and go out in order, readers resume from their last IDs: every subscriber gets
    everything, nobody is closed. (Without the local queue, or with readers starting from '$' again on
    reconnect, messages go missing and this fails.)"""
    redis_server = RedisServer(persistent=True).start()
    try:
        a, b, subs = _two_instances_with_subscribers(redis_server.url, instances)
        with connect(f"{a.url}/broadcast", open_timeout=10) as pub:
            _all_hear(subs, pub)
            count = 600
            _publish_through_outage(redis_server, pub, count)
            assert wait_until(lambda: all(len(s.data()) >= count for s in subs), 30), \
                ({s.name: len(s.data()) for s in subs}, a.log()[-3000:])
        for s in subs:
            _assert_per_publisher_order(s, 1, count)
            assert s.close_code is None, (s.name, s.close_code, s.close_reason)
            s.close()
        for inst in (a, b):
            log = inst.log()
            assert "reconnected" in log, log
            assert inst.stop() == 0, log
    finally:
        redis_server.stop()


def test_redis_restart_without_its_data_closes_subscribers_1013(redis_server, instances) -> None:
    """Redis without persistence killed and restarted: the streams vanished with whatever was in them, so
    every subscriber keeps what it got (in order) and is closed with 1013 and a reason saying messages
    were missed; the instances survive and serve new subscribers. (Without the gap check, subscribers stay
    open, having silently missed what was lost, and this fails.)"""
    a, b, subs = _two_instances_with_subscribers(redis_server.url, instances)
    with connect(f"{a.url}/broadcast", open_timeout=10) as pub:
        _all_hear(subs, pub)
        _publish_through_outage(redis_server, pub, 450)
    for s in subs:
        s.join(20)
        assert s.close_code == 1013, (s.name, s.close_code, s.close_reason, len(s.data()))
        assert "missed" in s.close_reason, s.close_reason
        _assert_per_publisher_order(s, 1, 450, complete=False)
    late = [Subscriber(inst.url, f"late-{i}") for i, inst in enumerate((a, b))]
    with connect(f"{b.url}/broadcast", open_timeout=10) as pub:
        _all_hear(late, pub)
    for s in late:
        s.close()
    for inst in (a, b):
        log = inst.log()
        assert "messages missed" in log and "reconnected" in log, log
        assert inst.stop() == 0, log


def test_reader_behind_the_retention_closes_its_subscribers_1013(instances) -> None:
    """A process that falls further behind than --stream-maxlen (here: frozen with SIGSTOP while another
    instance publishes 200 messages into a stream kept at ~10) finds its last ID trimmed away: its subscribers
    get what is left, in order, then 1013 'messages were missed (N trimmed)'; the up-to-date instance's
    subscribers get everything. (XREAD alone skips trimmed entries silently: without the n counter this
    fails.)"""
    redis_server = RedisServer(extra=("--stream-node-max-entries", "4")).start()
    try:
        a = Instance("--broker", redis_server.url, "--stream-maxlen", "10")
        instances.append(a)
        b = Instance("--broker", redis_server.url, "--stream-maxlen", "10")
        instances.append(b)
        sub_a, sub_b = Subscriber(a.url, "a"), Subscriber(b.url, "b")
        with connect(f"{a.url}/broadcast", open_timeout=10) as pub:
            _all_hear([sub_a, sub_b], pub)
            os.kill(b.proc.pid, signal.SIGSTOP)
            try:
                count = 200
                for seq in range(count):  # one at a time: a's own reader never falls behind
                    pub.send(f"p0 {seq}")
                    while pub.recv(timeout=10) != f"p0 {seq}":
                        pass
            finally:
                os.kill(b.proc.pid, signal.SIGCONT)
        sub_b.join(20)
        assert sub_b.close_code == 1013, (sub_b.close_code, sub_b.close_reason, len(sub_b.data()))
        assert re.search(r"messages were missed \(\d+ trimmed\)", sub_b.close_reason), sub_b.close_reason
        _assert_per_publisher_order(sub_b, 1, count, complete=False)
        assert len(sub_b.data()) < count
        assert wait_until(lambda: len(sub_a.data()) >= count, 10)
        _assert_per_publisher_order(sub_a, 1, count)
        sub_a.close()
        assert "trimmed" in b.log()
        for inst in (a, b):
            assert inst.stop() == 0, inst.log()
    finally:
        redis_server.stop()


def test_full_publish_queue_is_an_error_not_a_silent_drop(instances) -> None:
    """Broker unreachable: publishes wait in the local queue; past --publish-queue the API raises
    PublishQueueFull (counted) and a /broadcast client is closed with 1013 'try again later'."""
    require_redis()
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    srv = Server(DemoApp, port=0, broker=RedisBroker(dead, max_queue=5, ready_timeout=0.1)).start()
    try:
        queued = [srv.publish(f"m{n}") for n in range(5)]
        with pytest.raises(PublishQueueFull):
            srv.publish("one too many")
        assert srv.stats.broker_publishes_failed == 1
        assert srv.stats.broker_publishes_queued == 5
        assert not queued[0].done()
        with pytest.raises(TimeoutError):
            queued[0].position(timeout=0.2)
    finally:
        srv.shutdown()
    assert srv.stats.broker_publishes_failed == 6  # the 5 queued ones could not be sent before shutdown either
    for published in queued:  # their positions will never come: waiting for one says so instead of hanging
        with pytest.raises(BrokerError, match="not published"):
            published.position()

    inst = Instance("--broker", dead, "--publish-queue", "5")
    instances.append(inst)
    with connect(f"{inst.url}/broadcast", open_timeout=10) as ws:
        for n in range(10):
            try:
                ws.send(f"m{n}")
            except Exception:
                break
        with pytest.raises(Exception):  # noqa: B017 - the close, whatever the client calls it
            while True:
                ws.recv(timeout=10)
        assert ws.close_code == 1013 and "try again later" in (ws.close_reason or ""), (ws.close_code, ws.close_reason)
    assert inst.stop() == 0


def test_processes_without_a_broker_is_a_clear_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "server", "--port", "0", "--processes", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc
    assert "needs a shared broker" in proc.stderr and "split brain" in proc.stderr, proc.stderr
    assert proc.stdout == ""


def test_missing_redis_extra_names_it() -> None:
    code = ("import sys; sys.modules['redis'] = None; from server.cli import main; "
            "sys.exit(main(['--port', '0', '--broker', 'redis://127.0.0.1:1/0']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc
    assert "pip install 'wsrace[redis]'" in proc.stderr, proc.stderr


def test_crashed_process_is_restarted(redis_server, instances) -> None:
    """--processes 2: a child killed with SIGKILL is restarted (logged, with backoff); the port keeps serving."""
    inst = Instance("--broker", redis_server.url, "--processes", "2")
    instances.append(inst)
    assert wait_until(lambda: len(inst.children()) == 2, 10), inst.log()
    before = inst.children()
    os.kill(before[0], signal.SIGKILL)
    assert wait_until(lambda: len(inst.children()) == 2 and before[0] not in inst.children(), 15), inst.log()
    assert re.search(r"process \d \(pid \d+\) exited with signal SIGKILL; restarting in", inst.log()), inst.log()
    new = next(pid for pid in inst.children() if pid not in before)
    assert wait_until(lambda: f"process pid {new} ready" in inst.log(), 15), inst.log()
    subs = [Subscriber(inst.url, f"s{i}") for i in range(6)]
    with connect(f"{inst.url}/broadcast", open_timeout=10) as pub:
        _all_hear(subs, pub)
    for s in subs:
        s.close()
    assert inst.stop() == 0, inst.log()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_with_two_processes_closes_every_client_1001_and_exits_0(redis_server, instances, signum) -> None:
    inst = Instance("--broker", redis_server.url, "--processes", "2", "--publishers", "1", "--rate", "100")
    instances.append(inst)
    assert wait_until(lambda: len(inst.children()) == 2, 10), inst.log()
    children = inst.children()
    subs = [Subscriber(inst.url, f"s{i}") for i in range(8)]
    assert wait_until(lambda: all(s.messages for s in subs), 10)  # the ticker reaches both processes
    assert inst.stop(signum) == 0, inst.log()
    for s in subs:
        s.join(20)
        assert s.close_code == 1001, (s.name, s.close_code, s.close_reason)
    assert not [pid for pid in children if os.path.exists(f"/proc/{pid}")], "a child outlived the supervisor"
    assert "Traceback" not in inst.log(), inst.log()
    assert inst.extra_stdout.read() == "", "children must not print the ready line again"


def test_topics_in_process_with_the_memory_broker() -> None:
    """/broadcast?topic=NAME: a topic's messages reach its subscribers only; the default topic stays as it was;
    Server.publish returns the local fan-out's result; a bad topic name is a 400."""
    from ..helpers import http_exchange, running_server, upgrade_request

    with running_server() as srv:
        with connect(f"{srv.url}/broadcast?topic=news") as news, connect(f"{srv.url}/broadcast") as default:
            assert wait_until(lambda: len(srv.subscribers("news")) == 1 and len(srv.router.hub.subscribers) == 1, 5)  # type: ignore[attr-defined]
            news.send("for news")
            assert news.recv(timeout=5) == "for news"
            default.send("for everyone")
            assert default.recv(timeout=5) == "for everyone"
            published = srv.publish(b"api", topic="news")
            assert published.result is not None and published.result.queued == 1 and published.done()
            assert news.recv(timeout=5) == b"api"
            with pytest.raises(TimeoutError):
                default.recv(timeout=0.3)
        reply = http_exchange(srv.port, upgrade_request("/broadcast?topic=a%20b"))
        assert reply.startswith(b"HTTP/1.1 400"), reply[:100]


def test_children_leave_when_the_supervisor_is_killed(redis_server, instances) -> None:
    """A supervisor killed with SIGKILL cannot stop its children: they notice and shut down (no orphans on the port)."""
    inst = Instance("--broker", redis_server.url, "--processes", "2")
    instances.append(inst)
    assert wait_until(lambda: len(inst.children()) == 2, 10), inst.log()
    children = inst.children()
    inst.proc.kill()
    inst.proc.wait(10)

    def gone(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split()[2] == "Z"  # a zombie has exited (its new parent reaps it)
        except FileNotFoundError:
            return True

    try:
        assert wait_until(lambda: all(gone(pid) for pid in children), 15), f"orphans left: {children}"
    finally:
        for pid in children:  # started by this test: never leave them behind, even when it fails
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
    assert "supervisor (pid" in inst.log() and "is gone: shutting down" in inst.log(), inst.log()
