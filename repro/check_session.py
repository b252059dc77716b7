"""One connection of ``wsrace-check``: the knobs, the messages, the echo verifier and the session.

The session uses the repro's strict wire checker (:mod:`repro.checker`) for
every server frame and its hand-written handshake (:mod:`repro.client`); see
:mod:`repro.check` for the public API.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import random
import re
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from .checker import FRAMING, Anomaly, WireChecker
from .client import (
    HandshakeFailed,
    TLSStream,
    masked_frame,
    new_key,
    open_socket,
    parse_extensions,
    read_upgrade_reply,
    start_pinger,
    upgrade_request,
)
from .run import Result, describe_anomaly
from .verdict import Verdict

# Client-side TLS errors that only a damaged record stream produces (a server writing one SSL object from two
# threads, or bytes spliced into the encrypted stream), and the alert a server sends when its own SSL object broke.
TLS_RECORD_ERRORS = ("DECRYPTION_FAILED_OR_BAD_RECORD_MAC", "BAD_RECORD_MAC", "WRONG_VERSION_NUMBER",
                     "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE", "UNEXPECTED_RECORD", "BAD_DECRYPT")
TLS_SERVER_ALERTS = ("TLSV1_ALERT_INTERNAL_ERROR",)

logger = logging.getLogger(__name__)

MODES = ("echo", "drain")
TEXT, BINARY = 0x1, 0x2
PROTOCOL_ERROR_CODES = {1002: "protocol error", 1007: "invalid payload data"}
CLOSE_MEANINGS = {1001: "going away", 1003: "unsupported data", 1008: "policy violation", 1009: "message too big",
                  1011: "internal error"}
# 1-, 2-, 3- and 4-byte UTF-8 characters: a torn text frame almost always breaks the encoding.
_TEXT_UNIT = "wsrace é ü ж ק € 中 ✓ 𝄞 😀 ".encode()
_HEAD = re.compile(rb"wsrace-check run (\d+) message (\d+) (text|binary) (\d+)\n")


@dataclass
class CheckOptions:
    """The knobs; the defaults found the race fastest on a 2-core machine (README: "Is my server affected?")."""

    mode: str = "echo"
    runs: int = 8  # connections, one after the other; stops at the first corrupted one
    time_limit: float = 30.0  # seconds for the whole check
    messages: int = 400  # echo: messages per run
    min_size: int = 128 * 1024  # echo: message sizes, bytes (large: the server's writes stay partial)
    max_size: int = 256 * 1024
    text_ratio: float = 0.5  # echo: share of text messages (multi-byte UTF-8)
    pipeline: int = 128  # echo: messages sent ahead of their replies
    ping_every: int = 1  # echo: a ping after every Nth message (0: none)
    ping_interval: float | None = 0.0005  # a pinger thread, seconds (None/0: none): the server writes pongs mid-stream
    rcvbuf: int | None = 4096  # client SO_RCVBUF: a small receive window keeps the server's writes blocked mid-frame
    deflate: bool = False  # offer permessage-deflate
    headers: Sequence[tuple[str, str]] = ()  # extra handshake headers (cookies, tokens)
    idle_timeout: float = 10.0  # no byte from the server for this long while replies are due: give up
    keep_going: bool = False  # run every run even after a corrupted one
    seed: int | None = None  # message plan; None: random
    cafile: str | None = None  # wss://: trust the CA certificate(s) in this PEM file instead of the system's
    insecure: bool = False  # wss://: do not verify the server's certificate at all

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.runs < 1 or self.messages < 1 or self.pipeline < 1 or self.time_limit <= 0:
            raise ValueError("runs, messages and pipeline must be at least 1 and the time limit positive")
        if not 64 <= self.min_size <= self.max_size:
            raise ValueError(f"need 64 <= min size <= max size, got {self.min_size} and {self.max_size}")
        if not 0.0 <= self.text_ratio <= 1.0:
            raise ValueError(f"text ratio must be between 0 and 1, got {self.text_ratio}")
        for name, value in self.headers:
            if not name or any(c in name + value for c in "\r\n") or ":" in name:
                raise ValueError(f"bad header {name!r}: {value!r}")
        if self.cafile and self.insecure:
            raise ValueError("give either a CA file (--cafile) or no verification (--insecure), not both")


def client_ssl_context(cafile: str | None = None, insecure: bool = False) -> ssl.SSLContext:
    """The client context for wss://: the system's CAs, or those in ``cafile``, or (``insecure``) no verification.

    Raises ``ValueError`` for a CA file that cannot be read or holds no certificate.
    """
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:  # FileNotFoundError, IsADirectoryError, PermissionError, bad PEM
        raise ValueError(f"cannot load the CA file {cafile!r}: {exc}") from None


@dataclass
class Target:
    host: str
    port: int
    path: str
    url: str
    tls: bool = False  # wss://


def parse_url(url: str) -> Target:
    """``ws://host[:port]/path?query`` or ``wss://...``; anything else is a ValueError saying why."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"expected a ws://host[:port]/path or wss://host[:port]/path URL, got {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "wss" else 80)
    except ValueError as exc:
        raise ValueError(f"bad port in {url!r}: {exc}") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.hostname, port, path, url, tls=parts.scheme == "wss")


