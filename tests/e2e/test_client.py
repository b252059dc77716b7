"""server/client.py, the reference subscriber, against real servers: how each way a connection ends is handled.

The resume itself (every message once, across closes, restarts and
processes) is tests/e2e/test_resume.py; here: refusals, protocol errors,
4410 and starting over, silence, pings, TLS, and close() from another thread.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable

import pytest

from server import ConnectionHandle, HttpError, HttpRequest, Limits, Server
from server.client import HistoryLost, Subscription, SubscriptionEnded
from server.demo.app import DemoApp
from server.scaleout.broker import MemoryBroker

from ..helpers import running_server, wait_until
from ..tls import TLSFiles

pytestmark = pytest.mark.timeout(60)


class Scripted:
    """A router whose /broadcast connections do what the test says in on_open; other paths are 404."""

    def __init__(self, on_open: Callable[[ConnectionHandle, int], object]) -> None:
        self.on_open_script = on_open
        self.requests: list[str] = []

    def route(self, request: HttpRequest) -> Scripted:
        self.requests.append(request.target if hasattr(request, "target") else request.path)
        if request.path != "/broadcast":
            raise HttpError(404, "no such route")
        return self

    def on_open(self, conn: ConnectionHandle) -> None:
        self.on_open_script(conn, len(self.requests))

    def on_message(self, conn: ConnectionHandle, message: str | bytes) -> None:
        pass

    def on_close(self, conn: ConnectionHandle) -> None:
        pass


def iterate(sub: Subscription, limit: float = 20) -> tuple[list[tuple[str, str | bytes]], BaseException | None]:
    got: list[tuple[str, str | bytes]] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            for item in sub:
                got.append(item)
        except BaseException as exc:  # the test reads it
            error.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), "the iteration did not end"
    return got, error[0] if error else None


def test_an_http_refusal_ends_the_subscription_with_the_servers_answer() -> None:
    with running_server() as srv:
        got, error = iterate(Subscription(srv.url, "t", since="not-a-position"))
    assert got == [] and isinstance(error, SubscriptionEnded), error
    assert "refused: HTTP 400" in str(error) and "not a position" in str(error)


def test_a_busy_server_is_retried_and_a_protocol_error_ends_it() -> None:
    """503 and a silent close are retried; a close with 1003 (unsupported data) is not: it would repeat."""
    def script(conn: ConnectionHandle, attempt: int) -> None:
        if attempt == 2:
            conn.close(1001, "going away")
        else:
            conn.send("e1.1\nhello")
            conn.close(1003, "cannot take that")

    router = Scripted(script)
    busy = [True]
    original = router.route

    def route(request: HttpRequest) -> Scripted:
        if busy[0]:
            busy[0] = False
            router.requests.append("503")
            raise HttpError(503, "busy")
        return original(request)

    router.route = route  # type: ignore[method-assign]
    srv = Server(lambda server: router, host="127.0.0.1", port=0, limits=Limits(ping_interval=None)).start()
    try:
        sub = Subscription(srv.url, "t", min_backoff=0.01)
        got, error = iterate(sub)
    finally:
        srv.shutdown()
    assert got == [("e1.1", "hello")]
    assert isinstance(error, SubscriptionEnded) and error.code == 1003 and error.reason == "cannot take that", error
    assert sub.reconnects == 1 and sub.close_codes == {1001: 1, 1003: 1}
    assert "since=e1.1" not in router.requests[2], "the 1001 came before any position"


def test_after_4410_the_position_is_dropped_and_iterating_again_starts_over() -> None:
    with running_server(broker=MemoryBroker(maxlen=2)) as srv:
        old = srv.publish("m1", "t").position()
        for i in range(2, 6):
            srv.publish(f"m{i}", "t")
        sub = Subscription(srv.url, "t", since=str(old))
        _, error = iterate(sub)
        assert isinstance(error, HistoryLost) and sub.position is None, (error, sub.position)
        fresh: list = []
        thread = threading.Thread(target=lambda: fresh.extend(itertools.islice(sub, 1)), daemon=True)
        thread.start()
        assert wait_until(lambda: sub.position is not None, 10), "the fresh subscription's bookmark"
        srv.publish("m6", "t")
        thread.join(10)
        sub.close()
    assert not thread.is_alive() and [m for _, m in fresh] == ["m6"]


def test_a_silent_connection_is_given_up_after_idle_timeout_and_resumed() -> None:
    """A dead path sends no FIN: without a read timeout the client would wait forever."""
    def script(conn: ConnectionHandle, attempt: int) -> None:
        if attempt > 1:
            conn.send("e2.1\nafter the silence")

    router = Scripted(script)
    srv = Server(lambda server: router, host="127.0.0.1", port=0, limits=Limits(ping_interval=None)).start()
    try:
        sub = Subscription(srv.url, "t", min_backoff=0.01, idle_timeout=0.3)
        items: list = []
        thread = threading.Thread(target=lambda: items.extend(itertools.islice(sub, 1)), daemon=True)
        thread.start()
        thread.join(10)
        sub.close()
    finally:
        srv.shutdown()
    assert not thread.is_alive(), "islice stops after one"
    assert items == [("e2.1", "after the silence")] and sub.close_codes[1006] >= 1, sub.close_codes


def test_pings_are_answered_over_tls_and_close_from_another_thread_ends_the_iteration(tls_files: TLSFiles) -> None:
    limits = Limits(ping_interval=0.05, ping_timeout=0.5)
    srv = Server(DemoApp, host="127.0.0.1", port=0, limits=limits, ssl_context=tls_files.server_context()).start()
    try:
        sub = Subscription(srv.url, "t", ssl_context=tls_files.client_context())
        result: list = []
        thread = threading.Thread(target=lambda: result.append(iterate(sub, 30)), daemon=True)
        thread.start()
        assert wait_until(lambda: sub.position is not None, 10)
        time.sleep(1.0)  # twenty pings, each answered, or the server would close it with 1011
        srv.publish("over tls", "t")
        assert wait_until(lambda: str(sub.position).endswith(".1"), 10), sub.position
        assert srv.stats.keepalive_pongs >= 10, srv.stats.keepalive_pongs
        sub.close()
        thread.join(10)
    finally:
        srv.shutdown()
    got, error = result[0]
    assert error is None and [m for _, m in got] == ["over tls"] and sub.reconnects == 0, (got, error)


def test_close_while_the_server_is_unreachable_ends_the_retries() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sub = Subscription(f"ws://127.0.0.1:{port}", "t", min_backoff=0.01, max_backoff=0.05)
    result: list = []
    thread = threading.Thread(target=lambda: result.append(iterate(sub, 30)), daemon=True)
    thread.start()
    time.sleep(0.3)
    sub.close()
    thread.join(10)
    assert result and result[0] == ([], None)


def test_a_binary_message_without_a_position_is_a_clear_error() -> None:
    router = Scripted(lambda conn, attempt: conn.send(b"no envelope"))
    srv = Server(lambda server: router, host="127.0.0.1", port=0, limits=Limits(ping_interval=None)).start()
    try:
        got, error = iterate(Subscription(f"{srv.url}/broadcast", "t"))
    finally:
        srv.shutdown()
    assert got == [] and isinstance(error, SubscriptionEnded) and "without a position" in str(error), error
