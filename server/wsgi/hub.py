"""The process-wide wsrace server behind every WSGI WebSocket: one IO thread owns all their sockets.

Started on first use, in the process that uses it: under gunicorn, in each
worker (never in a ``--preload`` master, whose threads a fork would not
carry; a forked child starts its own). Connections reach it only through
:meth:`Server.adopt` — it has no listener.

It is shut down, closing every WebSocket with 1001 after what is queued,
when the interpreter exits (before non-daemon threads are joined, so views
blocked in ``ws.receive()`` get :class:`ConnectionClosed` and return) and by
:func:`shutdown`. gunicorn's SIGTERM does not exit a worker whose views are
blocked: install :func:`post_worker_init` as the gunicorn hook of that name.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import weakref
from typing import TYPE_CHECKING, Any

from ..protocol.handshake import HttpError, HttpRequest
from ..protocol.http import Response
from ..server import Server

if TYPE_CHECKING:
    from .websocket import WebSocket

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_hub: Server | None = None
_last: Server | None = None  # the hub shutdown() last took: a second shutdown() waits for it
_sockets: weakref.WeakSet[WebSocket] = weakref.WeakSet()  # every WebSocket given to a hub of this process
_exit_registered = False


class _NoRoutes:
    """The hub's own router: every connection brings its own (``adopt(router=...)``), so this never runs."""

    def route(self, request: HttpRequest) -> Response:
        raise HttpError(404, "not found")


def track(ws: WebSocket) -> None:
    """Remember ``ws`` so that :func:`shutdown` can end it even if its close job never ran."""
    _sockets.add(ws)


def hub() -> Server:
    """The running hub of this process, started on first use."""
    global _hub
    with _lock:
        if _hub is None:
            _hub = Server(_NoRoutes(), port=None).start()
            _register_exit()
            logger.debug("wsrace WSGI hub started in process %d", os.getpid())
        return _hub


def shutdown(timeout: float = 10.0) -> bool:
    """Close every WebSocket of this process with 1001 (after what is queued) and stop the hub. Any thread.

    False if some connections had to be cut after ``timeout``. The next
    :func:`~server.wsgi.accept` starts a new hub.
    """
    global _hub, _last
    with _lock:
        running = _last = _hub or _last
        _hub = None
    if running is None:
        return True
    # Server.shutdown() waits for a shutdown already under way: the interpreter's exit hook must not
    # return (and the process end) while a SIGTERM's shutdown thread is still sending the 1001s.
    clean = running.shutdown(timeout)
    # A connection's close reaches its WebSocket through the worker pool, after its last message; the
    # pool's queued work is cancelled at shutdown, so end here whatever it did not: no view waits for ever.
    for ws in list(_sockets):
        ws.stopped()
    return clean


def post_worker_init(worker: Any) -> None:
    """A gunicorn hook (``post_worker_init = wsrace.wsgi.post_worker_init`` in gunicorn.conf.py).

    Makes a worker's SIGTERM (gunicorn's graceful stop) close its WebSockets
    with 1001 first, so views blocked in ``ws.receive()`` return and the worker
    exits instead of being killed after ``--graceful-timeout``.
    """
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        threading.Thread(target=shutdown, name="wsrace-wsgi-shutdown", daemon=True).start()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)


def _forget_after_fork() -> None:
    """In a forked child: the parent's hub has no IO thread here."""
    global _hub, _last, _lock, _sockets
    _hub, _last, _lock, _sockets = None, None, threading.Lock(), weakref.WeakSet()


def _register_exit() -> None:
    global _exit_registered
    if _exit_registered:
        return
    _exit_registered = True
    # threading's exit hooks run before non-daemon threads are joined (atexit runs after):
    # a WSGI thread blocked in ws.receive() would otherwise keep the process alive.
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is not None:
            register(shutdown)
            return
    except RuntimeError:  # the interpreter is already shutting down
        return
    import atexit

    atexit.register(shutdown)


os.register_at_fork(after_in_child=_forget_after_fork)