# -- the messages ---------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _pattern(kind: str, size: int) -> bytes:
    if kind == "binary":  # every byte value: a payload byte read as a header shows MASK/RSV bits
        return bytes(range(256)) * (size // 256 + 2)
    return _TEXT_UNIT * (size // len(_TEXT_UNIT) + 2)


def message_body(run: int, index: int, opcode: int, size: int) -> bytes:
    """Message ``index`` of run ``run``: a header naming it, then filler; ``size`` bytes, valid UTF-8 when text."""
    kind = "text" if opcode == TEXT else "binary"
    head = f"wsrace-check run {run} message {index} {kind} {size}\n".encode()
    n = max(0, size - len(head))
    if opcode == BINARY:
        start = (index * 7 + run * 31) % 256
        return head + _pattern(kind, n)[start : start + n]
    start = (index % 13) * len(_TEXT_UNIT)  # a character boundary
    body = _pattern(kind, n)[start : start + n].decode("utf-8", "ignore").encode()
    return head + body + b"." * (n - len(body))


def _first_difference(a: bytes, b: bytes) -> int:
    step = 4096
    for chunk in range(0, min(len(a), len(b)), step):
        x, y = a[chunk : chunk + step], b[chunk : chunk + step]
        if x != y:
            return chunk + next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y)))
    return min(len(a), len(b))


class EchoVerifier:
    """Every reply byte-identical to one message sent, none twice; plugged into the checker as ``verify``."""

    def __init__(self, run: int, plan: list[tuple[int, int]]) -> None:
        self.run = run
        self.plan = plan
        self.seen: set[int] = set()

    def __call__(self, opcode: int, data: bytes) -> tuple[str, int, str] | None:
        kind = "text" if opcode == TEXT else "binary"
        m = _HEAD.match(data[:100])
        if m is None or int(m.group(1)) != self.run or int(m.group(2)) >= len(self.plan):
            return "echo-mismatch", 0, f"{len(data)}-byte {kind} reply matches no message sent (starts {data[:24]!r})"
        index = int(m.group(2))
        want_opcode, size = self.plan[index]
        expected = message_body(self.run, index, want_opcode, size)
        if data != expected:
            at = _first_difference(data, expected)
            return "echo-mismatch", at, (f"reply to message {index} ({len(data)} bytes, {size} sent) differs from what was "
                                         f"sent from message byte {at} on: foreign bytes")
        if opcode != want_opcode:
            return "echo-mismatch", -1, f"reply to message {index} came back as {kind}, was sent as the other type"
        if index in self.seen:
            return "echo-duplicate", -1, f"reply to message {index} arrived twice"
        self.seen.add(index)
        return None


# -- one connection -------------------------------------------------------------------


class ConnectError(Exception):
    """Cannot connect, or the server refused the WebSocket handshake."""


def _open(target: Target, options: CheckOptions,
          ssl_context: ssl.SSLContext | None = None) -> tuple[socket.socket | TLSStream, bytes, dict[str, str]]:
    try:
        sock = open_socket(target.host, target.port, options.rcvbuf)
    except socket.gaierror as exc:
        raise ConnectError(f"cannot resolve {target.host}: {exc}") from None
    except OSError as exc:
        raise ConnectError(f"cannot connect ({target.url}): {exc}") from None
    if ssl_context is not None:
        try:  # as open_socket(..., ssl_context=) does, apart, so that every failure here is named a TLS one
            sock = ssl_context.wrap_socket(sock, server_hostname=target.host)
        except ssl.SSLCertVerificationError as exc:
            raise ConnectError(f"the server's TLS certificate is not trusted ({target.url}): {exc.verify_message}. "
                               f"Give the CA that signed it with --cafile PATH (check(..., cafile=PATH)), or skip "
                               f"verification with --insecure") from None
        except OSError as exc:  # SSLError, a timeout, a reset
            sock.close()
            raise ConnectError(f"the TLS handshake failed ({target.url}): {exc or type(exc).__name__}; does the server "
                               f"speak TLS on this port? (for a plain server use ws://)") from None
    try:
        key = new_key()
        sock.sendall(upgrade_request(target.host, target.port, target.path, key, options.deflate, options.headers))
        headers, rest = read_upgrade_reply(sock, key)
    except (OSError, HandshakeFailed) as exc:
        sock.close()
        what = "the WebSocket handshake failed" if isinstance(exc, HandshakeFailed) else "cannot connect"
        hint = ""
        if not target.tls and any(sign in str(exc) for sign in ("closed the connection during the handshake", "\\x15\\x03")):
            hint = "; if the server speaks TLS on this port, use wss://"
        raise ConnectError(f"{what} ({target.url}): {exc}{hint}") from None
    # Over TLS the sender, the pinger and the reader share one SSL object: TLSStream lets one in at a time.
    return (TLSStream(sock) if isinstance(sock, ssl.SSLSocket) else sock), rest, headers


