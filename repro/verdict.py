"""The one verdict of a run and of a check (``make repro``, ``wsrace-check``), ordered by severity."""

from __future__ import annotations

import enum


class Verdict(str, enum.Enum):
    """What a run found, from best to worst (declaration order); a check's verdict is its worst run's.

    A ``str``: it prints, compares and serialises as its value (``"PROTOCOL-ERROR"``).
    ``CRASHED``, ``TLS-ERROR``, ``SERVER-ERROR`` and ``HUNG`` are what a wss://
    row of ``make repro`` can also show (the server runs in a child process there).
    """

    CLEAN = "CLEAN"
    ERROR = "ERROR"
    INCOMPLETE = "INCOMPLETE"
    HUNG = "HUNG"
    SERVER_ERROR = "SERVER-ERROR"
    PROTOCOL_ERROR = "PROTOCOL-ERROR"
    CORRUPTED = "CORRUPTED"
    TLS_ERROR = "TLS-ERROR"
    CRASHED = "CRASHED"

    __str__ = str.__str__
    __format__ = str.__format__  # type: ignore[assignment]

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]

    @property
    def exit_code(self) -> int:
        """``wsrace-check``'s exit status: 0 clean, 1 the server is affected, 2 the check could not tell."""
        return 0 if self is Verdict.CLEAN else 2 if self in (Verdict.ERROR, Verdict.INCOMPLETE, Verdict.HUNG) else 1

    @classmethod
    def worst(cls, verdicts: list[Verdict]) -> Verdict:
        return max(verdicts, key=_ORDER.index, default=cls.CLEAN)


_ORDER = list(Verdict)
_MEANINGS = {
    Verdict.CLEAN: "every message intact, a clean close",
    Verdict.ERROR: "no run could be made: the connection or the handshake failed",
    Verdict.INCOMPLETE: "the stream ended early (no close frame, messages missing), nothing worse seen",
    Verdict.HUNG: "the stream stopped and the time limit ended the run, or the server did not stop",
    Verdict.SERVER_ERROR: ("the server's own SSL calls failed (bad write retry, BAD_LENGTH, an EOF the client never sent, ...) "
                           "and it dropped the connection"),
    Verdict.PROTOCOL_ERROR: "the server failed the connection (1002/1007, a TLS alert) though every frame sent was valid",
    Verdict.CORRUPTED: "torn frames or mixed payloads reached the client: the server's writes to one socket interleave",
    Verdict.TLS_ERROR: "the client's TLS layer rejected the server's records (bad record MAC, wrong version number, ...)",
    Verdict.CRASHED: "the server process died (a signal, a double free, a fatal error)",
}
