"""The write guard: catch a cross-thread socket write at its first occurrence.

A race detector in the spirit of Boost.Beast's debug-build ``soft_mutex``
assertion (and of a thread sanitizer — AddressSanitizer finds nothing here,
because nothing is out of bounds: it is a race). Wrap a connection's socket;
the guard checks every ``send``/``sendall``/``sendmsg``:

* ``owner``: writes from any thread but the owner are violations, whether or
  not they overlap in time — so detection is deterministic, not lucky;
* overlap: two threads inside a write at once is a violation, with both named.

Use on an existing simple_websocket connection::

    ws = simple_websocket.Server.accept(environ)
    ws.sock = WriteGuard(ws.sock, owner=threading.current_thread())
    # the first pong written by simple-websocket's reader thread now raises
"""

from __future__ import annotations

import socket
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal


class CrossThreadWrite(AssertionError):
    """A socket write broke the single-writer rule."""


@dataclass(frozen=True)
class Violation:
    kind: Literal["wrong-thread", "overlap"]
    thread: str
    other: str
    operation: str
    nbytes: int
    stack: str

    def __str__(self) -> str:
        if self.kind == "overlap":
            return (f"{self.operation}({self.nbytes} bytes) from thread {self.thread!r} while thread "
                    f"{self.other!r} is still inside a write on the same socket")
        return f"{self.operation}({self.nbytes} bytes) from thread {self.thread!r}; only {self.other!r} may write to this socket"


class WriteGuard:
    """A socket proxy that enforces one writer thread. Everything else is delegated.

    ``owner``: a thread, or ``"first"`` (the first thread that writes becomes
    the owner), or ``None`` (only overlapping writes are violations).
    ``on_violation``: ``"raise"`` (default: :class:`CrossThreadWrite` in the
    offending thread, before it writes) or ``"record"`` (append to
    :attr:`violations` and let the write proceed, to watch a run to the end).
    """

    def __init__(
        self,
        sock: socket.socket,
        owner: threading.Thread | Literal["first"] | None = "first",
        on_violation: Literal["raise", "record"] = "raise",
    ) -> None:
        self._sock = sock
        self._owner: threading.Thread | None = owner if isinstance(owner, threading.Thread) else None
        self._first_writer_owns = owner == "first"
        self._raise = on_violation == "raise"
        self._state = threading.Lock()
        self._inside: threading.Thread | None = None
        self.violations: list[Violation] = []
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def fileno(self) -> int:
        return self._sock.fileno()

    def _guarded(self, operation: str, nbytes: int, call: Callable[[], Any]) -> Any:
        me = threading.current_thread()
        found: Violation | None = None
        with self._state:
            if self._owner is None and self._first_writer_owns:
                self._owner = me
            if self._inside is not None and self._inside is not me:
                found = Violation("overlap", me.name, self._inside.name, operation, nbytes, "".join(traceback.format_stack(limit=8)))
            elif self._owner is not None and me is not self._owner:
                found = Violation("wrong-thread", me.name, self._owner.name, operation, nbytes,
                                  "".join(traceback.format_stack(limit=8)))
            if found is not None:
                self.violations.append(found)
                if self._raise:
                    raise CrossThreadWrite(str(found))
            nested = self._inside is me
            self._inside = me
        try:
            self.writes += 1
            return call()
        finally:
            if not nested:
                with self._state:
                    if self._inside is me:
                        self._inside = None

    def send(self, data: bytes, flags: int = 0) -> int:
        return self._guarded("send", len(data), lambda: self._sock.send(data, flags))  # type: ignore[no-any-return]

    def sendall(self, data: bytes, flags: int = 0) -> None:
        self._guarded("sendall", len(data), lambda: self._sock.sendall(data, flags))

    def sendmsg(self, buffers: list[bytes], *args: Any) -> int:
        n = sum(len(b) for b in buffers)
        return self._guarded("sendmsg", n, lambda: self._sock.sendmsg(buffers, *args))  # type: ignore[no-any-return]
