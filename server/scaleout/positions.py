"""Stream positions: where a published message sits in its topic, so a subscriber can resume after it.

A position is an opaque string to users: they get it with each message
(:class:`LineEnvelope` on ``/broadcast``, or their own envelope) and give the
last one back as ``since=`` when they reconnect. Inside it is
``EPOCH.N`` (in-process history) or ``EPOCH.N.STREAM-ID`` (Redis):

* ``N`` counts the topic's messages from 1, so a resume knows the next one
  it must see is ``N + 1`` and can tell a trimmed history from a complete one;
* ``EPOCH`` names the history itself. It changes when the history is lost
  (a process restarted with ``memory://``; Redis restarted without its data),
  so a position from the lost history is refused, never misread as one of the
  new history's;
* ``STREAM-ID`` is the Redis entry's ID, where the replay reads from.

A resume the history cannot serve exactly is refused with
:data:`HISTORY_LOST` (4410) and a reason: the client must start over (load
the current state, subscribe without ``since=``).
"""

from __future__ import annotations

import re
import secrets
import threading
from typing import Generic, NamedTuple, TypeVar

from ..errors import WsraceError

HISTORY_LOST = 4410  # close code: the history cannot serve this position (the HTTP 410 Gone of resuming)

_EPOCH = r"[0-9a-f]{1,32}"
_POSITION_RE = re.compile(rf"({_EPOCH})\.(0|[1-9][0-9]{{0,18}})(?:\.([0-9]{{1,20}}-[0-9]{{1,20}}))?")
MAX_POSITION = 80  # characters: longer is malformed


class PositionError(WsraceError, ValueError):
    """A ``since=`` that is not a position this server hands out (the route answers 400)."""


class Position(NamedTuple):
    """A message's place in its topic's history: ``epoch``, ``n`` (1, 2, … in the topic) and, with Redis, ``entry_id``."""

    epoch: str
    n: int
    entry_id: str = ""

    def __str__(self) -> str:
        return f"{self.epoch}.{self.n}.{self.entry_id}" if self.entry_id else f"{self.epoch}.{self.n}"

    @classmethod
    def parse(cls, text: str) -> Position:
        """The position ``str(position)`` gave; :class:`PositionError` for anything else."""
        match = _POSITION_RE.fullmatch(text) if len(text) <= MAX_POSITION else None
        if match is None:
            raise PositionError(f"not a position: {text[:MAX_POSITION]!r} (give back one the server sent, as it was)")
        epoch, n, entry_id = match.groups()
        return cls(epoch, int(n), entry_id or "")


def new_epoch() -> str:
    """A fresh history's name: 8 random hex digits."""
    return secrets.token_hex(4)


class Lost(WsraceError):
    """The history cannot serve a resume exactly: what the subscriber is told (close 4410, this reason)."""

    @classmethod
    def other_epoch(cls) -> Lost:
        return cls("position from a lost history (another epoch): start over")

    @classmethod
    def trimmed(cls, first: int | None) -> Lost:
        if first is None:
            return cls("position too old: the history no longer holds it; start over")
        return cls(f"position too old: the history starts at message {first}; start over")

    @classmethod
    def ahead(cls) -> Lost:
        return cls("position ahead of the stream: start over")


T = TypeVar("T")


class Published(Generic[T]):
    """What :meth:`Server.publish` returns: the message's position, and the local fan-out's result in-process.

    With ``memory://`` both are there at once. With Redis the message is
    queued for the publisher thread: :meth:`position` waits (at most
    ``timeout``) until Redis acknowledged it; :attr:`result` stays None (each
    process fans out what it reads).
    """

    __slots__ = ("_acked", "_error", "_position", "result")

    def __init__(self, position: Position | None = None, result: T | None = None,
                 acked: threading.Condition | None = None) -> None:
        self._position = position
        self._error: Exception | None = None
        self.result = result
        self._acked = acked  # notified by whoever sets the position later (the Redis publisher thread)

    def done(self) -> bool:
        """True once the position is known, or the publish is known to have failed."""
        return self._position is not None or self._error is not None

    def position(self, timeout: float | None = None) -> Position:
        """The message's position; waits for the broker's acknowledgement. TimeoutError if it did not come in
        time; the broker's error (a ``BrokerError``) if the broker closed before Redis acknowledged it."""
        if not self.done() and self._acked is not None:
            with self._acked:
                self._acked.wait_for(self.done, timeout)
        if self._error is not None:
            raise self._error
        if self._position is None:
            raise TimeoutError(f"the broker did not acknowledge the publish within {timeout} s")
        return self._position

    def _set(self, position: Position) -> None:
        self._position = position  # the caller notifies _acked (once for a batch)

    def _fail(self, error: Exception) -> None:
        self._error = error  # the caller notifies _acked
