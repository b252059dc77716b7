"""Admission control: who gets a connection slot, and what happens under a flood.

Everything here runs on the IO thread (the loop's rules: only the IO thread
touches sockets; timers are ``loop.call_later``), except
:func:`raise_nofile_limit`, which the CLI calls once before the server starts.

* **Accept errors.** ``accept()`` failing with EMFILE/ENFILE/ENOBUFS/ENOMEM
  leaves the connection in the kernel's queue, so the listener stays readable
  and a selector loop would spin. :meth:`Admission.accept_failed` stops
  watching the listener for a backoff (50 ms, doubling, capped at 1 s) and
  resumes it on a timer; a successful accept resets the backoff.
* **Connection limits.** Past ``max_connections`` (default: derived from the
  descriptor limit, see :func:`default_max_connections`), a newcomer is
  accepted, answered a canned ``503`` with ``Retry-After`` and closed at once;
  past ``max_connections_per_ip``, ``429``. Handshakes in progress are bounded
  separately (``max_handshakes``, default half of the connections): a flood of
  silent sockets cannot take every slot.
* **Handshake pressure.** While handshakes pass half their bound, connections
  pass 90 % of theirs, or ``accept()`` recently ran out of descriptors, a sweep
  answers ``408`` and closes every handshake older than
  ``busy_handshake_timeout`` (2 s) instead of the usual 10 s.
* **Logging.** :class:`LogThrottle` logs the first event of a kind at once,
  then at most one summary line with a count per interval, never a line per
  failed accept or refused client.
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
import time
from collections.abc import Callable

from .connections.connection import Connection
from .connections.handle import State
from .core.loop import IOLoop, Timer, Timers
from .limits import Limits
from .protocol.handshake import HttpError, error_response
from .stats import Stats

logger = logging.getLogger(__name__)

# Errors that mean "out of descriptors or kernel memory": the connection stays queued.
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Errors about one connection that died in the queue: just accept the next one.
TRANSIENT_ERRORS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})

BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0
SWEEP_INTERVAL = 0.25
PRESSURE_AFTER_ACCEPT_ERROR = 5.0  # seconds of handshake pressure after a failed accept
LOG_INTERVAL = 5.0
RETRY_AFTER = 1  # seconds, in the 503 and 429 answers


def default_max_connections(nofile: int) -> int:
    """Connections one process may hold with ``nofile`` descriptors.

    Each connection is one descriptor; the rest is headroom for the loop
    (selector, wake-up pair, listener), stdio, logs, files and the short-lived
    descriptor a refused client still needs for its 503.
    """
    headroom = max(32, nofile // 16)
    return max(1, nofile - headroom)


def nofile_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` now (a large stand-in when unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft descriptor limit to the hard one (logged); returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
            return soft, soft
        logger.info("raised the open-file limit from %d to %d (hard limit)", soft, target)
        return soft, target
    return soft, soft


def refusal(status: int, message: str) -> bytes:
    """A complete HTTP error response with ``Retry-After`` (for 503 and 429)."""
    return error_response(HttpError(status, message, [(b"Retry-After", str(RETRY_AFTER).encode())]))


BUSY_503 = refusal(503, "server busy: connection limit reached, retry later")
BUSY_HANDSHAKES_503 = refusal(503, "server busy: too many handshakes in progress, retry later")
PER_IP_429 = refusal(429, "too many connections from your address")


class LogThrottle:
    """Log the first event of a kind at once, then at most one line per interval with a count."""

    def __init__(self, loop: IOLoop, log: logging.Logger = logger, interval: float = LOG_INTERVAL) -> None:
        self._loop = loop
        self._log = log
        self._interval = interval
        self._counts: dict[str, int] = {}  # events since the last line, per kind
        self._messages: dict[str, tuple[int, str]] = {}
        self._timers: Timers[str] = Timers(loop)

    def note(self, key: str, level: int, message: str, n: int = 1) -> None:
        """Record ``n`` events of kind ``key``; logs ``message`` only if this kind was quiet."""
        if key in self._timers:
            self._counts[key] += n
            self._messages[key] = (level, message)
            return
        self._log.log(level, "%s", message)
        self._counts[key] = 0
        self._messages[key] = (level, message)
        self._timers.arm(key, self._interval, lambda: self._flush(key))

    def _flush(self, key: str) -> None:
        count = self._counts.pop(key)
        level, message = self._messages.pop(key)
        if count:
            self._log.log(level, "%s [%d more in the last %.0f s]", message, count, self._interval)
            # Still happening: keep counting, so a steady flood is one line per interval.
            self._counts[key] = 0
            self._messages[key] = (level, message)
            self._timers.arm(key, self._interval, lambda: self._flush(key))

    def stop(self) -> None:
        self._timers.cancel_all()


def _ip_of(addr: object) -> str:
    return str(addr[0]) if isinstance(addr, tuple) and addr else str(addr)


def _refuse(sock: socket.socket, response: bytes) -> None:
    """Answer a just-accepted socket and close it at once; never blocks (no answer: just close)."""
    try:
        if not response:
            return
        sock.setblocking(False)
        try:
            sock.recv(65536)  # a request already here would turn our close into a reset
        except OSError:
            pass
        sock.send(response)  # a fresh socket's send buffer takes these few hundred bytes
    except OSError:
        pass
    finally:
        sock.close()


# -- Connection hooks: the only places that reach into a Connection ------------

def _in_handshake(conn: Connection) -> bool:
    return conn.state is State.HANDSHAKE


def _expire_handshake(conn: Connection) -> None:
    """Answer 408 to a connection still in its handshake and close it now (no lingering)."""
    conn.reject_now(HttpError(408, "request timeout (server busy)"))


class Admission:
    """Connection slots, per-IP counts, accept backoff and handshake pressure (IO thread only)."""

    def __init__(self, loop: IOLoop, listener: socket.socket | None, on_readable: Callable[[int], None],
                 limits: Limits, stats: Stats) -> None:
        self._loop = loop
        self._listener = listener
        self._on_readable = on_readable
        self._stats = stats
        self.plain_http = True  # refusals are answered in HTTP; False on a TLS port (no handshake yet: just close)
        self.max_connections = limits.max_connections or default_max_connections(nofile_limit())
        self.max_handshakes = limits.max_handshakes or max(1, self.max_connections // 2)
        self.max_per_ip = limits.max_connections_per_ip
        self.busy_timeout = min(limits.busy_handshake_timeout, limits.handshake_timeout)
        self.log = LogThrottle(loop)
        self._count = 0
        self._per_ip: dict[str, int] = {}
        self._ip: dict[Connection, str] = {}
        self._handshaking: dict[Connection, float] = {}  # accept time; insertion order = age order
        self._pruned_at = -1  # stats.opened + stats.http_errors at the last prune
        self._backoff = 0.0
        self._paused: Timer | None = None
        self._sweep: Timer | None = None
        self._pressure_until = 0.0
        self._stopped = False

    @property
    def connections(self) -> int:
        return self._count

    @property
    def handshakes(self) -> int:
        return len(self._handshaking)

    # -- accept ------------------------------------------------------------

    def accept_failed(self, exc: OSError) -> bool:
        """Handle an ``accept()`` error; True if the caller may try the next connection."""
        if exc.errno in TRANSIENT_ERRORS:
            return True
        self._stats.accept_errors += 1
        self._backoff = min(BACKOFF_MAX, self._backoff * 2) if self._backoff else BACKOFF_FIRST
        resource_error = exc.errno in RESOURCE_ERRORS
        self.log.note("accept", logging.WARNING,
                      f"accept failed: {exc}; not accepting for {self._backoff:.2f} s"
                      + (f" ({self._count} connections, {len(self._handshaking)} in handshake)" if resource_error else ""))
        if resource_error:
            self._pressure_until = time.monotonic() + PRESSURE_AFTER_ACCEPT_ERROR
            self._start_sweep()
        self._pause(self._backoff)
        return False

    def accepted(self) -> None:
        """An accept succeeded: the next failure starts from the shortest backoff."""
        self._backoff = 0.0

    def _pause(self, delay: float) -> None:
        if self._paused is not None or self._stopped:
            return
        if self._listener is None:
            return
        self._stats.accept_pauses += 1
        self._loop.remove(self._listener)
        self._paused = self._loop.call_later(delay, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if not self._stopped and self._listener is not None:
            self._loop.set_interest(self._listener, self._on_readable, read=True, write=False)

    # -- admission ---------------------------------------------------------

    def admit(self, sock: socket.socket, addr: object) -> bool:
        """Decide on a just-accepted socket: True to serve it, False if it was answered and closed."""
        ip = _ip_of(addr)
        if self._count >= self.max_connections:
            return self._reject(sock, BUSY_503, "busy", 503,
                                f"connection limit ({self.max_connections}) reached: answering 503")
        if self.max_per_ip is not None and self._per_ip.get(ip, 0) >= self.max_per_ip:
            self._stats.rejected_per_ip += 1
            _refuse(sock, PER_IP_429 if self.plain_http else b"")
            self.log.note("per-ip", logging.WARNING,
                          f"{ip}: over {self.max_per_ip} connections from one address: answering 429")
            return False
        if len(self._handshaking) >= self.max_handshakes:
            self._prune()
            if len(self._handshaking) >= self.max_handshakes:
                return self._reject(sock, BUSY_HANDSHAKES_503, "handshakes", 503,
                                    f"{self.max_handshakes} handshakes in progress: answering 503")
        return True

    def _reject(self, sock: socket.socket, response: bytes, key: str, status: int, message: str) -> bool:
        self._stats.rejected_busy += 1
        _refuse(sock, response if self.plain_http else b"")
        self.log.note(key, logging.WARNING, message)
        return False

    def opened(self, conn: Connection, addr: object) -> None:
        """A connection was admitted and started: count it."""
        ip = _ip_of(addr)
        self._count += 1
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        self._ip[conn] = ip
        self._handshaking[conn] = time.monotonic()
        if self._under_pressure():
            self._start_sweep()

    def closed(self, conn: Connection) -> None:
        """A connection closed (any state): free its slot."""
        ip = self._ip.pop(conn, None)
        if ip is None:
            return
        self._count -= 1
        left = self._per_ip[ip] - 1
        if left:
            self._per_ip[ip] = left
        else:
            del self._per_ip[ip]
        self._handshaking.pop(conn, None)

    # -- handshake pressure ------------------------------------------------

    def _prune(self) -> None:
        """Forget connections that finished their handshake.

        O(handshakes), so only when one may have finished since the last prune
        (``stats.opened`` or ``stats.http_errors`` moved): a flood of silent
        sockets refused at the limit costs no scan per refusal.
        """
        finished = self._stats.opened + self._stats.http_errors
        if finished == self._pruned_at:
            return
        self._pruned_at = finished
        for conn in [c for c in self._handshaking if not _in_handshake(c)]:
            del self._handshaking[conn]

    def _under_pressure(self) -> bool:
        return (len(self._handshaking) * 2 >= self.max_handshakes
                or self._count * 10 >= self.max_connections * 9
                or time.monotonic() < self._pressure_until)

    def _start_sweep(self) -> None:
        if self._sweep is None and not self._stopped:
            self._sweep = self._loop.call_later(SWEEP_INTERVAL, self._run_sweep)

    def _run_sweep(self) -> None:
        self._sweep = None
        self._pruned_at = -1
        self._prune()
        if not self._handshaking or not self._under_pressure():
            return  # the handshakes left keep their normal timeout; opened() starts the sweep again
        cutoff = time.monotonic() - self.busy_timeout
        expired = []
        for conn, since in self._handshaking.items():
            if since > cutoff:
                break  # age order: the rest are younger
            expired.append(conn)
        for conn in expired:
            if _in_handshake(conn):
                self._stats.handshake_timeouts += 1
                self._stats.busy_handshake_timeouts += 1
                _expire_handshake(conn)
        if expired:
            self.log.note("pressure", logging.WARNING,
                          f"under pressure: answering 408 to handshakes older than {self.busy_timeout:.1f} s"
                          f" ({len(expired)} now, {len(self._handshaking)} left in handshake)", n=len(expired))
        self._start_sweep()

    def stop(self) -> None:
        """Server shutdown: cancel the timers and never re-watch the listener."""
        self._stopped = True
        for timer in (self._paused, self._sweep):
            if timer is not None:
                timer.cancel()
        self._paused = self._sweep = None
        self.log.stop()
