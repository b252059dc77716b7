"""Test helpers: an in-process server, raw sockets and a /stream verifier."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from repro.checker import WireChecker
from repro.client import open_socket, start_pinger
from server import DemoApp, Limits, Server
from server.core.affinity import WriteAffinityError
from server.demo import streamformat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository


@contextlib.contextmanager
def running_server(limits: Limits | None = None, workers: int = 8, router: object = DemoApp, **server_args) -> Iterator[Server]:
    """A fixed server on 127.0.0.1 with a free port; shut down (and checked) afterwards."""
    srv = Server(router, host="127.0.0.1", port=0, workers=workers, limits=limits or Limits(ping_interval=None),  # type: ignore[arg-type]
                 **server_args)
    srv.start()
    try:
        yield srv
    finally:
        assert srv.shutdown(timeout=10), "server did not shut down cleanly"
        assert not (srv.loop.thread and srv.loop.thread.is_alive()), "IO thread still alive after shutdown"


@dataclass
class StreamCheck:
    """Verifies /stream messages: CRC, length, per-producer order, no loss or duplicates."""

    producers: int
    count: int
    next_seq: dict[int, int] = field(default_factory=dict)
    received: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, message: bytes | str) -> None:
        self.received += 1
        if isinstance(message, str):
            self.errors.append(f"message {self.received}: text message on a binary stream")
            return
        try:
            producer, seq = streamformat.decode(bytes(message))
        except ValueError as exc:
            self.errors.append(f"message {self.received}: {exc}")
            return
        want = self.next_seq.get(producer, 0)
        if producer >= self.producers or seq != want:
            self.errors.append(f"message {self.received}: producer {producer} seq {seq}, expected {want}")
        self.next_seq[producer] = seq + 1

    def assert_complete(self) -> None:
        assert not self.errors, f"{len(self.errors)} bad messages, first: {self.errors[:3]}"
        assert self.received == self.producers * self.count, f"received {self.received} of {self.producers * self.count}"
        assert all(self.next_seq.get(p) == self.count for p in range(self.producers)), self.next_seq


def raw_connect(port: int, timeout: float = 5.0, rcvbuf: int | None = None,
                ssl_context: ssl.SSLContext | None = None) -> socket.socket:
    """A TCP connection to 127.0.0.1; ``rcvbuf``: a small SO_RCVBUF, set before connect.

    After connect it would be too late: the window is advertised in the handshake and the
    kernel may not shrink it, so the server's writes would not block as the test means them to.
    ``ssl_context``: then wrapped for TLS (``server_hostname="127.0.0.1"``), the handshake done
    within ``timeout``; an ``ssl.SSLSocket`` is returned.
    The one such helper for tests/ and repro/: repro's :func:`repro.client.open_socket`.
    """
    return open_socket("127.0.0.1", port, rcvbuf, timeout, ssl_context=ssl_context)


def stalled_client(port: int, path: str, rcvbuf: int = 4096) -> socket.socket:
    """A client that asks for a WebSocket on ``path`` through a small window and never reads again, not even the 101."""
    sock = raw_connect(port, rcvbuf=rcvbuf)
    sock.sendall(upgrade_request(path))
    return sock


def http_exchange(port: int, request: bytes, timeout: float = 5.0, ssl_context: ssl.SSLContext | None = None) -> bytes:
    """Send raw bytes, return everything the server sends until it closes (``ssl_context``: over TLS)."""
    with raw_connect(port, timeout, ssl_context=ssl_context) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def reads(stream: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``stream`` cut into the non-empty reads that ``cuts`` (any ints, taken modulo its length + 1) make, in order."""
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds) if a < b]


def upgrade_request(path: str, key: str = "dGhlIHNhbXBsZSBub25jZQ==", version: str = "13", extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n"
    ).encode()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@contextlib.contextmanager
def pinging(ping: Callable[[], object], interval: float = 0.001) -> Iterator[None]:
    """Call ``ping()`` every ``interval`` s on a thread for the block (repro's pinger; it stops when ``ping`` raises)."""
    stop = threading.Event()
    thread = start_pinger(ping, stop, interval, "test-pinger")
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def server_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("wsrace"))


