"""The checking client: its own handshake, raw reads, a pinger, a time limit.

It shares no code with the server: the handshake is written out here, and the
bytes after the 101 go to :class:`~repro.checker.WireChecker`.

Over TLS (``ClientOptions.ssl_context``) the client's threads share one
``SSLSocket`` through :class:`TLSStream`, which never lets two of them into
the SSL object at once: the checker must not commit the bug it looks for.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .checker import DeflateParams, MessageVerifier, StreamSpec, Summary, WireChecker

logger = logging.getLogger(__name__)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class HandshakeFailed(Exception):
    pass


@dataclass
class ClientOptions:
    rcvbuf: int | None = 8192  # small: the server's writes stay partial, so tears show
    ping_interval: float | None = 0.0005  # pings make the server's IO/reader thread write pongs
    deflate: bool = False
    time_limit: float = 10.0
    ssl_context: ssl.SSLContext | None = None  # wss://: a client context (server_hostname is the host connected to)


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """One complete, masked client frame (FIN set) of any length."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + struct.pack("!H", n)
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + struct.pack("!Q", n)
    mask = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
    return head + key + masked


def parse_extensions(value: str) -> DeflateParams | None:
    for ext in value.split(","):
        parts = [p.strip() for p in ext.split(";")]
        if parts[0] != "permessage-deflate":
            continue
        params = DeflateParams()
        for p in parts[1:]:
            name, _, val = p.partition("=")
            if name.strip() == "server_no_context_takeover":
                params.server_no_context_takeover = True
            elif name.strip() == "server_max_window_bits" and val:
                params.server_max_window_bits = int(val.strip().strip('"'))
        return params
    return None


