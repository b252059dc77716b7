"""Real servers for the ``wsrace-check`` tests and measurement: flask-sock, websockets, ``repro serve``.

Each is started on 127.0.0.1 with a free port and stopped by the context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from .helpers import stop_process

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
