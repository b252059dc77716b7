"""Server-wide counters, for logs, ``/stats`` pages and tests."""

from __future__ import annotations

import threading
from collections import Counter

from .histogram import Histogram


class Stats:
    """Server-wide counters, written on the IO thread (``dropped_messages``: under its own lock).

    The histograms and :attr:`closes` are read by :mod:`server.observe` (``Server.metrics``, Prometheus);
    :meth:`as_dict` gives the plain counters.
    """

    def __init__(self, detailed: bool = True) -> None:
        self._lock = threading.Lock()
        self.detailed = detailed  # count traffic and time batches on the send path (Server(metrics=False): off)
        # traffic (IO thread): what the sockets read and took
        self.bytes_in = 0
        self.messages_in = 0  # data messages received (handed to handlers)
        self.bytes_out = 0
        self.frames_out = 0  # frames the sockets took whole: data messages, and pings, pongs, closes, HTTP replies
        # From send()/broadcast() to the socket taking the message's last byte: per batch a producer queued
        # (the batch's first message, the one that waited longest), observed when the batch is written.
        self.send_latency = Histogram()
        self.handler_seconds = Histogram()  # on_message, worker or inline
        self.io_lag = Histogram()  # a callable posted from another thread: posted -> run (sampled)
        self.closes: Counter[tuple[int, str]] = Counter()  # opened connections by (close code, who closed first)
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
        self.producer_waits = 0  # of finished connections: times a producer found the client's queue full and waited
        self.slow_client_warnings = 0  # a connection's oldest queued message passed Limits.slow_warn (once per episode)
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
        # resuming subscribers (server/topics.py; written by the thread that joins them)
        self.resumes = 0  # subscriptions that resumed from a position (since=)
        self.replayed = 0  # messages sent from the history to resuming subscribers
        self.resumes_refused = 0  # closed with 4410: the history could not serve the position

    def count_drop(self) -> None:
        """Any thread: one message discarded by the ``drop`` policy."""
        with self._lock:
            self.dropped_messages += 1

    def as_dict(self) -> dict[str, int]:
        """The plain counters by name."""
        return {name: value for name, value in vars(self).items() if type(value) is int and not name.startswith("_")}