def upgrade_request(
    host: str, port: int, target: str, key: str, deflate: bool = False, headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """A WebSocket upgrade request, written out by hand (no shared code with the server); ``headers`` are added as given."""
    return (
        f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        + ("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if deflate else "")
        + "".join(f"{name}: {value}\r\n" for name, value in headers)
        + "\r\n"
    ).encode()


def read_upgrade_reply(sock: socket.socket, key: str) -> tuple[dict[str, str], bytes]:
    """Read the reply head; check the 101 and ``Sec-WebSocket-Accept``.

    Returns the headers (lower-case names) and the bytes that came after the head.
    """
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise HandshakeFailed(f"server closed the connection during the handshake: {buf[:200]!r}")
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 101"):
        raise HandshakeFailed(f"expected 101, got {lines[0]!r}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    expected_accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    if headers.get("sec-websocket-accept") != expected_accept:
        raise HandshakeFailed(f"Sec-WebSocket-Accept {headers.get('sec-websocket-accept')!r}, expected {expected_accept!r}")
    return headers, rest


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def start_pinger(ping: Callable[[], object], stop: threading.Event, interval: float, name: str = "pinger") -> threading.Thread:
    """A daemon thread that calls ``ping()`` every ``interval`` s until ``stop`` is set or ``ping()``
    returns False or raises (the connection is gone; whoever reads reports how it ended)."""

    def run() -> None:
        while not stop.wait(interval):
            try:
                if ping() is False:
                    return
            except Exception:
                return

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def open_socket(host: str, port: int, rcvbuf: int | None, timeout: float = 5.0,
                ssl_context: ssl.SSLContext | None = None) -> socket.socket:
    """A connected TCP socket; a small ``rcvbuf`` is set before connect, so the advertised window stays small.

    With ``ssl_context``: then wrapped (``server_hostname=host``) and the TLS handshake done, within
    ``timeout``; an ``ssl.SSLSocket`` is returned (``ssl.SSLCertVerificationError`` for an untrusted server).
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(address)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise
    return sock


class TLSStream:
    """One ``SSLSocket`` shared by a reader and writers on different threads, safely.

    OpenSSL forbids using one ``SSL`` object from two threads at once (openssl/openssl#20446), and
    CPython releases the GIL inside ``SSL_read``/``SSL_write``: a reader blocked in ``recv`` while a
    pinger calls ``sendall`` is the TLS half of the bug this package checks for. Here the socket is
    non-blocking and every call into the SSL object holds one lock and returns at once; waiting
    (``select``) happens outside it. A write that wants to be retried is retried with the same bytes.
    Callers serialise whole frames themselves (one writer at a time), as they do on a plain socket.

    ``settimeout`` bounds ``recv`` and ``sendall`` like a socket's timeout (``TimeoutError``);
    ``recv_nowait`` never waits. The handshake must be done before (``open_socket``).
    """

    CHUNK = 16384  # bytes per SSL_write: one TLS record, a short hold of the lock
    SLICE = 0.05  # longest wait outside the lock before trying again

    def __init__(self, sock: ssl.SSLSocket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._lock = threading.Lock()
        self._timeout: float | None = None
        self._closed = False

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def fileno(self) -> int:
        return self._sock.fileno()

    def pending(self) -> int:
        """Decrypted bytes already inside the SSL object (``select`` cannot see them)."""
        with self._lock:
            return self._sock.pending()

    def _wait(self, want_write: bool, deadline: float | None) -> None:
        if self._closed:
            raise OSError(9, "TLSStream is closed")
        left = self.SLICE if deadline is None else min(self.SLICE, deadline - time.monotonic())
        if left <= 0:
            raise TimeoutError("timed out")
        try:
            select.select([] if want_write else [self._sock], [self._sock] if want_write else [], [], left)
        except ValueError:  # closed by another thread meanwhile (fileno -1)
            raise OSError(9, "TLSStream is closed") from None

    def recv_nowait(self, bufsize: int) -> bytes | None:
        """What the SSL object can give now (``b""``: EOF), or ``None`` when it needs more bytes from the peer."""
        if self._closed:
            raise OSError(9, "TLSStream is closed")
        with self._lock:
            try:
                return self._sock.recv(bufsize)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return None

    def recv(self, bufsize: int) -> bytes:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            if self._closed:
                raise OSError(9, "TLSStream is closed")
            with self._lock:
                try:
                    return self._sock.recv(bufsize)
                except ssl.SSLWantReadError:
                    want_write = False
                except ssl.SSLWantWriteError:
                    want_write = True
            self._wait(want_write, deadline)

    def sendall(self, data: bytes) -> None:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        view = memoryview(data).cast("B")
        while view:
            chunk = view[: self.CHUNK]  # after a want-read/want-write: the same bytes again
            if self._closed:
                raise OSError(9, "TLSStream is closed")
            with self._lock:
                try:
                    view = view[self._sock.send(chunk) :]
                    continue
                except ssl.SSLWantWriteError:
                    want_write = True
                except ssl.SSLWantReadError:
                    want_write = False
            self._wait(want_write, deadline)

    def shutdown(self, how: int) -> None:
        """Shut the TCP connection down (no close_notify): wakes a thread waiting to write, as on a plain socket."""
        socket.socket.shutdown(self._sock, how)  # not SSLSocket.shutdown, which drops the SSL object under its users

    def close(self) -> None:
        self._closed = True
        with self._lock:
            self._sock.close()


def check_url(host: str, port: int, target: str, stream: StreamSpec | None, options: ClientOptions,
              verify: MessageVerifier | None = None) -> tuple[Summary, str]:
    """Connect, read until close/EOF/failure/time limit; return the summary and how it ended.

    ``verify`` sees every complete message that ``stream`` does not check (see :class:`WireChecker`).
    """
    raw = open_socket(host, port, options.rcvbuf, ssl_context=options.ssl_context)
    write_lock = threading.Lock()  # the client has two writers (pinger, reader); it serialises them
    key = new_key()
    raw.sendall(upgrade_request(host, port, target, key, options.deflate))
    headers, rest = read_upgrade_reply(raw, key)
    sock: socket.socket | TLSStream = TLSStream(raw) if isinstance(raw, ssl.SSLSocket) else raw
    deflate = parse_extensions(headers.get("sec-websocket-extensions", ""))
    if deflate and not options.deflate:
        raise HandshakeFailed("server accepted permessage-deflate that was not offered")

    checker = WireChecker(deflate=deflate, stream=stream, verify=verify)
    stop = threading.Event()

    pings = itertools.count(1)

    def ping() -> None:
        with write_lock:
            sock.sendall(masked_frame(0x9, struct.pack("!I", next(pings))))

    pinger_thread = start_pinger(ping, stop, options.ping_interval, "checker-pinger") if options.ping_interval else None

    ended = "time limit"
    deadline = time.monotonic() + options.time_limit
    checker.feed(rest)
    sock.settimeout(0.5)
    try:
        while not checker.done:
            if time.monotonic() > deadline:
                break
            try:
                data = sock.recv(262144)
            except TimeoutError:
                continue
            except OSError as exc:
                ended = f"connection error: {exc}"
                break
            if not data:
                ended = "EOF without a close frame"
                break
            checker.feed(data)
        if checker.failed:
            ended = "protocol error detected"
        elif checker.closed:
            ended = "close frame"
            with write_lock:  # answer the close, as a well-behaved client does
                try:
                    sock.sendall(masked_frame(0x8, struct.pack("!H", checker.close_code or 1000)))
                except OSError:
                    pass
    finally:
        stop.set()
        if pinger_thread:
            pinger_thread.join(2)
        if checker.failed:
            # Fail the connection like a browser: close code 1002 back to the server.
            try:
                with write_lock:
                    sock.sendall(masked_frame(0x8, struct.pack("!H", 1002)))
            except OSError:
                pass
        sock.close()
    return checker.summary(), ended
