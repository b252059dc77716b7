"""Orchestrate the benchmark: servers and clients in separate, pinned processes, alternated run by run."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .servers import KINDS

if TYPE_CHECKING:
    from tests.tls import TLSFiles

PY = sys.executable
SERVER_CPU, CLIENT_CPU = 0, 1


@dataclass
class Workload:
    name: str
    title: str
    producers: int
    clients: int
    size: int
    count: int  # messages per producer
    slow: int = 0
    rate: float = 0.0  # deliveries per second in all; 0 = as fast as possible
    latency: bool = False
    idle_timeout: float = 10.0
    outbox: int | None = None  # ours' Limits.max_queue_bytes; None: the default (16 MiB)
    servers: list[str] = field(default_factory=lambda: list(KINDS))


def workloads(quick: bool) -> dict[str, Workload]:
    q = quick
    return {
        "A": Workload("A", "fan-out, 256 B, 4 producers -> 20 clients", 4, 20, 256, 200 if q else 5000),
        "B": Workload("B", "large, 64 KiB, 4 producers -> 4 clients", 4, 4, 65536, 20 if q else 400),
        # The case: 30,000 messages per producer; the never-reading client's share (31 MB) overflows
        # ours' 4 MiB outbox many times over, and the 1 s stall timeout is a small part of the run.
        "C": Workload("C", f"slow consumer: A plus one client that never reads, {'200' if q else '30,000'} messages per producer",
                      4, 20, 256, 200 if q else 30000, slow=1, idle_timeout=5.0, outbox=4 * 1024 * 1024),
        "D": Workload("D", f"{'500' if q else '10,000'} idle connections, then one 64-byte broadcast", 1,
                      500 if q else 10000, 64, 1, idle_timeout=20.0,
                      servers=["ours-loop", "ours-broadcast", "sws-lock", "websockets-asyncio", "websockets-sync", "raw"]),
        "E": Workload("E", "latency at a fixed rate (65 k deliveries/s), 4 producers -> 20 clients", 4, 20, 256,
                      100 if q else 1600, rate=65000.0, latency=True,
                      servers=["ours-loop", "ours-broadcast", "sws-lock", "websockets-asyncio", "websockets-sync", "raw"]),
        # No rate of its own: the cli sets it, to half of ours' send() loop A median from the same invocation or --e2-rate.
        "E2": Workload("E2", "latency at half of ours' send() loop peak in A, 4 producers -> 20 clients", 4, 20, 256,
                       500 if q else 12000, rate=0.0, latency=True, servers=["ours-loop", "ours-broadcast", "raw"]),
    }


def _pinned(cpu: int):  # type: ignore[no-untyped-def]
    def pin() -> None:
        try:
            os.sched_setaffinity(0, {cpu % os.cpu_count()})  # type: ignore[operator]
        except (AttributeError, OSError):
            pass

    return pin


def _line(proc: subprocess.Popen, timeout: float) -> dict:
    """Read one JSON line from a child, with a deadline (children may stall: that is a result)."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(min(1.0, max(0.0, deadline - time.monotonic()))):
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise RuntimeError(f"child exited: {proc.stderr.read()[-500:] if proc.stderr else ''}")  # type: ignore[union-attr]
            return json.loads(line)
    raise TimeoutError(f"no answer within {timeout:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            proc.stdin.write('{"cmd": "quit"}\n')  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
            proc.wait(3)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            proc.kill()  # only processes this harness started, by PID
            proc.wait()


PLAIN = "-plain"  # a kind with this suffix runs without TLS even in a --tls run


def run_once(kind: str, w: Workload, tls: TLSFiles | None = None) -> dict:
    """One server, one workload, one run. Returns the figures (or an error/stall note).

    ``tls``: the server serves wss:// with ``tls.cert``/``tls.key`` and the client verifies it against ``tls.ca``.
    """
    if kind.endswith(PLAIN):  # ours without TLS in a --tls run: the baseline of the TLS ratios
        kind, tls = kind.removesuffix(PLAIN), None
    args = ["--outbox", str(w.outbox)] if w.outbox is not None and kind.startswith("ours") else []
    if tls is not None:
        args += ["--certfile", str(tls.cert), "--keyfile", str(tls.key)]
    server = subprocess.Popen([PY, "-m", "bench.servers", kind, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, preexec_fn=_pinned(SERVER_CPU))
    client = None
    try:
        port = _line(server, 20)["ready"]

        def ask(cmd: dict, timeout: float = 20) -> dict:
            server.stdin.write(json.dumps(cmd) + "\n")  # type: ignore[union-attr]
            server.stdin.flush()  # type: ignore[union-attr]
            return _line(server, timeout)

        base = ask({"cmd": "stats"})
        expect = w.producers * w.count
        client = subprocess.Popen(
            [PY, "-m", "bench.client", "--port", str(port), "--connections", str(w.clients), "--expect", str(expect),
             "--size", str(w.size), "--slow", str(w.slow), "--idle-timeout", str(w.idle_timeout)]
            + (["--latency"] if w.latency or w.name == "D" else [])
            + (["--tls", "--cafile", str(tls.ca)] if tls is not None else []),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_pinned(CLIENT_CPU))
        try:
            connect_s = _line(client, 180).get("connect_s")
        except (RuntimeError, TimeoutError) as exc:
            return {"error": f"clients could not connect: {exc}"}
        deadline = time.monotonic() + 60
        stats = ask({"cmd": "stats"})
        while stats["connections"] < w.clients + w.slow and time.monotonic() < deadline:
            time.sleep(0.1)
            stats = ask({"cmd": "stats"})
        if stats["connections"] < w.clients + w.slow:
            return {"error": f"only {stats['connections']} of {w.clients + w.slow} connections accepted"}
        connected = stats
        per_producer_rate = w.rate / (w.clients * w.producers) if w.rate else 0
        stalled = False
        try:
            produced = ask({"cmd": "produce", "producers": w.producers, "count": w.count, "size": w.size,
                            "rate": per_producer_rate}, timeout=w.idle_timeout + 120)
        except TimeoutError:
            stalled, produced = True, {}
        got = _line(client, w.idle_timeout + 150)
        after = ask({"cmd": "stats"}, timeout=10) if not stalled else {}
        deliveries = got["messages"]
        start_ns = produced.get("start_ns") or got["first_ns"]
        seconds = max(1e-9, (got["last_ns"] - start_ns) / 1e9) if got["last_ns"] else None
        result = {
            "deliveries": deliveries,
            "expected": expect * w.clients,
            "complete_clients": got["complete"],
            "violations": got["violations"],
            "seconds": seconds,
            "msg_per_s": deliveries / seconds if seconds else 0.0,
            "mb_per_s": deliveries * w.size / seconds / 1e6 if seconds else 0.0,
            "cpu_us_per_msg": (after["cpu"] - produced["cpu_at_start"]) / deliveries * 1e6 if after and deliveries else None,
            "peak_rss_mb": (after or stats).get("peak_rss_kib", 0) / 1024,
            "rss_per_conn_kib": (connected["rss_kib"] - base["rss_kib"]) / (w.clients + w.slow),
            "threads": connected["threads"],
            # WebSocket handshakes (TLS first with --tls) per second, the client opening 200 at a time
            "handshakes_per_s": (w.clients + w.slow) / connect_s if connect_s else None,
            "max_send_ms": produced["max_send"] * 1000 if produced else None,
            "p999_send_ms": produced["p999_send"] * 1000 if produced else None,
            "latency_ms": got["latency_ms"],
            "stalled": stalled or got["complete"] < w.clients,
            "closed_by_policy": (after or {}).get("closed_by_policy"),  # ours only: the server's count
            "healthy_closed": got.get("closed_early", 0),  # reading clients closed before they had every message
        }
        return result
    except (RuntimeError, TimeoutError, KeyError) as exc:
        return {"error": str(exc)}
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        _stop(server)


def median_of(runs: list[dict], key: str) -> tuple[float | None, float | None, float | None]:
    values = [r[key] for r in runs if r.get(key) is not None and "error" not in r]
    if not values:
        return None, None, None
    return statistics.median(values), min(values), max(values)
