"""Real servers for the ``wsrace-check`` tests and measurement: flask-sock, websockets, ``repro serve``.

Each is started on 127.0.0.1 with a free port and stopped by the context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .helpers import http_exchange, stop_process, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def _subprocess_server(args: list[str]) -> Iterator[int]:
    """Start a server that prints ``listening on ws://127.0.0.1:PORT...`` first; stop it by its PID."""
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on ws://127.0.0.1:"), f"server did not start: {line!r}"
        yield int(line.split()[2].rsplit(":", 1)[1].split("/")[0])
    finally:
        stop_process(proc, timeout=10)


def flask_sock_server(lock: bool = False) -> contextlib.AbstractContextManager[int]:
    """examples/flask_sock_pool.py: replies from a ThreadPoolExecutor, Werkzeug's threaded server, its own process."""
    return _subprocess_server(["examples/flask_sock_pool.py", "--port", "0", *(["--lock"] if lock else [])])


@dataclass
class WsgiServer:
    """A WSGI server process serving tests/flask_apps.py."""

    port: int
    proc: subprocess.Popen
    log: str  # its stderr (gunicorn's and Werkzeug's logs)

    def log_tail(self, chars: int = 3000) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()[-chars:]

    def last_close_is(self, want: bytes, ssl_context: ssl.SSLContext | None = None) -> bool:
        """Whether the app's /last-close (how its last /attached view ended) says ``want`` within 10 s."""
        return wait_until(lambda: want in http_exchange(self.port, b"GET /last-close HTTP/1.1\r\nHost: x\r\n\r\n",
                                                        ssl_context=ssl_context), timeout=10, interval=0.1)


WSGI_SERVERS = ["werkzeug", "gthread", "sync"]


@contextlib.contextmanager
def wsgi_server(kind: str, fixed: bool = True, threads: int = 8, ready_timeout: float = 30,
                extra_args: Sequence[str] = ()) -> Iterator[WsgiServer]:
    """tests/flask_apps.py under a real WSGI server, on a free port; stopped by its PID (SIGTERM, then SIGKILL).

    ``kind``: ``werkzeug`` (threaded dev server), ``gthread`` (gunicorn, one
    worker, ``threads`` threads) or ``sync`` (gunicorn's sync worker, with
    ``--timeout 0``: a blocking WebSocket view would otherwise get the worker
    killed). ``fixed``: ``wsrace.flask.Sock``, else ``flask_sock.Sock``.
    """
    port = _free_port()
    if kind == "werkzeug":
        args = ["-m", "tests.flask_apps", "--port", str(port), *([] if fixed else ["--flask-sock"]), *extra_args]
    else:
        args = ["-m", "gunicorn", "-b", f"127.0.0.1:{port}", "--workers", "1", "-c", "python:tests.gunicorn_conf",
                "--graceful-timeout", "10", *_gunicorn_quiet()]
        args += ["--threads", str(threads)] if kind == "gthread" else ["--worker-class", "sync", "--timeout", "0"]
        args += extra_args
        args.append(f"tests.flask_apps:create_app(fixed={fixed})")
    fd, log = tempfile.mkstemp(prefix=f"wsrace-{kind}-", suffix=".log")
    with os.fdopen(fd, "w") as err:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    server = WsgiServer(port, proc, log)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            assert proc.poll() is None, f"{kind} exited with {proc.returncode}:\n{server.log_tail()}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline, f"{kind} did not listen within {ready_timeout} s:\n{server.log_tail()}"
            time.sleep(0.1)
        yield server
    finally:
        stop_process(proc, timeout=15)
        os.unlink(log)


def _gunicorn_quiet() -> list[str]:
    """No control socket (gunicorn >= 25 opens one in ~/.gunicorn by default; parallel servers would share it)."""
    from gunicorn.config import KNOWN_SETTINGS

    return ["--no-control-socket"] if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS) else []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def repro_server(mode: str) -> contextlib.AbstractContextManager[int]:
    """``python -m repro serve --mode MODE`` (the repro's routes with that write discipline)."""
    return _subprocess_server(["-m", "repro", "serve", "--mode", mode, "--port", "0", "--log-level", "ERROR"])


async def _echo(ws: Any) -> None:
    async for message in ws:
        await ws.send(message)


@contextlib.contextmanager
def websockets_echo_server(ssl_context: ssl.SSLContext | None = None,
                           handler: Callable[[Any], Awaitable[None]] | None = None) -> Iterator[int]:
    """A ``websockets`` asyncio server (an echo server unless ``handler`` is given) on its own event loop thread.

    ``ssl_context``: a server context (tests/tls.py), for wss://.
    """
    from websockets.asyncio.server import serve

    loop = asyncio.new_event_loop()
    started = threading.Event()
    port: list[int] = []
    stop: list[asyncio.Event] = []

    async def main() -> None:
        stop.append(asyncio.Event())
        async with serve(handler or _echo, "127.0.0.1", 0, max_size=None, ssl=ssl_context) as server:
            port.append(next(iter(server.sockets)).getsockname()[1])
            started.set()
            await stop[0].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), name="websockets-echo", daemon=True)
    thread.start()
    assert started.wait(10), "websockets server did not start"
    try:
        yield port[0]
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(10)
        loop.close()
