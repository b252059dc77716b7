"""Workload R: echo round trips (request/response) against each server, one point per sub-workload.

R1, R8, R1L, R8L: 1 or 8 connections, 256 B or 64 KiB binary messages. The
server runs in its own process (``python -m bench.servers KIND``, pinned to
the server CPU, on a free port, stopped by PID); ``bench.echo_client`` (pinned
to the client CPU) keeps one message in flight per connection and counts
round trips for a fixed time after a short warm-up. The server's CPU and RSS
come from its ``stats`` answers before and after the client's run.

Kinds here are what the client talks to: ``ours-pool`` and ``ours-inline``
are the same ``ours-echo`` server process (the demo app of ``python -m
server``) reached on ``/echo`` (worker pool) and ``/echo-inline`` (IO thread).
"""

from __future__ import annotations

import json
import subprocess

from .run import CLIENT_CPU, PY, SERVER_CPU, Workload, _line, _pinned, _stop

# kind -> (bench.servers kind, request path)
ECHO_SERVERS = {
    "ours-pool": ("ours-echo", "/echo"),
    "ours-inline": ("ours-echo", "/echo-inline"),
    "websockets-asyncio": ("websockets-asyncio", "/"),
    "websockets-sync": ("websockets-sync", "/"),
    "flask-sock-werkzeug": ("flask-sock-werkzeug", "/echo"),
    "picows": ("picows", "/"),
}
R_KINDS = list(ECHO_SERVERS)
R_REFERENCE = "websockets-asyncio"  # R's ratios are against it (issue 22: pool >= 1.0x, inline >= 1.5x)
# (workload, connections, bytes per message)
R_POINTS = [("R1", 1, 256), ("R8", 8, 256), ("R1L", 1, 65536), ("R8L", 8, 65536)]
R_WARMUP = 0.15  # seconds of round trips the client does not count, per run (the pools' threads start, ...)


def r_workloads(quick: bool) -> dict[str, Workload]:
    """Full size: 0.75 s measured per run, 5 runs alternated (3.75 s per server and point, about 2.5 min for the
    four points and six servers with start-up: a round trip's rate moves by 10-15 % between runs on a shared
    2-core machine, and the targets are ratios); quick: 0.4 s, once (about 20 s)."""
    seconds = 0.4 if quick else 0.75
    return {name: Workload(name, f"echo round trips, {n} connection{'s' if n > 1 else ''} x "
                                 f"{'256 B' if size == 256 else '64 KiB'}, one message in flight each, "
                                 f"{seconds:g} s per run", 0, n, size, 0, echo=True, seconds=seconds,
                             servers=list(R_KINDS), runs=0 if quick else 5)
            for name, n, size in R_POINTS}


def run_echo(kind: str, w: Workload) -> dict:
    """One server, one R point, one run: round trips/s, latency, the server's CPU per round trip and RSS.

    ``{"skipped": ...}``: the server cannot run this point here (picows not installed; the demo app has no
    ``/echo-inline``), a note rather than an error.
    """
    server_kind, path = ECHO_SERVERS[kind]
    server = subprocess.Popen([PY, "-m", "bench.servers", server_kind], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, preexec_fn=_pinned(SERVER_CPU))
    client = None
    try:
        try:
            port = _line(server, 20)["ready"]
        except RuntimeError as exc:
            if "picows is not installed" in str(exc):
                return {"skipped": "picows is not installed (pip install picows)"}
            raise

        def ask(cmd: dict, timeout: float = 20) -> dict:
            server.stdin.write(json.dumps(cmd) + "\n")  # type: ignore[union-attr]
            server.stdin.flush()  # type: ignore[union-attr]
            return _line(server, timeout)

        base = ask({"cmd": "stats"})
        client = subprocess.Popen(
            [PY, "-m", "bench.echo_client", "--port", str(port), "--path", path, "--connections", str(w.clients),
             "--size", str(w.size), "--seconds", str(w.seconds), "--warmup", str(R_WARMUP)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_pinned(CLIENT_CPU))
        got = _line(client, w.seconds + R_WARMUP + 60)
        after = ask({"cmd": "stats"}, timeout=10)
        if "error" in got:
            if got.get("status") == 404 and kind == "ours-inline":
                return {"skipped": f"the demo app has no {path} route in this tree (404)"}
            return {"error": got["error"]}
        rounds = got["round_trips"] + got["warmup_round_trips"]  # the server's CPU covers the warm-up too
        return {
            "rt_per_s": got["rt_per_s"],
            "mb_per_s": got["mb_per_s"],
            "round_trips": got["round_trips"],
            "seconds": got["seconds"],
            "latency_ms": got["latency_ms"],
            "per_connection": got["per_connection"],
            # server CPU per round trip (all its threads, from before the client connected until it was done)
            "cpu_us_per_rt": (after["cpu"] - base["cpu"]) / rounds * 1e6 if rounds else None,
            "peak_rss_mb": after.get("peak_rss_kib", 0) / 1024,
            "threads": after.get("threads"),
            "violations": got["violations"],
            "violation": got["violation"],
            "healthy_closed": got["closed"],  # connections the server ended during the run
            "stalled": got["stalled"],
            "inline_slow": after.get("inline_slow"),  # ours: inline handlers that held the IO thread too long
        }
    except (RuntimeError, TimeoutError, KeyError) as exc:
        return {"error": str(exc)}
    finally:
        if client is not None and client.poll() is None:
            client.kill()  # only processes this harness started, by PID
            client.wait()
        _stop(server)
