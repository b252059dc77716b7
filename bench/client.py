"""The lean benchmark client: ``python -m bench.client --port P --connections N --expect M``.

One process, many raw sockets on one selector. It does a minimal handshake,
then counts complete frames and checks every header (FIN set, no RSV, no MASK
bit, a known opcode), so corruption is counted, not missed. Frames of the
expected size are checked in bulk with strided slices, so the client is not
the bottleneck. Prints JSON lines: ``{"connected": N}`` when ready, then the
result when every reading connection has ``M`` messages or progress stops.

``--slow N`` adds N connections that are not counted as healthy: with
``--slow-rate 0`` (the default) they never read (4 KiB receive buffer); with
``--slow-rate R`` each reads at a steady R bytes/s (a token bucket, 10 ms
ticks, from the same selector loop; default receive buffer), discards the data
and watches only for a close frame or the end of the stream. The result line
then says what they got (``slow_bytes``, ``slow``: one entry per connection)
and how the server closed them (``slow_closed``: the first one's [code,
reason], when its close frame was read).

``--deadline S`` ends the run S seconds after the connections are open, however
the healthy clients are doing (``deadline_hit`` in the result): a server that
paces everyone to a slow reader makes progress too slowly for the idle timeout.

``--go`` (workload F: the server pushes once asked): after ``{"connected": N}``
the client waits for a line on stdin, then sends a text message ``go`` on every
connection; the result's ``start_ns`` is the moment before the first one was
sent (same clock as ``first_ns``/``last_ns``).

``--tls`` connects over TLS (``--cafile PEM`` verifies the server against that
CA; without it nothing is verified: a benchmark measures, it does not
authenticate). Each socket's TLS handshake is done, one socket at a time,
before its upgrade request. Decrypted bytes carry no kernel receive
timestamp, so over TLS arrival times are taken when the client reads.
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import socket
import ssl
import struct
import sys
import time

from repro.client import masked_frame, new_key, read_upgrade_reply, upgrade_request

# Kernel receive timestamps (Linux SO_TIMESTAMPNS = 35; not exported by the socket module):
# arrival times do not depend on when this Python process gets round to reading a socket.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
REALTIME_MINUS_MONOTONIC = time.time_ns() - time.monotonic_ns()


def binary_frame_header(size: int) -> bytes:
    """The header of one final, unmasked, uncompressed binary frame of ``size`` bytes (RFC 6455 5.2).

    Written here, not imported from ``server.protocol.frames``: a client that checks frames with the code that
    built them cannot see that code's mistakes (the repro's checker keeps its own parser for the same reason).
    """
    if size <= 125:
        return bytes((0x82, size))
    if size <= 0xFFFF:
        return bytes((0x82, 126)) + size.to_bytes(2, "big")
    return bytes((0x82, 127)) + size.to_bytes(8, "big")


def recv_stamped(s: socket.socket) -> tuple[bytes, int]:
    """Read what is there; return it with its kernel arrival time on the monotonic clock."""
    data, ancdata, _, _ = s.recvmsg(1 << 20, 64)
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
            sec, nsec = struct.unpack_from("qq", payload)
            return data, sec * 1_000_000_000 + nsec - REALTIME_MINUS_MONOTONIC
    return data, time.monotonic_ns()


def recv_tls(s: ssl.SSLSocket) -> tuple[bytes, int]:
    """Read what the SSL object can give now, up to about 1 MiB (records still in the kernel keep the socket
    readable for the selector); stamped when read. ``b""``: EOF. ``BlockingIOError``: not one whole record yet."""
    chunks: list[bytes] = []
    total = 0
    while total < 1 << 20:
        try:
            data = s.recv(1 << 20)
        except ssl.SSLWantReadError:
            if not chunks:
                raise BlockingIOError from None
            break
        if not data:  # EOF: what came before it first; the next read returns b"" again
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks), time.monotonic_ns()


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def client_context(cafile: str | None) -> ssl.SSLContext:
    """Verify against ``cafile`` (host name 127.0.0.1), or nothing at all without it."""
    if cafile:
        return ssl.create_default_context(cafile=cafile)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def open_connections(port: int, n: int, rcvbuf: int | None = None, batch: int = 200,
                     path: str = "/bench", ssl_context: ssl.SSLContext | None = None) -> list[tuple[socket.socket, bytes]]:
    """Open ``n`` WebSockets, ``batch`` handshakes in flight at a time; return each with the bytes after its 101.

    ``rcvbuf`` is set before connect; ``ssl_context``: TLS, wrapped after connect (an ``ssl.SSLSocket`` each).
    """
    opened: list[tuple[socket.socket, bytes]] = []
    for start in range(0, n, batch):
        group = []
        for _ in range(min(batch, n - start)):
            s = socket.socket()
            if rcvbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.settimeout(30)
            s.connect(("127.0.0.1", port))
            if ssl_context is not None:
                s = ssl_context.wrap_socket(s, server_hostname="127.0.0.1")
            key = new_key()
            s.sendall(upgrade_request("127.0.0.1", port, path, key))
            group.append((s, key))
        for s, key in group:
            _, rest = read_upgrade_reply(s, key)
            s.setblocking(False)
            if ssl_context is None:
                s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            opened.append((s, rest))
    return opened


class Counter:
    """Frame counter and header checker for one connection."""

    __slots__ = ("buf", "closed", "expected_header", "frame_len", "last_ns", "messages", "timestamps", "violations")

    def __init__(self, size: int) -> None:
        self.buf = bytearray()
        self.messages = 0
        self.violations = 0
        self.last_ns = 0
        self.closed = False
        self.timestamps: list[int] = []
        self.expected_header = binary_frame_header(size)
        self.frame_len = len(self.expected_header) + size

    def feed(self, data: bytes, now_ns: int, want_latency: bool) -> None:
        buf = self.buf
        buf += data
        head, flen = self.expected_header, self.frame_len
        pos = 0
        while len(buf) - pos >= 2 and not self.violations:
            k = (len(buf) - pos) // flen
            if k and buf[pos : pos + len(head)] == head:
                # Bulk path: k frames of the expected size; every header byte checked with one strided compare each.
                end = pos + k * flen
                if all(buf[pos + j : end : flen] == bytes((head[j],)) * k for j in range(len(head))):
                    if want_latency:
                        off = pos + len(head)
                        self.timestamps.extend(now_ns - struct.unpack_from("!Q", buf, off + i * flen)[0] for i in range(k))
                    self.messages += k
                    self.last_ns = now_ns
                    pos = end
                    continue
            consumed = self._one_frame(buf, pos, now_ns, want_latency)
            if consumed == 0:
                break
            pos += consumed
        del buf[:pos]

    def _one_frame(self, buf: bytearray, pos: int, now_ns: int, want_latency: bool) -> int:
        b0, b1 = buf[pos], buf[pos + 1]
        n, head = b1 & 0x7F, 2
        if n == 126:
            if len(buf) - pos < 4:
                return 0
            n, head = struct.unpack_from("!H", buf, pos + 2)[0], 4
        elif n == 127:
            if len(buf) - pos < 10:
                return 0
            n, head = struct.unpack_from("!Q", buf, pos + 2)[0], 10
        opcode = b0 & 0x0F
        if b1 & 0x80 or b0 & 0x70 or not b0 & 0x80 or opcode not in (0x1, 0x2, 0x8, 0x9, 0xA):
            self.violations += 1
            return 0
        if len(buf) - pos < head + n:
            return 0
        if opcode in (0x1, 0x2):
            self.messages += 1
            self.last_ns = now_ns
            if want_latency and n >= 8:
                self.timestamps.append(now_ns - struct.unpack_from("!Q", buf, pos + head)[0])
        elif opcode == 0x8:
            self.closed = True
        return head + n


SLOW_TICK = 0.01  # seconds between a slow reader's reads
SLOW_BURST = 0.1  # the most a slow reader may catch up after the loop was busy: this many seconds of its rate


class SlowReader:
    """A connection that reads at ``rate`` bytes/s and discards what it reads, watching for the close frame.

    Frames are parsed loosely (lengths and opcodes only, payloads skipped): the close frame's code and reason
    are recorded when it arrives. ``end``: ``"eof"`` or ``"reset"`` when the stream ended, at ``end_ns``.
    """

    def __init__(self, sock: socket.socket, rest: bytes, rate: float, now: float) -> None:
        self.sock = sock
        self.rate = rate
        self.tokens = 0.0
        self.last = now
        self.bytes = 0
        self.first_ns = 0
        self.first_bytes = 0  # the first read can hold the tokens saved up before the first byte came: not in the rate
        self.last_ns = 0
        self.buf = bytearray()
        self.skip = 0  # payload bytes of the current frame still to come
        self.close: tuple[int | None, str] | None = None
        self.close_ns = 0
        self.end: str | None = None
        self.end_ns = 0
        if rest:
            self._got(rest, time.monotonic_ns())

    @property
    def done(self) -> bool:
        return self.end is not None

    def tick(self, now: float) -> None:
        """Read what the bucket allows now. Over TLS one ``recv`` gives at most one record: read until the bucket
        or the socket is empty."""
        self.tokens = min(self.tokens + (now - self.last) * self.rate, max(1.0, self.rate * SLOW_BURST))
        self.last = now
        while self.tokens >= 1 and not self.done:
            try:
                data = self.sock.recv(min(int(self.tokens), 1 << 20))
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                return
            except ssl.SSLZeroReturnError:  # TLS close_notify: the end of the stream
                data = b""
            except OSError:
                self.end, self.end_ns = "reset", time.monotonic_ns()
                return
            if not data:
                self.end, self.end_ns = "eof", time.monotonic_ns()
                return
            self.tokens -= len(data)
            self._got(data, time.monotonic_ns())

    def _got(self, data: bytes, now_ns: int) -> None:
        if not self.first_ns:
            self.first_ns, self.first_bytes = now_ns, len(data)
        self.last_ns = now_ns
        self.bytes += len(data)
        if self.skip >= len(data):
            self.skip -= len(data)
            return
        buf = self.buf
        buf += memoryview(data)[self.skip :]
        self.skip = 0
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n, head = b1 & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, head = struct.unpack_from("!H", buf, 2)[0], 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, head = struct.unpack_from("!Q", buf, 2)[0], 10
            if b1 & 0x80:
                head += 4  # a masked frame (a server must not send one): skip its key too
            if b0 & 0x0F == 0x8 and n <= 125:
                if len(buf) < head + n:
                    return  # a close frame's payload is at most 125 bytes: wait for all of it
                payload = bytes(buf[head : head + n])
                code = struct.unpack_from("!H", payload)[0] if n >= 2 else None
                self.close = (code, payload[2:].decode("utf-8", "replace"))
                self.close_ns = now_ns
            if len(buf) >= head + n:
                del buf[: head + n]
            else:
                self.skip = head + n - len(buf)
                buf.clear()

    def summary(self) -> dict[str, object]:
        span = (self.last_ns - self.first_ns) / 1e9
        return {
            "bytes": self.bytes,
            # the rate it achieved, from its first read to its last (None: fewer than two reads)
            "read_bps": (self.bytes - self.first_bytes) / span if span > 0 else None,
            "close": list(self.close) if self.close else None,
            "close_ns": self.close_ns or None,
            "end": self.end,
            "end_ns": self.end_ns or None,
        }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--expect", type=int, required=True, help="messages per reading connection")
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--slow", type=int, default=0, help="extra connections that are not counted (see --slow-rate)")
    p.add_argument("--slow-rate", type=float, default=0.0, metavar="BYTES_PER_S",
                   help="each --slow connection reads this many bytes/s (default 0: never reads, 4 KiB receive buffer)")
    p.add_argument("--deadline", type=float, default=0.0, metavar="S",
                   help="end the run this many seconds after the connections are open (default 0: no deadline)")
    p.add_argument("--latency", action="store_true")
    p.add_argument("--idle-timeout", type=float, default=10.0)
    p.add_argument("--path", default="/bench", help="request path (bench.scaleout: /broadcast)")
    p.add_argument("--tls", action="store_true", help="connect over TLS (wss://)")
    p.add_argument("--go", action="store_true",
                   help="after the connected line, wait for a line on stdin, then send a text 'go' on every connection")
    p.add_argument("--cafile", default=None, help="with --tls: verify the server against this CA (PEM); default: no verification")
    args = p.parse_args()
    raise_fd_limit()
    context = client_context(args.cafile) if args.tls else None
    started = time.monotonic()
    opened = open_connections(args.port, args.connections, path=args.path, ssl_context=context)
    connect_s = time.monotonic() - started
    socks = [sock for sock, _ in opened]
    slow_opened = open_connections(args.port, args.slow, rcvbuf=None if args.slow_rate > 0 else 4096,
                                   ssl_context=context) if args.slow else []
    slow = [sock for sock, _ in slow_opened]
    readers = [SlowReader(sock, rest, args.slow_rate, time.monotonic()) for sock, rest in slow_opened] if args.slow_rate > 0 else []
    print(json.dumps({"connected": len(socks), "slow": len(slow), "connect_s": connect_s}), flush=True)
    start_ns = 0
    if args.go:
        sys.stdin.readline()
        go = masked_frame(0x1, b"go")
        start_ns = time.monotonic_ns()
        for s in socks:
            s.sendall(go)  # 8 bytes on a fresh non-blocking socket: its send buffer has room
    sel = selectors.DefaultSelector()
    counters = {}
    for s, rest in opened:
        c = Counter(args.size)
        if rest:  # frames that came in with the 101
            c.feed(rest, time.monotonic_ns(), args.latency)
        counters[s] = c
        sel.register(s, selectors.EVENT_READ, c)
    pending = sum(1 for c in counters.values() if c.messages < args.expect and not c.closed)
    last_progress = time.monotonic()
    deadline = last_progress + args.deadline if args.deadline > 0 else float("inf")
    deadline_hit = False
    next_tick = last_progress + SLOW_TICK
    first_ns = 0
    while pending and time.monotonic() - last_progress < args.idle_timeout:
        now = time.monotonic()
        if now >= deadline:
            deadline_hit = True
            break
        if readers and now >= next_tick:
            for r in readers:
                r.tick(now)
            next_tick = now + SLOW_TICK
        for key, _ in sel.select(min(0.5, max(0.0, next_tick - now)) if readers else 0.5):
            sock, c = key.fileobj, key.data
            assert isinstance(sock, socket.socket)
            try:
                data, now = recv_tls(sock) if isinstance(sock, ssl.SSLSocket) else recv_stamped(sock)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data, now = b"", time.monotonic_ns()
            if not first_ns:
                first_ns = now
            last_progress = time.monotonic()  # healthy clients only: a slow reader's bytes are no progress
            before = c.messages >= args.expect
            if data:
                c.feed(data, now, args.latency)
            if not data or c.closed or c.violations:
                c.closed = True
                sel.unregister(sock)
            if not before and (c.messages >= args.expect or c.closed):
                pending -= 1
    lat = sorted(t for c in counters.values() for t in c.timestamps)

    def pct(q: float) -> float | None:
        return lat[min(len(lat) - 1, int(len(lat) * q))] / 1e6 if lat else None

    result = {
        "messages": sum(c.messages for c in counters.values()),
        "complete": sum(1 for c in counters.values() if c.messages >= args.expect),
        "violations": sum(c.violations for c in counters.values()),
        # Reading clients closed (close frame or EOF) before they had every message: a healthy client lost.
        "closed_early": sum(1 for c in counters.values() if c.closed and c.messages < args.expect),
        "first_ns": first_ns,
        "start_ns": start_ns,  # --go: when the first 'go' was sent (0 without --go)
        "last_ns": max((c.last_ns for c in counters.values()), default=0),
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": lat[-1] / 1e6 if lat else None, "n": len(lat)},
        "deadline_hit": deadline_hit,
        # The slow connections (not counted above): with --slow-rate, what each read and how its stream ended.
        "slow_bytes": sum(r.bytes for r in readers),
        "slow_closed": list(readers[0].close) if readers and readers[0].close else None,
        "slow": [r.summary() for r in readers],
    }
    print(json.dumps(result), flush=True)
    for s in socks + slow:
        s.close()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
