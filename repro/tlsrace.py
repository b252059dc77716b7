"""What the server side of a wss:// run raised, by thread: the TLS half of the bug seen from inside.

Over TLS the unsafe disciplines call ``SSL_write`` from worker threads while
another thread (our IO thread, or simple-websocket's reader thread) calls
``SSL_read`` and ``SSL_write`` on the same ``SSL`` object. OpenSSL forbids that
(openssl/openssl#20446); what it does instead is undefined: torn records the
client cannot decrypt, ``bad write retry``, ``BAD_LENGTH``, freed buffers used
again. :class:`TlsEvents` counts every exception the server's TLS calls raise,
named by the kind of thread that made the call, so a run's report can say
what the server saw as well as what the client saw.
"""

from __future__ import annotations

import errno
import re
import ssl
import threading
from collections import Counter
from typing import Any

from server.core.sendbuffer import SendBuffer
from server.core.tls import TlsTransport


def thread_role(name: str) -> str:
    """The kind of thread, from its name: what a report needs, not which one."""
    if name == "wsrace-io":
        return "IO thread"
    if "simple_websocket.Base._thread" in name:
        return "reader thread"
    if name.startswith(("wsrace-producer", "sws-worker", "wsrace-worker")):
        return "worker"
    if name.startswith("sws-conn"):
        return "connection thread"
    return name


_SSL_NOISE = re.compile(r"^\[SSL\]|\(_ssl\.c:\d+\)$")


def describe_error(exc: BaseException) -> str:
    """``SSLError BAD_WRITE_RETRY``, ``ConnectionResetError ECONNRESET``, ...: the class and the reason, no addresses."""
    kind = type(exc).__name__
    if isinstance(exc, ssl.SSLError):
        if getattr(exc, "reason", None):
            return f"{kind} {exc.reason}"
        text = str(exc.args[1] if len(exc.args) > 1 else exc)
        return f"{kind} {_SSL_NOISE.sub('', text).strip()}"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{kind} {errno.errorcode.get(exc.errno, exc.errno)}"
    return f"{kind} {exc}"[:120]


class TlsEvents:
    """A thread-safe count of ``"<thread kind> <operation>: <error>"``, with the first full message of each,
    and of the reads that reported end of stream."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.eofs: Counter[str] = Counter()  # reads that returned b"", by thread kind

    def record(self, operation: str, exc: BaseException) -> None:
        key = f"{thread_role(threading.current_thread().name)} {operation}: {describe_error(exc)}"
        with self._lock:
            self.counts[key] += 1
            self.examples.setdefault(key, str(exc)[:300])

    def record_eof(self) -> None:
        """A read that reported end of stream, by thread kind: not an error, unless the client never sent it."""
        with self._lock:
            self.eofs[thread_role(threading.current_thread().name)] += 1

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {"counts": dict(self.counts), "examples": dict(self.examples), "eofs": dict(self.eofs)}


class RecordingTlsTransport(TlsTransport):
    """The server's TLS transport, unchanged, except that every exception its SSL calls raise is counted."""

    events: TlsEvents

    def read(self) -> bytes | None:
        try:
            data = super().read()
        except (OSError, ValueError) as exc:
            self.events.record("handshake" if not self.established else "read", exc)
            raise
        if data == b"":
            self.events.record_eof()
        return data

    def write(self, buffer: SendBuffer) -> None:
        try:
            super().write(buffer)
        except (OSError, ValueError) as exc:
            self.events.record("write", exc)
            raise


class RecordingSocket:
    """A socket proxy for simple-websocket: ``recv``/``send``/``sendall`` exceptions are counted, then raised as they were."""

    def __init__(self, sock: ssl.SSLSocket, events: TlsEvents) -> None:
        self._sock = sock
        self.events = events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def fileno(self) -> int:
        return self._sock.fileno()

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        try:
            data = self._sock.recv(bufsize, flags)
        except (OSError, ValueError) as exc:
            self.events.record("read", exc)
            raise
        if not data:
            self.events.record_eof()
        return data

    def send(self, data: bytes, flags: int = 0) -> int:
        try:
            return self._sock.send(data, flags)
        except (OSError, ValueError) as exc:
            self.events.record("write", exc)
            raise

    def sendall(self, data: bytes, flags: int = 0) -> None:
        try:
            self._sock.sendall(data, flags)
        except (OSError, ValueError) as exc:
            self.events.record("write", exc)
            raise
