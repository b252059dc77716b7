"""Running one connection's handler: ``on_open``/``on_close`` on the IO thread, ``on_message`` on the worker pool.

Messages go through a :class:`~server.connections.strand.Strand` — one at a time, in the
order received — unless the handler class sets ``concurrent_messages = True``
(each on its own) or ``inline = True``: then ``on_message`` runs on the IO
thread itself, as soon as the message is complete — no thread hop, like an
asyncio callback — and must never block; one that takes longer than
``Limits.inline_warn`` is logged (at most once a minute) and counted.
A handler that raises is logged and counted; a failing ``on_message`` closes
its connection with 1011. Each handled message is reported back to the IO
thread (``on_done``), which is how input flow control and a failing
connection's close know the handlers are done.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from functools import partial

from ..codes import CloseCode
from ..core.loop import IOLoop
from ..errors import ConnectionClosed
from ..stats import Stats
from .handle import ConnectionHandle
from .handler import Handler
from .strand import Strand, hand_off

logger = logging.getLogger(__name__)
_slow_logged = [float("-inf")]  # when a slow inline handler was last logged (IO thread; rate limit)


class Dispatcher:
    """One connection's handler and the way its messages reach it."""

    def __init__(self, conn: ConnectionHandle, handler: Handler, loop: IOLoop, executor: Executor, stats: Stats,
                 on_done: Callable[[str | bytes], None], inline_warn: float) -> None:
        self.handler = handler
        self._conn = conn
        self._inline_warn = inline_warn
        self._loop = loop
        self._hand_off = hand_off(executor)
        self._stats = stats
        self._on_done = on_done
        self._inline = bool(getattr(handler, "inline", False))
        self._strand = None if self._inline or getattr(handler, "concurrent_messages", False) else Strand(executor)

    def open(self) -> bool:
        """``on_open`` (IO thread); False if it raised (logged and counted)."""
        try:
            self.handler.on_open(self._conn)
        except Exception:
            self._stats.handler_errors += 1
            logger.exception("%s: on_open failed", self._conn.peer)
            return False
        return True

    def dispatch(self, message: str | bytes) -> None:
        """Hand ``message`` to the pool (IO thread); ``on_done(message)`` follows on the IO thread."""
        self._stats.messages_in += 1
        if self._inline:
            self._handle_inline(message)
            return
        try:
            if self._strand is not None:
                self._strand.submit(partial(self._handle, message))
            else:
                self._hand_off(partial(self._handle, message))
        except RuntimeError:  # executor shut down
            self._on_done(message)

    def after_messages(self, job: Callable[[], object]) -> None:
        """Run ``job`` on the pool after every message dispatched so far has been handled (IO thread).

        In order with the messages for a strand; for ``concurrent_messages``
        handlers, only after those already started. Runs ``job`` here if the
        pool is shut down.
        """
        try:
            if self._strand is not None:
                self._strand.submit(job)
            else:
                self._hand_off(job)
        except RuntimeError:  # executor shut down
            job()

    def closed(self) -> None:
        """``on_close`` (IO thread), once the socket is closed."""
        try:
            self.handler.on_close(self._conn)
        except Exception:
            logger.exception("%s: on_close failed", self._conn.peer)

    def _handle(self, message: str | bytes) -> None:
        """Runs on a worker thread."""
        started = time.perf_counter()
        try:
            self.handler.on_message(self._conn, message)
        except ConnectionClosed:
            pass  # the client left while we answered: nothing to do
        except Exception:
            logger.exception("%s: handler failed on a message", self._conn.peer)
            self._loop.post(self._count_error)
            self._conn.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._loop.post(partial(self._handled, message, time.perf_counter() - started))

    def _handled(self, message: str | bytes, took: float) -> None:
        """IO thread: a worker is done with ``message`` after ``took`` seconds (observed here: one writer)."""
        self._stats.handler_seconds.observe(took)
        self._on_done(message)

    def _handle_inline(self, message: str | bytes) -> None:
        """On the IO thread: the handler now, timed, then ``on_done`` (its replies are queued by then)."""
        started = time.perf_counter()
        try:
            self.handler.on_message(self._conn, message)
        except ConnectionClosed:
            pass
        except Exception:
            logger.exception("%s: inline handler failed on a message", self._conn.peer)
            self._count_error()
            self._conn.close(CloseCode.INTERNAL_ERROR, "internal error")
        took = time.perf_counter() - started
        self._stats.handler_seconds.observe(took)
        if took > self._inline_warn:
            self._stats.inline_slow += 1
            now = time.monotonic()
            if now - _slow_logged[0] >= 60:
                _slow_logged[0] = now
                logger.warning("%s: an inline on_message held the IO thread for %.1f ms (every connection waited; "
                               "inline handlers must not block: use the worker pool for slow work)",
                               self._conn.peer, took * 1000)
        self._on_done(message)

    def _count_error(self) -> None:
        self._stats.handler_errors += 1
