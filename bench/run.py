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

from .servers import KINDS, NO_METRICS

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
    slow_rate: float = 0.0  # bytes/s each slow client reads; 0 = it never reads
    rate: float = 0.0  # deliveries per second in all; 0 = as fast as possible
    latency: bool = False
    idle_timeout: float = 10.0
    outbox: int | None = None  # ours' Limits.max_queue_bytes; None: the default (16 MiB)
    deadline: float = 0.0  # the client ends the run this long after its connections are open; 0 = none
    servers: list[str] = field(default_factory=lambda: list(KINDS))
    echo: bool = False  # R: echo round trips (bench/echo_bench.py), ``clients`` connections of ``size`` bytes
    seconds: float = 0.0  # R: measured seconds per run (after a warm-up)
    runs: int = 0  # runs per server; 0: the command's (--runs, else 3; --quick: 1)


# The slow-reader variants of C: (workload, label, bytes/s the slow client reads).
SLOW_READERS = [("C20K", "20 KB/s", 20e3), ("C200K", "200 KB/s", 200e3), ("C1M", "1 MB/s", 1e6)]


def workloads(quick: bool) -> dict[str, Workload]:
    from .echo_bench import r_workloads  # here: echo_bench imports this module

    q = quick
    return {
        "A": Workload("A", "fan-out, 256 B, 4 producers -> 20 clients", 4, 20, 256, 200 if q else 5000,
                      servers=[*KINDS[:2], *NO_METRICS, *KINDS[2:]]),
        "B": Workload("B", "large, 64 KiB, 4 producers -> 4 clients", 4, 4, 65536, 20 if q else 400),
        # The case: 30,000 messages per producer; the never-reading client's share (31 MB) overflows
        # ours' 4 MiB outbox many times over: a fan-out closes it after Limits.fanout_wait (0.1 s).
        "C": Workload("C", f"slow consumer: A plus one client that never reads, {'200' if q else '30,000'} messages per producer",
                      4, 20, 256, 200 if q else 30000, slow=1, idle_timeout=5.0, outbox=4 * 1024 * 1024),
        # C with a client that reads, slowly: its share of the feed (31 MB) takes 26 min at 20 KB/s, 31 s at 1 MB/s, so
        # a server that paces every client to it makes progress too slowly to finish and too steadily for the idle
        # timeout: the deadline (from the connections' opening) ends the run.
        **{name: Workload(name, f"slow reader: A plus one client reading {label}, {'200' if q else '30,000'} messages per producer",
                          4, 20, 256, 200 if q else 30000, slow=1, slow_rate=rate, idle_timeout=5.0, outbox=4 * 1024 * 1024,
                          deadline=10.0 if q else 30.0)
           for name, label, rate in SLOW_READERS},
        "D": Workload("D", f"{'500' if q else '10,000'} idle connections, then one 64-byte broadcast", 1,
                      500 if q else 10000, 64, 1, idle_timeout=20.0,
                      servers=["ours-loop", "ours-broadcast", "sws-lock", "websockets-asyncio", "websockets-sync", "raw"]),
        "E": Workload("E", "latency at a fixed rate (65 k deliveries/s), 4 producers -> 20 clients", 4, 20, 256,
                      100 if q else 1600, rate=65000.0, latency=True,
                      servers=["ours-loop", "ours-broadcast", "sws-lock", "websockets-asyncio", "websockets-sync", "raw"]),
        # No rate of its own: the cli sets it, to half of ours' send() loop A median from the same invocation or --e2-rate.
        "E2": Workload("E2", "latency at half of ours' send() loop peak in A, 4 producers -> 20 clients", 4, 20, 256,
                       500 if q else 12000, rate=0.0, latency=True, servers=["ours-loop", "ours-broadcast", "raw"]),
        # The same Flask app (bench/flask_app.py) under gunicorn, flask-sock against wsrace.flask (bench/flask_bench.py).
        "F": Workload("F", f"Flask under gunicorn (gthread, 32 threads): a ws.send() loop per client on a pool of 8, "
                           f"256 B, {'500' if q else '10,000'} messages -> 20 clients", 1, 20, 256, 500 if q else 10000,
                      servers=["flask-sock", "wsrace-flask"]),
        "FD": Workload("FD", f"Flask under gunicorn: {'200' if q else '1,000'} idle connections (attached echo: "
                             f"--threads {'300' if q else '1100'}; detached: --threads 4), then one echo each", 1,
                       200 if q else 1000, 64, 1, servers=["flask-sock", "wsrace-flask", "wsrace-flask-detached"]),
        # R1, R8, R1L, R8L: echo round trips, 1 or 8 connections x 256 B or 64 KiB (bench/echo_bench.py).
        **r_workloads(q),
    }


FLASK_WORKLOADS = ("F", "FD")  # run by bench/flask_bench.py: gunicorn, not bench.servers


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
    if w.name in FLASK_WORKLOADS:
        from .flask_bench import run_flask

        return run_flask(kind, w)
    if w.echo:  # plain ws:// only: the cli skips R in a --tls run
        from .echo_bench import run_echo

        return run_echo(kind, w)
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
             "--size", str(w.size), "--slow", str(w.slow), "--slow-rate", str(w.slow_rate),
             "--idle-timeout", str(w.idle_timeout), "--deadline", str(w.deadline)]
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
        # With a deadline, the producers of a server that paces them to the slow reader return once the client
        # closes its sockets at the deadline.
        produce_timeout = w.idle_timeout + 120 if not w.deadline else w.deadline + 30
        try:
            produced = ask({"cmd": "produce", "producers": w.producers, "count": w.count, "size": w.size,
                            "rate": per_producer_rate}, timeout=produce_timeout)
        except TimeoutError:
            stalled, produced = True, {}
        got = _line(client, w.idle_timeout + 150 if not w.deadline else w.deadline + 60)
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
            # Cut at the deadline: paced (progress, too slow to finish in time), not stalled.
            "deadline_hit": got.get("deadline_hit", False),
            "stalled": stalled or (got["complete"] < w.clients and not got.get("deadline_hit")),
            "closed_by_policy": (after or {}).get("closed_by_policy"),  # ours only: the server's count
            "closed_too_slow": (after or {}).get("closed_too_slow"),  # ours: fan-out members a full queue behind
            "closed_stalled": (after or {}).get("closed_stalled"),  # ours: full queue, nothing taken for stall_timeout
            "healthy_closed": got.get("closed_early", 0),  # reading clients closed before they had every message
        }
        if w.slow_rate:  # what the slow readers read, and the close they saw (from the client)
            slow = got.get("slow") or []
            ends = [s.get("close_ns") or s.get("end_ns") for s in slow]
            result.update({
                "slow_bytes": got.get("slow_bytes"),
                "slow_read_bps": statistics.mean(s["read_bps"] for s in slow if s.get("read_bps")) if any(
                    s.get("read_bps") for s in slow) else None,
                "slow_closed": got.get("slow_closed"),  # [code, reason] of the first slow client's close frame, if it got that far
                "slow_ended": [s.get("end") for s in slow],  # "eof", "reset" or None (still open when the run ended)
                # seconds from the producers' start until the first slow client saw its close frame or its stream end
                "slow_closed_s": (ends[0] - start_ns) / 1e9 if ends and ends[0] and start_ns else None,
            })
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
