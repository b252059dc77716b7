"""Inline handlers (``Handler.inline``): ``on_message`` on the IO thread, no hop to the pool and back."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from server import ConnectionHandle, Limits
from server.connections import dispatch
from server.demo.app import DemoApp

from ..helpers import running_server

pytestmark = pytest.mark.timeout(60)


class Recording:
    inline = True

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.threads: list[str] = []

    def on_open(self, conn: ConnectionHandle) -> None:
        pass

    def on_message(self, conn: ConnectionHandle, message: str | bytes) -> None:
        self.threads.append(threading.current_thread().name)
        if message == "crash":
            raise RuntimeError("inline bug on purpose")
        if self.delay:
            time.sleep(self.delay)  # what an inline handler must not do
        conn.send(message)

    def on_close(self, conn: ConnectionHandle) -> None:
        pass


class Router:
    def __init__(self, handler: Recording) -> None:
        self.handler = handler

    def route(self, request: object) -> Recording:
        return self.handler


def test_on_message_runs_on_the_io_thread_in_order() -> None:
    handler = Recording()
    limits = Limits(inline_warn=2.0)  # a scheduler or GC pause on a busy CI box is not what this test is about
    with running_server(limits=limits, router=Router(handler)) as srv, \
            connect(f"ws://127.0.0.1:{srv.port}/") as ws:
        messages = [f"m{i}" if i % 2 else f"m{i}".encode() * 1000 for i in range(500)]
        for message in messages:  # pipelined: all sent before reading any reply
            ws.send(message)
        got = [ws.recv(timeout=10) for _ in messages]
        io_thread = srv.loop.thread.name  # type: ignore[union-attr]
    assert got == messages
    assert set(handler.threads) == {io_thread}
    assert srv.stats.inline_slow == 0  # a fast handler is not counted as slow


def test_a_slow_inline_handler_is_logged_once_and_counted(caplog: pytest.LogCaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "_slow_logged", [float("-inf")])  # the once-a-minute limit is per process
    handler = Recording(delay=0.02)
    limits = Limits(ping_interval=None, inline_warn=0.005)
    with caplog.at_level(logging.WARNING, logger="server.connections.dispatch"), \
            running_server(limits=limits, router=Router(handler)) as srv, connect(f"ws://127.0.0.1:{srv.port}/") as ws:
        for i in range(3):
            ws.send(f"slow {i}")
            assert ws.recv(timeout=10) == f"slow {i}"
    assert srv.stats.inline_slow == 3
    warnings = [r.getMessage() for r in caplog.records if "held the IO thread" in r.getMessage()]
    assert len(warnings) == 1 and "must not block" in warnings[0], warnings


def test_an_inline_handler_that_raises_closes_with_1011_and_the_server_goes_on() -> None:
    handler = Recording()
    with running_server(router=Router(handler)) as srv:
        with connect(f"ws://127.0.0.1:{srv.port}/") as ws:
            ws.send("crash")
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        assert srv.stats.handler_errors == 1
        with connect(f"ws://127.0.0.1:{srv.port}/") as ws:
            ws.send("still here")
            assert ws.recv(timeout=10) == "still here"


def test_the_demo_apps_echo_inline_route() -> None:
    with running_server(router=DemoApp) as srv, connect(f"ws://127.0.0.1:{srv.port}/echo-inline") as ws:
        ws.send(b"\x00" * 70000)
        assert ws.recv(timeout=10) == b"\x00" * 70000