class _Session:
    """One connection: a sender (echo), a pinger, and the reader feeding the checker."""

    def __init__(self, target: Target, options: CheckOptions, run: int, seed: int,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.target, self.options, self.run = target, options, run
        self.ssl_context = ssl_context
        rng = random.Random(seed * 1_000_003 + run)
        self.plan = [(TEXT if rng.random() < options.text_ratio else BINARY, rng.randint(options.min_size, options.max_size))
                     for _ in range(options.messages if options.mode == "echo" else 0)]
        self.verifier = EchoVerifier(run, self.plan) if options.mode == "echo" else None
        self.write_lock = threading.Lock()  # our own writers (sender, pinger, reader's close) take turns
        self.progress = threading.Condition()
        self.stop = threading.Event()
        self.sent = 0
        self.we_closed = False
        self.tls_error: ssl.SSLError | None = None  # what broke the TLS stream, if something did

    def _write(self, frame: bytes, wait: float = -1) -> bool:
        """Send one whole frame; ``wait``: give up after that many seconds if a blocked writer holds the lock."""
        if not self.write_lock.acquire(timeout=wait):
            return False
        try:
            self.sock.sendall(frame)
            return True
        except OSError:
            return False
        finally:
            self.write_lock.release()

    def _sender(self) -> None:
        o = self.options
        for index, (opcode, size) in enumerate(self.plan):
            with self.progress:
                while self.sent - self.checker.received >= o.pipeline and not self.stop.is_set():
                    self.progress.wait(0.1)
            if self.stop.is_set() or not self._write(masked_frame(opcode, message_body(self.run, index, opcode, size))):
                return
            self.sent += 1
            if o.ping_every and self.sent % o.ping_every == 0 and not self._write(masked_frame(0x9, struct.pack("!I", index))):
                return

    def run_once(self, time_limit: float) -> Result:
        started = time.monotonic()
        self.sock, rest, headers = _open(self.target, self.options, self.ssl_context)
        deflate = parse_extensions(headers.get("sec-websocket-extensions", ""))
        self.checker = WireChecker(deflate=deflate, verify=self.verifier or (lambda opcode, data: None))
        threads = []
        if self.plan:
            threads.append(threading.Thread(target=self._sender, name=f"wsrace-check-sender-{self.run}", daemon=True))
        for t in threads:
            t.start()
        if self.options.ping_interval:
            pings = itertools.count(1)
            threads.append(start_pinger(lambda: self._write(masked_frame(0x9, struct.pack("!II", 0xFFFFFFFF, next(pings)))),
                                        self.stop, self.options.ping_interval, f"wsrace-check-pinger-{self.run}"))
        try:
            ended = self._read(rest, started + time_limit)
        finally:
            self.stop.set()
            with self.progress:
                self.progress.notify_all()
            if self.checker.failed:  # fail the connection like a browser
                self._write(masked_frame(0x8, struct.pack("!H", 1002)), wait=1)
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes a sender blocked in sendall()
            for t in threads:
                t.join(5)
            self.sock.close()
        return self._result(ended, time.monotonic() - started)

    def _read(self, rest: bytes, deadline: float) -> str:
        checker, sock = self.checker, self.sock
        checker.feed(rest)
        sock.settimeout(None)  # the sender blocks in sendall() while the server does not read; the reader polls
        last_data = time.monotonic()
        close_deadline = None
        while not checker.done:
            now = time.monotonic()
            if self.plan and close_deadline is None and checker.received >= len(self.plan):
                self.stop.set()  # every reply is in: close the handshake, and check the rest of the stream
                self.we_closed = self._write(masked_frame(0x8, struct.pack("!H", 1000)), wait=3)
                close_deadline = now + 3
            if close_deadline is not None and now > close_deadline:
                return "no close reply"
            if now > deadline:
                return "time limit"
            if self.plan and close_deadline is None and now - last_data > self.options.idle_timeout:
                return f"no data for {self.options.idle_timeout:g} s"
            try:
                if isinstance(sock, TLSStream):  # select() cannot see what the SSL object already holds
                    if not sock.pending() and not select.select([sock], [], [], 0.25)[0]:
                        continue
                    tls_data = sock.recv_nowait(262144)  # never blocks: a partial record must not stop the clock
                    if tls_data is None:
                        continue
                    data = tls_data
                else:
                    if not select.select([sock], [], [], 0.25)[0]:
                        continue
                    data = sock.recv(262144)
            except OSError as exc:
                if isinstance(exc, ssl.SSLError) and (exc.reason or "") in (*TLS_RECORD_ERRORS, *TLS_SERVER_ALERTS):
                    self.tls_error = exc
                    return f"TLS error: {exc.reason}"
                return f"connection error: {exc}"
            if not data:
                return "EOF without a close frame"
            last_data = time.monotonic()
            checker.feed(data)
            with self.progress:
                self.progress.notify_all()
        if checker.failed:
            return "protocol error detected"
        if not self.we_closed:  # the server closed first: answer, as a well-behaved client does
            self._write(masked_frame(0x8, struct.pack("!H", checker.close_code or 1000)), wait=1)
        return "close frame"

    def _result(self, ended: str, seconds: float) -> Result:
        summary = self.checker.summary()
        anomalies = dict(summary.anomalies)
        missing = len(self.plan) - summary.received_messages
        if self.plan and missing > 0 and ended != "time limit":
            anomalies["loss"] = Anomaly("loss", missing, summary.bytes_checked, f"{missing} of {len(self.plan)} replies never arrived")
        ordered = sorted(anomalies.values(), key=lambda a: a.offset)
        framing = [a for a in ordered if a.cls in FRAMING]
        first = ordered[0] if ordered else None
        corrupted = any(a.cls != "loss" for a in ordered)
        # Intact framing and not one reply that matches a message sent: not an echo endpoint, rather than torn.
        stranger = bool(self.plan) and corrupted and not framing and summary.valid_messages == 0
        corrupted = corrupted and not stranger
        code = summary.close_code
        result = Result(
            discipline=f"run {self.run}", expected=len(self.plan) or summary.received_messages,
            received=summary.received_messages, valid=summary.valid_messages,
            anomalies={a.cls: a.count for a in ordered}, close_code=code if not corrupted else (code or 1002),
            ended=ended, seconds=round(seconds, 2), bytes_checked=summary.bytes_checked, pongs=summary.pongs,
            first_anomaly=None if first is None else describe_anomaly(first),
            first_framing=describe_anomaly(framing[0]) if framing and framing[0] is not first else None,
        )
        tls = self.tls_error
        if tls is not None and not corrupted:
            result.anomalies[f"tls:{(tls.reason or '?').lower()}"] = 1
        if corrupted:
            result.verdict, result.reason = Verdict.CORRUPTED, f"{first.cls if first else '?'}: {first.detail if first else ''}"
        elif tls is not None and tls.reason in TLS_RECORD_ERRORS:
            result.verdict = Verdict.CORRUPTED
            result.reason = (f"the TLS records themselves were corrupted ({tls.reason}) after {summary.received_messages} "
                             "message(s): the server wrote one SSL object from two threads, or spliced bytes into its stream")
        elif tls is not None:
            result.verdict = Verdict.PROTOCOL_ERROR
            result.reason = (f"the server's TLS layer failed and sent an alert ({tls.reason}) after "
                             f"{summary.received_messages} message(s): one SSL object used from two threads fails this way")
        elif code in PROTOCOL_ERROR_CODES and not self.we_closed:
            result.verdict = Verdict.PROTOCOL_ERROR
            result.reason = (f"the server failed the connection with {code} ({PROTOCOL_ERROR_CODES[code]}"
                             f"{': ' + summary.close_reason if summary.close_reason else ''}), though every frame we sent was valid")
        elif stranger:
            result.verdict = Verdict.INCOMPLETE
            result.reason = f"none of the {summary.received_messages} message(s) the server sent is a reply to a message sent"
        elif anomalies or (ended not in ("close frame", "time limit")):
            result.verdict = Verdict.INCOMPLETE
            why = ended if code is None or self.we_closed else f"the server closed with {code} " \
                f"({CLOSE_MEANINGS.get(code, summary.close_reason or 'no reason')})"
            result.reason = f"{why} after {summary.received_messages} of {len(self.plan)} replies" if self.plan else why
        result.as_expected = result.verdict is Verdict.CLEAN
        return result
