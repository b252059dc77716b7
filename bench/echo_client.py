"""The round-trip client of workload R: ``python -m bench.echo_client --port P --path /echo --connections N --size S``.

One process, N raw sockets on one selector (the handshake of ``bench.client``,
``TCP_NODELAY``). On every connection it sends one masked binary message of
``--size`` bytes, waits for the echo, and sends the next as soon as the echo is
complete: one message in flight per connection. Each connection alternates
between two random payloads, masked once beforehand, so a stale or repeated
echo does not pass: every echo must be, byte for byte, the one unmasked,
unfragmented binary frame of the message just sent (FIN, no RSV, no mask);
anything else counts as a ``violation`` and ends that connection.

The first ``--warmup`` seconds are not counted; then for ``--seconds`` every
echo completed is a round trip, and its latency runs from the moment before
the client's ``send`` of the message to the kernel's receive timestamp of the
read that completed its echo (``SO_TIMESTAMPNS``: not when this process got
round to it). Prints one JSON line: ``rt_per_s`` (all connections together),
``latency_ms`` (p50, p99, max), ``violations``, ``closed`` (connections the
server ended), or ``error`` (``status``: the HTTP status) if a handshake failed.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import struct
import time

from repro.client import HandshakeFailed, masked_frame

from .client import REALTIME_MINUS_MONOTONIC, SO_TIMESTAMPNS, binary_frame_header, open_connections, raise_fd_limit


class Conn:
    """One connection's round trips: its two messages (framed and masked once), the echo being read."""

    __slots__ = ("buf", "closed", "expected", "frames", "got", "latencies", "out", "rounds", "sent_ns", "sock",
                 "view", "violation", "which")

    def __init__(self, sock: socket.socket, size: int) -> None:
        self.sock = sock
        payloads = [os.urandom(size), os.urandom(size)]
        self.frames = [masked_frame(0x2, p) for p in payloads]
        self.expected = [binary_frame_header(size) + p for p in payloads]
        self.buf = bytearray(len(self.expected[0]) + 1)  # one byte more: an echo longer than the message shows
        self.view = memoryview(self.buf)
        self.got = 0
        self.which = 0
        self.out = memoryview(b"")
        self.sent_ns = 0
        self.rounds = 0  # round trips counted (inside the measured window)
        self.latencies: list[int] = []
        self.violation: str | None = None
        self.closed = False

    def send_next(self) -> None:
        """Start the next round trip: send what the socket takes now; ``out`` holds the rest."""
        self.which ^= 1
        self.got = 0
        self.sent_ns = time.monotonic_ns()
        frame = self.frames[self.which]
        try:
            sent = self.sock.send(frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        self.out = memoryview(frame)[sent:]

    def flush(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        self.out = self.out[sent:]

    def read(self) -> int | None:
        """Read into the echo buffer. Returns the kernel arrival time (monotonic ns) once the echo is complete,
        else None; sets ``closed`` at the end of the stream and ``violation`` for a wrong echo."""
        try:
            n, ancdata, _, _ = self.sock.recvmsg_into([self.view[self.got :]], 64)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:  # reset by the server
            self.closed = True
            return None
        if n == 0:
            self.closed = True
            return None
        self.got += n
        expected = self.expected[self.which]
        if self.got < len(expected):
            # A header that is not the expected one is wrong already (a ping, a close frame, a torn frame).
            head = min(self.got, 2)
            if self.buf[:head] != expected[:head]:
                self.violation = f"unexpected frame start {bytes(self.buf[:head]).hex()}"
            return None
        if self.got > len(expected) or self.buf[: len(expected)] != expected:
            self.violation = (f"echo of {len(expected)} bytes differs (got {self.got}+ bytes, "
                              f"header {bytes(self.buf[:4]).hex()})")
            return None
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
                sec, nsec = struct.unpack_from("qq", data)
                return sec * 1_000_000_000 + nsec - REALTIME_MINUS_MONOTONIC
        return time.monotonic_ns()


def run(port: int, path: str, connections: int, size: int, seconds: float, warmup: float,
        idle_timeout: float) -> dict[str, object]:
    try:
        opened = open_connections(port, connections, path=path)
    except HandshakeFailed as exc:
        status = str(exc).split("got 'HTTP/1.1 ", 1)[-1][:3]
        return {"error": f"handshake on {path}: {exc}", "status": int(status) if status.isdigit() else None}
    conns = []
    sel = selectors.DefaultSelector()
    for sock, rest in opened:
        if rest:
            return {"error": f"{len(rest)} bytes before the first message on {path}"}
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c = Conn(sock, size)
        conns.append(c)
        sel.register(sock, selectors.EVENT_READ, c)
    started = time.monotonic()
    measure_from, end = started + warmup, started + warmup + seconds
    for c in conns:
        c.send_next()
        if c.out:
            sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
    active = len(conns)
    warmup_rounds = 0
    last_progress = started
    stalled = False
    while active:
        now = time.monotonic()
        if now >= end:
            break
        if now - last_progress > idle_timeout:
            stalled = True
            break
        for key, events in sel.select(min(0.5, end - now)):
            c = key.data
            if events & selectors.EVENT_WRITE:
                c.flush()
                if not c.out:
                    sel.modify(c.sock, selectors.EVENT_READ, c)
            if not events & selectors.EVENT_READ:
                continue
            arrived = c.read()
            if c.closed or c.violation:
                sel.unregister(c.sock)
                active -= 1
                continue
            if arrived is None:
                continue
            done = time.monotonic()
            last_progress = done
            if measure_from <= done < end:
                c.rounds += 1
                c.latencies.append(arrived - c.sent_ns)
            elif done < measure_from:
                warmup_rounds += 1
            c.send_next()
            if c.out:
                sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
    measured = max(1e-9, min(time.monotonic(), end) - measure_from)
    lat = sorted(t for c in conns for t in c.latencies)

    def pct(q: float) -> float | None:
        return lat[min(len(lat) - 1, int(len(lat) * q))] / 1e6 if lat else None

    rounds = sum(c.rounds for c in conns)
    violations = [c.violation for c in conns if c.violation]
    result: dict[str, object] = {
        "round_trips": rounds,
        "seconds": measured,
        "rt_per_s": rounds / measured,
        "mb_per_s": rounds * size * 2 / measured / 1e6,  # both directions
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": lat[-1] / 1e6 if lat else None, "n": len(lat)},
        "warmup_round_trips": warmup_rounds,
        "per_connection": [c.rounds for c in conns],
        "violations": len(violations),
        "violation": violations[0] if violations else None,
        "closed": sum(1 for c in conns if c.closed),
        "stalled": stalled,
    }
    for c in conns:
        c.sock.close()
    return result


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.echo_client")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/echo")
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--size", type=int, default=256, help="bytes per message (binary)")
    p.add_argument("--seconds", type=float, default=1.0, help="measured time, after the warm-up")
    p.add_argument("--warmup", type=float, default=0.25, help="seconds of round trips not counted first")
    p.add_argument("--idle-timeout", type=float, default=5.0, help="give up after this long without an echo")
    args = p.parse_args()
    raise_fd_limit()
    print(json.dumps(run(args.port, args.path, args.connections, args.size, args.seconds, args.warmup,
                         args.idle_timeout)), flush=True)


if __name__ == "__main__":
    main()
