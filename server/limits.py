"""Per-connection and server-wide limits: every one has a safe default."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class OverflowPolicy(enum.Enum):
    """What happens when a client's queue is full.

    ``CLOSE`` (default): a point-to-point producer waits while the client
    drains; a client that takes nothing for ``Limits.stall_timeout`` while its
    queue is full is closed with 1008 ("client stalled"). A fan-out waits for a
    full member at most ``Limits.fanout_wait``, then closes it with 1008 ("too
    slow for this feed"). Waiting producers get :class:`ConnectionClosed`. No
    message is silently lost.
    ``DROP``: the new message is discarded and counted, and the producer never
    waits — for feeds where only the latest value matters.
    """

    CLOSE = "close"
    DROP = "drop"


@dataclass(frozen=True)
class Limits:
    """Per-connection limits; every one has a safe default."""

    max_queue_bytes: int = 16 * 1024 * 1024  # per client: producers wait (or drop) while this much is unsent
    overflow: OverflowPolicy = OverflowPolicy.CLOSE
    # A client whose queue is full and that takes nothing this long — no byte accepted by its socket, none
    # acknowledged by its TCP — is stalled: closed with 1008. Linux shows a slow reader's progress each time it
    # frees about half its receive buffer (~64-128 KiB), so readers faster than that per stall_timeout are
    # never judged stalled: with 60 s (nginx's send_timeout), ~2 KB/s and up.
    stall_timeout: float = 60.0
    # broadcast()/publish()/send(fanout=True): the longest a producer waits for one member's full queue; then
    # that member gets the overflow action (drop, or 1008 "too slow for this feed").
    fanout_wait: float = 0.1
    max_message_bytes: int = 16 * 1024 * 1024
    ping_interval: float | None = 20.0
    ping_timeout: float = 20.0
    handshake_timeout: float = 10.0
    close_timeout: float = 5.0
    max_inflight_messages: int = 16  # received, not yet handled: reading pauses at this many
    # A client whose oldest queued message is older than this is logged (rate-limited) and counted as slow in the
    # metrics: seen well before stall_timeout closes it.
    slow_warn: float = 5.0
    inline_warn: float = 0.005  # an inline handler (Handler.inline) holding the IO thread longer is logged and counted
    deflate: bool = True
    # Server-wide admission limits (server/admission.py); None = derived/unlimited.
    max_connections: int | None = None  # past it: HTTP 503 (default: from RLIMIT_NOFILE)
    max_connections_per_ip: int | None = None  # past it: HTTP 429
    max_handshakes: int | None = None  # in progress at once; past it: 503 (default: max_connections // 2)
    busy_handshake_timeout: float = 2.0  # handshake timeout under pressure (flood of silent sockets)