def ws_handshake(port: int, path: str = "/echo", extra: str = "", timeout: float = 5.0,
                 ssl_context: ssl.SSLContext | None = None, frames: bytes = b"") -> tuple[socket.socket, bytes]:
    """Open a raw WebSocket (``ssl_context``: over TLS); return the socket and any bytes read past the 101 reply.

    ``frames``: sent in the same write as the request, before any answer (a client's first frames).
    """
    sock = raw_connect(port, timeout, ssl_context=ssl_context)
    sock.sendall(upgrade_request(path, extra=extra) + frames)
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, f"server closed during handshake: {buf!r}"
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock, rest


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0, masked: bool = True,
                 key: bytes = b"\x01\x02\x03\x04", length_form: str = "min") -> bytes:
    """A frame built by hand, so tests can break the rules on purpose (the one builder in tests/).

    Masked with ``key`` as a client must; ``masked=False`` gives a server frame (or a client's broken one).
    ``length_form`` "16" or "64" forces that length encoding even where a shorter one fits.
    """
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if length_form == "16" or (length_form == "min" and 126 <= n < 65536):
        head = bytes((first, mask_bit | 126)) + n.to_bytes(2, "big")
    elif length_form == "64" or (length_form == "min" and n >= 65536):
        head = bytes((first, mask_bit | 127)) + n.to_bytes(8, "big")
    else:
        head = bytes((first, mask_bit | n))
    if not masked:
        return head + payload
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class _FrameLog(WireChecker):
    """The repro's strict checker (the one frame parser for tests/ and repro/), also keeping every frame it accepts."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[tuple[int, bytes]] = []

    def _frame(self, fin: int, rsv: int, opcode: int, payload: bytes, offset: int) -> None:
        self.frames.append((opcode, payload))
        super()._frame(fin, rsv, opcode, payload, offset)


def read_server_frames(
    sock: socket.socket, buf: bytes = b"", timeout: float = 10.0, max_frames: int = 0
) -> tuple[list[tuple[int, bytes]], bool]:
    """Read server frames until a close frame, EOF or ``max_frames``: ([(opcode, payload)], saw_eof).

    Every frame goes through the strict checker: a frame the RFC forbids a server to send (masked, reserved
    bits, a bad close code, ...) fails the test with the checker's diagnosis instead of being returned.
    ``timeout`` bounds the whole read. Running out of it is not EOF: it raises :class:`TimeoutError`
    saying what did arrive (a server that never closes, or keeps sending pings, fails here).
    """
    deadline = time.monotonic() + timeout
    log = _FrameLog()
    data = buf
    while True:
        log.feed(data)
        if log.failed:
            first = log.summary().first()
            assert first is not None
            raise AssertionError(f"the server sent an invalid frame: {first.cls}: {first.detail}\n{first.dump}")
        if max_frames and len(log.frames) >= max_frames:
            return log.frames[:max_frames], False
        if log.closed:
            return log.frames, False
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            data = sock.recv(65536)
        except ConnectionResetError:
            data = b""
        except TimeoutError:
            opcodes = dict(Counter(op for op, _ in log.frames))
            wanted = f", nor {max_frames} frame(s)" if max_frames else ""
            raise TimeoutError(f"neither a close frame nor EOF{wanted} within {timeout} s: {len(log.frames)} frames "
                               f"arrived (opcode: count {opcodes}), {len(log._buf)} bytes pending") from None
        if not data:
            return log.frames, True


def close_code_of(frames: list[tuple[int, bytes]]) -> int | None:
    for opcode, payload in frames:
        if opcode == 0x8:
            return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
    return None


def echo_works(port: int, ssl_context: ssl.SSLContext | None = None) -> bool:
    """A normal client still gets served (``ssl_context``: over wss://).

    Over TLS the client is one thread on a raw ``SSLSocket``, not ``websockets``: the sync client's reader thread
    reads the server's TLS 1.3 session tickets while the caller's thread writes the HTTP request, one SSL object
    from two threads, and about one request in 200 never reached the wire here (the server then answers 408 at its
    handshake timeout; 0 in 1,000 with TLS 1.2, which sends no tickets after the handshake, and 0 in 1,500 with
    this client).
    """
    if ssl_context is not None:
        sock, rest = ws_handshake(port, "/echo", ssl_context=ssl_context)
        with sock:
            sock.sendall(client_frame(0x1, b"still alive?"))
            frames, _ = read_server_frames(sock, rest, timeout=5, max_frames=1)
            return frames == [(0x1, b"still alive?")]
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}/echo", open_timeout=5) as ws:
        ws.send("still alive?")
        return ws.recv(timeout=5) == "still alive?"


def describe(message: str | bytes) -> str:
    """A message in a few dozen characters: type, length and its first bytes (never the whole payload)."""
    kind = "text" if isinstance(message, str) else "bytes"
    head = message[:16]
    return f"{kind}[{len(message)}] {head!r}{'…' if len(message) > 16 else ''}"


def assert_same_messages(got: Sequence[str | bytes] | Counter, want: Sequence[str | bytes] | Counter,
                         ordered: bool = True) -> None:
    """Compare received with sent messages; on failure say what differs in a bounded message, not a payload dump."""
    if ordered and not isinstance(got, Counter) and not isinstance(want, Counter):
        if got == want:
            return
        first = next((i for i, (g, w) in enumerate(zip(got, want, strict=False)) if g != w), min(len(got), len(want)))
        g = describe(got[first]) if first < len(got) else "nothing"
        w = describe(want[first]) if first < len(want) else "nothing"
        raise AssertionError(f"{len(got)} messages received, {len(want)} sent; first difference at {first}: got {g}, want {w}")
    got_c, want_c = Counter(got), Counter(want)
    if got_c == want_c:
        return
    missing = list((want_c - got_c).elements())
    extra = list((got_c - want_c).elements())
    raise AssertionError(
        f"{len(missing)} sent messages never came back (first: {[describe(m) for m in missing[:3]]}); "
        f"{len(extra)} unexpected replies (first: {[describe(m) for m in extra[:3]]})"
    )


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """End a process this test started: SIGTERM (a graceful shutdown), then SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def raised_on(thread_name: str, call: Callable[[], object]) -> str:
    """Run ``call`` on a new thread named ``thread_name``; the WriteAffinityError's message ('' if none was raised)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except WriteAffinityError as exc:
            errors.append(exc)

    t = threading.Thread(target=run, name=thread_name)
    t.start()
    t.join()
    return str(errors[0]) if errors else ""


def drain_in_background(ws: Any) -> threading.Thread:
    """Keep reading ``ws`` (a websockets sync client) until the server closes, as a live client would."""

    def run() -> None:
        try:
            while True:
                ws.recv(timeout=20)
        except Exception:
            pass

    t = threading.Thread(target=run)
    t.start()
    return t

