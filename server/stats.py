"""Server-wide counters, for logs, ``/stats`` pages and tests."""

from __future__ import annotations

import threading


class Stats:
    """Server-wide counters, written on the IO thread (``dropped_messages``: under its own lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.accepted = 0
        self.opened = 0
        self.closed = 0
        self.http_errors = 0
        self.closed_by_policy = 0  # closed with 1008 by the overflow policy: the two below together
        self.closed_stalled = 0  # a full queue and nothing taken or acknowledged for stall_timeout
        self.closed_too_slow = 0  # a fan-out member a full queue behind the feed after fanout_wait
        self.dropped_messages = 0
        self.protocol_errors = 0
        self.handshake_timeouts = 0  # no complete request (or no TLS handshake) within handshake_timeout
        self.tls_handshake_errors = 0  # the TLS handshake failed: plain HTTP, garbage, a reset, an untrusted peer, ...
        self.ping_timeouts = 0
        self.keepalive_pings = 0  # keepalive pings sent
        self.keepalive_pongs = 0  # pongs received (answers to keepalive pings)
        self.handler_errors = 0
        self.inline_slow = 0  # an inline on_message held the IO thread longer than Limits.inline_warn
        self.route_errors = 0  # route() raised something other than HttpError: answered 500
        # admission (server/admission.py)
        self.rejected_busy = 0  # answered 503: connection or handshake limit
        self.rejected_per_ip = 0  # answered 429
        self.accept_errors = 0  # accept() failed (EMFILE, ENFILE, ...)
        self.accept_pauses = 0  # listener unwatched for a backoff after such a failure
        self.busy_handshake_timeouts = 0  # 408 after busy_handshake_timeout under pressure
        # broker (server/scaleout/broker.py; written by its threads)
        self.broker_reconnects = 0  # publisher or reader reconnected after losing the broker
        self.broker_publishes_queued = 0  # publishes made while the broker was unreachable (sent when it is back)
        self.broker_publishes_failed = 0  # refused (local publish queue full) or unsent at shutdown
        self.broker_gaps = 0  # a reader found entries it never saw were gone (trimmed, or the stream vanished)
        self.broker_messages_missed = 0  # messages known lost in those gaps (a vanished stream counts 0: unknown)
        self.broker_subscribers_closed = 0  # subscribers closed with 1013 because of a gap
        self.broker_duplicates = 0  # second copies left by a retried publish, dropped by the reader

    def count_drop(self) -> None:
        """Any thread: one message discarded by the ``drop`` policy."""
        with self._lock:
            self.dropped_messages += 1

    def as_dict(self) -> dict[str, int]:
        return {name: value for name, value in vars(self).items() if not name.startswith("_")}
