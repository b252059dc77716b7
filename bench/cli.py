"""``make bench`` / ``make bench-quick``: run the workloads, print ratios, write bench/results.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from typing import TYPE_CHECKING

from .echo_bench import R_POINTS, R_REFERENCE
from .run import FLASK_WORKLOADS, PLAIN, SLOW_READERS, Workload, median_of, run_once, workloads
from .servers import TLS_KINDS

if TYPE_CHECKING:
    from tests.tls import TLSFiles

PEERS = ["sws-lock", "websockets-asyncio", "websockets-sync"]
OURS = ["ours-loop", "ours-broadcast"]
FLASK_PEERS = ["flask-sock"]  # F and FD: the same Flask app on flask-sock; ours there is wsrace.flask
FLASK_OURS = ["wsrace-flask", "wsrace-flask-detached"]
LABEL = {
    "ours-loop": "ours: send() loop",
    "ours-broadcast": "ours: broadcast",
    "ours-loop-nometrics": "ours: loop, metrics off",
    "ours-broadcast-nometrics": "ours: bcast, metrics off",
    "sws-lock": "simple-websocket+lock",
    "websockets-asyncio": "websockets asyncio",
    "websockets-sync": "websockets.sync",
    "raw": "raw reference",
    "direct": "direct (info only)",
    "ours-loop" + PLAIN: "ours: send() loop, ws://",
    "flask-sock": "flask-sock",
    "wsrace-flask": "wsrace.flask",
    "wsrace-flask-detached": "wsrace.flask detach()",
    "ours-pool": "ours: /echo (pool)",
    "ours-inline": "ours: /echo-inline (IO)",
    "flask-sock-werkzeug": "flask-sock (Werkzeug)",
    "picows": "picows",
}
# R: ours against websockets asyncio (issue 22's targets)
R_TARGETS = {"ours-pool": 1.0, "ours-inline": 1.5}
# per workload: (metric key, unit, higher is better)
HEADLINE = {
    "A": ("msg_per_s", "msg/s", True),
    "B": ("mb_per_s", "MB/s", True),
    "C": ("msg_per_s", "msg/s healthy", True),
    **{name: ("msg_per_s", "msg/s healthy", True) for name, _, _ in SLOW_READERS},
    "D": ("seconds", "s to last client", False),
    "E": ("p99_ms", "ms p99", False),
    "E2": ("p99_ms", "ms p99", False),
    "F": ("msg_per_s", "msg/s", True),
    "FD": ("rss_mib", "MiB RSS", False),
    **{name: ("rt_per_s", "round trips/s", True) for name, _, _ in R_POINTS},
}


def fmt(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000 and digits == 0:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def summarize(name: str, runs: dict[str, list[dict]]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for kind, rs in runs.items():
        for r in rs:
            if r.get("latency_ms"):
                r["p50_ms"], r["p99_ms"], r["max_ms"] = (r["latency_ms"].get(k) for k in ("p50", "p99", "max"))
        row: dict[str, object] = {"runs": rs}
        for key in ("msg_per_s", "mb_per_s", "cpu_us_per_msg", "peak_rss_mb", "rss_per_conn_kib", "threads", "seconds",
                    "handshakes_per_s",
                    "max_send_ms", "p999_send_ms", "p50_ms", "p99_ms", "max_ms", "slow_bytes", "slow_read_bps",
                    "slow_closed_s", "rss_mib", "base_rss_mib", "idle_rss_mib", "base_threads", "idle_threads",
                    "gunicorn_threads", "served", "opened", "rt_per_s", "cpu_us_per_rt"):
            med, lo, hi = median_of(rs, key)
            row[key] = {"median": med, "min": lo, "max": hi}
        row["errors"] = [r["error"] for r in rs if "error" in r]
        row["skipped"] = [r["skipped"] for r in rs if "skipped" in r]  # R: a server that cannot run here (a note)
        row["stalled_runs"] = sum(1 for r in rs if r.get("stalled"))
        row["violations"] = sum(r.get("violations", 0) for r in rs)
        row["corrupt_runs"] = sum(1 for r in rs if r.get("violations"))
        row["incomplete_runs"] = sum(1 for r in rs if r.get("incomplete"))  # F: not every message delivered
        row["unserved"] = [r.get("unserved") for r in rs if r.get("unserved") is not None]  # FD: no echo
        row["closed_by_policy"] = [r.get("closed_by_policy") for r in rs]
        row["closed_too_slow"] = [r.get("closed_too_slow") for r in rs]
        row["closed_stalled"] = [r.get("closed_stalled") for r in rs]
        row["slow_closed"] = [r.get("slow_closed") for r in rs]
        row["deadline_runs"] = sum(1 for r in rs if r.get("deadline_hit"))
        row["healthy_closed"] = [r.get("healthy_closed") for r in rs]
        row["delivered"] = [(r.get("deliveries"), r.get("expected")) for r in rs if "error" not in r]
        out[kind] = row
    return out


def ratio(a: float | None, b: float | None, higher_better: bool) -> float | None:
    if not a or not b:
        return None
    return a / b if higher_better else b / a


def slow_fate(row: dict) -> str:
    """Ours: what the server's policy did to the slow client, run by run (its stats: closed_too_slow, closed_stalled)."""
    too_slow = stalled = not_closed = 0
    for slow_n, stalled_n, policy_n in zip(row["closed_too_slow"], row["closed_stalled"], row["closed_by_policy"], strict=True):
        if slow_n:
            too_slow += 1
        elif stalled_n:
            stalled += 1
        elif policy_n is not None:
            not_closed += 1
    runs = len(row["closed_by_policy"])
    return f"slow client closed too slow in {too_slow}/{runs} runs, stalled {stalled}/{runs}, not closed {not_closed}/{runs}"


def slow_reader(row: dict) -> str:
    """What the slow reader read (median rate it achieved) and the close it saw, from the client's side."""
    got, bps = row["slow_bytes"]["median"], row["slow_read_bps"]["median"]
    kb = got / 1e3 if got is not None else None
    note = f"slow client read {fmt(kb, 0 if kb is None or kb >= 100 else 1)} kB at {fmt(bps and bps / 1e3, 0)} kB/s"
    seen = [c for c in row["slow_closed"] if c]
    if seen:
        code, reason = seen[0]
        note += (f", saw close {code} '{reason[:40]}' in {len(seen)}/{len(row['slow_closed'])} runs "
                 f"({fmt(row['slow_closed_s']['median'], 1)} s after the start)")
    else:
        note += ", saw no close frame"
    return note


def flask_notes(w: Workload, row: dict) -> list[str]:
    """F and FD: gunicorn's --threads, the worker's threads and RSS; FD: how many of the connections were served."""
    runs = len(row["runs"])
    med = {k: row[k]["median"] for k in ("gunicorn_threads", "threads", "peak_rss_mb", "rss_mib", "base_rss_mib",
                                         "rss_per_conn_kib", "base_threads", "idle_threads", "idle_rss_mib", "served",
                                         "opened", "handshakes_per_s")}
    if w.name == "F":
        notes = [f"cpu {fmt(row['cpu_us_per_msg']['median'], 2)} us/msg", f"--threads {fmt(med['gunicorn_threads'])}",
                 f"worker threads {fmt(med['threads'])} (connections open)", f"peak RSS {fmt(med['peak_rss_mb'], 0)} MB"]
        healthy = [n for n in row["healthy_closed"] if n is not None]
        notes.append(f"clients closed early {max(healthy) if healthy else '-'}")
        if row["incomplete_runs"]:
            worst = min((d, e) for d, e in row["delivered"])
            notes.append(f"INCOMPLETE in {row['incomplete_runs']}/{runs} runs (worst {worst[0]:,} of {worst[1]:,})")
        return notes
    unserved = max(row["unserved"]) if row["unserved"] else None
    served = (f"served {fmt(med['served'])}/{w.clients:,}" if not unserved
              else f"NOT SERVED: {unserved:,} of {w.clients:,} got no echo (worst run)")
    return [f"--threads {fmt(med['gunicorn_threads'])}",
            f"worker threads {fmt(med['threads'])} (idle {fmt(med['idle_threads'])}, {fmt(med['base_threads'])} before)",
            f"RSS {fmt(med['rss_mib'], 1)} MiB (idle {fmt(med['idle_rss_mib'], 1)}, {fmt(med['base_rss_mib'], 1)} before: "
            f"{fmt(med['rss_per_conn_kib'], 1)} KiB/conn)",
            served, f"{fmt(med['handshakes_per_s'])} handshakes/s"]


def echo_notes(kind: str, row: dict, r: float | None) -> list[str]:
    """R: latency per round trip, the server's CPU per round trip and RSS, ours' target; skips and failures."""
    if row["skipped"]:
        return [f"skipped: {row['skipped'][0]}"]
    notes = [f"p50 {fmt(row['p50_ms']['median'], 3)} ms, p99 {fmt(row['p99_ms']['median'], 3)} ms",
             f"cpu {fmt(row['cpu_us_per_rt']['median'], 1)} us/round trip",
             f"peak RSS {fmt(row['peak_rss_mb']['median'], 0)} MB"]
    if kind in R_TARGETS and r is not None:
        notes.append(f"target {R_TARGETS[kind]:.1f}x: {'met' if r >= R_TARGETS[kind] else 'MISSED'}")
    closed = [n for n in row["healthy_closed"] if n]
    if closed:
        notes.append(f"server closed {max(closed)} connection(s) mid-run")
    wrong = [run["violation"] for run in row["runs"] if run.get("violation")]
    if wrong:
        notes.append(f"first bad echo: {wrong[0][:60]}")
    return notes


def print_workload(w: Workload, summary: dict[str, dict], a_summary: dict[str, dict] | None) -> None:
    key, unit, higher = HEADLINE[w.name]
    print(f"\n== {w.name}: {w.title}")
    peer_kinds = FLASK_PEERS if w.name in FLASK_WORKLOADS else [R_REFERENCE] if w.echo else PEERS
    peers = [summary[p][key]["median"] for p in peer_kinds if p in summary and summary[p][key]["median"]]
    best_peer = (max(peers) if higher else min(peers)) if peers else None
    rcol = 12 if w.echo else 11
    print(f"{'server':<24} {unit:>16} {'min-max':>21} {'x ws asyncio' if w.echo else 'x best peer':>{rcol}}  notes")
    for kind, row in summary.items():
        m = row[key]
        notes = []
        if w.echo:
            notes = echo_notes(kind, row, ratio(m["median"], best_peer, higher) if kind not in peer_kinds else None)
        elif w.name in FLASK_WORKLOADS:
            notes = flask_notes(w, row)
        elif w.name in ("A", "E", "E2") or w.slow:
            notes.append(f"cpu {fmt(row['cpu_us_per_msg']['median'], 2)} us/msg")
        off = summary.get(f"{kind}-nometrics", {}).get(key, {}).get("median")
        if w.name == "A" and kind in OURS and m["median"] and off:
            off_cpu = summary[f"{kind}-nometrics"]["cpu_us_per_msg"]["median"]
            on_cpu = row["cpu_us_per_msg"]["median"]
            cpu = f", cpu {100 * (on_cpu / off_cpu - 1):+.1f} %" if on_cpu and off_cpu else ""
            notes.append(f"metrics cost {100 * (1 - m['median'] / off):+.1f} % msg/s{cpu}")
        if w.name == "A" and kind in OURS and m["median"]:
            for other, label in (("sws-lock", "simple-websocket+lock"), ("raw", "raw")):
                if other in summary and summary[other][key]["median"]:
                    notes.append(f"{m['median'] / summary[other][key]['median']:.2f}x {label}")
        if w.name not in FLASK_WORKLOADS and not w.echo:
            notes.append(f"peak RSS {fmt(row['peak_rss_mb']['median'], 0)} MB")
        if w.name == "B" and row["delivered"]:
            got = min(d for d, _ in row["delivered"])
            notes.append(f"delivered {'all' if all(d == e for d, e in row['delivered']) else f'{got:,} (worst run)'}")
        if w.slow:  # C and its slow-reader variants
            notes.append(f"longest send() {fmt(row['max_send_ms']['median'], 2)} ms, p99.9 {fmt(row['p999_send_ms']['median'], 3)} ms")
            if a_summary and kind in a_summary and a_summary[kind]["msg_per_s"]["median"] and m["median"]:
                notes.append(f"{100 * m['median'] / a_summary[kind]['msg_per_s']['median']:.0f} % of A")
            if kind in OURS or kind == "direct":
                notes.append(slow_fate(row))
            if w.slow_rate:
                notes.append(slow_reader(row))
            if row["deadline_runs"]:
                notes.append(f"cut at the {w.deadline:.0f} s deadline in {row['deadline_runs']} run(s)")
        if w.name == "D":
            notes.append(f"{fmt(row['rss_per_conn_kib']['median'], 1)} KiB RSS/conn, {fmt(row['threads']['median'])} threads, "
                         f"{fmt(row['handshakes_per_s']['median'])} handshakes/s")
        plain = summary.get("ours-loop" + PLAIN, {}).get(key, {}).get("median")
        if kind in OURS and plain and m["median"]:
            notes.append(f"{ratio(m['median'], plain, higher):.2f}x ours over ws://")
        if w.name in ("E", "E2"):
            notes.append(f"p50 {fmt(row['p50_ms']['median'], 2)} ms, max {fmt(row['max_ms']['median'], 2)} ms")
        # Clients the policy closed (ours: the server's count; the peers have no such policy) and the reading
        # clients that saw their connection closed before they had every message (any server).
        by_policy = [n for n in row["closed_by_policy"] if n is not None]
        healthy = [n for n in row["healthy_closed"] if n is not None]
        closed = f"closed by policy {max(by_policy)}" if by_policy else "closed by policy -"
        if w.name not in FLASK_WORKLOADS and not w.echo:
            notes.append(f"{closed}, healthy clients closed {max(healthy) if healthy else '-'}")
        if row["stalled_runs"]:
            notes.append(f"STALLED in {row['stalled_runs']} run(s)")
        if row["violations"]:
            notes.append(f"CORRUPTED: {row['violations']} bad frames seen, in {row['corrupt_runs']}/{len(row['runs'])} runs")
        if row["errors"]:
            notes.append(f"errors: {row['errors'][0][:80]}")
        r = ratio(m["median"], best_peer, higher) if kind not in peer_kinds else None
        rng = f"{fmt(m['min'], 2 if not higher else 0)}-{fmt(m['max'], 2 if not higher else 0)}"
        digits = 0 if higher else 3
        print(f"{LABEL[kind]:<24} {fmt(m['median'], digits):>16} {rng:>21} {fmt(r, 2) + 'x' if r else '':>{rcol}}  "
              f"{'; '.join(notes)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description="the fixed server against its peers, as ratios")
    p.add_argument("--quick", action="store_true", help="every workload once at small size (smoke check)")
    p.add_argument("--runs", type=int, default=None, help="runs per server per workload (default: 3, quick: 1)")
    p.add_argument("--workloads", default="A,B,C,C20K,C200K,C1M,D,E,E2,F,FD,R1,R8,R1L,R8L")
    p.add_argument("--servers", default=None, help="only these kinds, comma-separated (default: each workload's list)")
    p.add_argument("--e2-rate", type=float, default=None, metavar="DELIVERIES_PER_S",
                   help="E2's fixed rate (default: half of ours' send() loop median in A, which must then run first in the same "
                        "invocation)")
    p.add_argument("--output", default=None, help="default: bench/results.json (quick: bench/results-quick.json; "
                                                  "--tls: results-tls.json, results-quick-tls.json)")
    p.add_argument("--tls", action="store_true",
                   help=f"servers serve wss:// with a throwaway certificate (tests/tls.py) and the client verifies it; "
                        f"only the kinds that can ({', '.join(TLS_KINDS)}) unless --servers names others")
    ns = p.parse_args(argv)
    names = [n.strip() for n in ns.workloads.split(",") if n.strip()]
    if "E2" in names and ns.e2_rate is None and ("A" not in names or names.index("A") > names.index("E2")):
        p.error("E2 runs at half of ours' send() loop rate in A: run A before it (--workloads A,...,E2) or give --e2-rate")
    if ns.tls:
        with tempfile.TemporaryDirectory(prefix="wsrace-bench-tls-") as directory:
            from tests.tls import make_tls_files

            return _main(ns, make_tls_files(directory))
    return _main(ns, None)


def _main(ns: argparse.Namespace, tls: TLSFiles | None) -> int:
    if ns.output is None:
        name = ("results-quick" if ns.quick else "results") + ("-tls" if tls else "")
        ns.output = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".json")
    runs = ns.runs or (1 if ns.quick else 3)
    all_w = workloads(ns.quick)
    chosen = [all_w[n.strip()] for n in ns.workloads.split(",") if n.strip()]
    results: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "quick": ns.quick, "runs": runs, "tls": tls is not None, "workloads": {},
    }
    a_summary: dict[str, dict] | None = None
    for w in chosen:
        rate_source = ""
        if w.name == "E2":
            if ns.e2_rate is not None:
                w.rate, rate_source = ns.e2_rate, "--e2-rate"
                w.title = f"latency at a fixed rate ({w.rate:,.0f} deliveries/s, --e2-rate), 4 producers -> 20 clients"
            else:
                a_median = ((a_summary or {}).get("ours-loop") or {}).get("msg_per_s", {}).get("median")
                if not a_median:  # A ran but ours-loop has no rate (it failed, or --servers left it out): say so, do not guess
                    print("E2 skipped: A gave no send() loop rate to halve; give --e2-rate", file=sys.stderr)
                    results["workloads"][w.name] = {"title": w.title, "servers": {},  # type: ignore[index]
                                                    "skipped": "A gave no send() loop rate and no --e2-rate was given"}
                    continue
                w.rate, rate_source = a_median / 2, "half of ours-loop's A median in this run"
                w.title = f"latency at half of ours' send() loop peak in A ({w.rate:,.0f} deliveries/s), 4 producers -> 20 clients"
        if w.echo and tls:  # the round-trip client speaks plain ws:// only
            print(f"[{w.name}] skipped: R runs over ws:// only", file=sys.stderr, flush=True)
            results["workloads"][w.name] = {"title": w.title, "servers": {},  # type: ignore[index]
                                            "skipped": "R runs over plain ws:// only"}
            continue
        if ns.servers:
            w.servers = [k for k in w.servers if k in ns.servers.split(",")]
        elif tls:
            w.servers = [k for k in w.servers if k in TLS_KINDS]
            if w.name in ("A", "B") and "ours-loop" in w.servers:
                w.servers.append("ours-loop" + PLAIN)  # the TLS cost, measured in the same run
            if w.name == "D":
                w.clients = 2000 if not ns.quick else w.clients  # issue 9: RSS per idle TLS connection at 2,000
                w.title = f"{w.clients:,} idle connections, then one 64-byte broadcast"
        if tls:
            w.title += " (wss://)"
        if not w.servers:
            print(f"[{w.name}] no server to run", file=sys.stderr, flush=True)
            continue
        per_kind: dict[str, list[dict]] = {k: [] for k in w.servers}
        w_runs = ns.runs or w.runs or runs
        for i in range(w_runs):
            for kind in w.servers:  # alternate servers run by run: A B C A B C ...
                print(f"[{w.name} run {i + 1}/{w_runs}] {LABEL[kind]} ...", file=sys.stderr, flush=True)
                t0 = time.monotonic()
                r = run_once(kind, w, tls)
                per_kind[kind].append(r)
                print(f"    {time.monotonic() - t0:.1f} s {r.get('error', '')}", file=sys.stderr, flush=True)
        summary = summarize(w.name, per_kind)
        results["workloads"][w.name] = {"title": w.title, "runs": w_runs, "servers": summary}  # type: ignore[index]
        if rate_source:
            results["workloads"][w.name].update(rate=w.rate, rate_source=rate_source)  # type: ignore[index]
        print_workload(w, summary, a_summary)
        if w.name == "A":
            a_summary = summary
    with open(ns.output, "w") as f:
        json.dump(results, f, indent=1, default=str)
    print(f"\nwrote {ns.output}")
    # Timings never fail the run; a broken harness or a corrupted stream from a correct server does.
    problems = []
    for name, wl in results["workloads"].items():  # type: ignore[attr-defined]
        for kind, row in wl["servers"].items():
            # A peer failing (websockets.sync at 10,000 connections) is a result; ours failing is not.
            if row["errors"] and kind in (*OURS, *FLASK_OURS, *R_TARGETS, "raw"):
                problems.append(f"{name}/{kind}: {row['errors'][0]}")
            # flask-sock tearing frames is the bug these workloads compare against: a result, counted and shown.
            if row["violations"] and kind not in ("direct", *FLASK_PEERS):
                problems.append(f"{name}/{kind}: {row['violations']} corrupted frames")
            if kind in FLASK_OURS and (row["incomplete_runs"] or any(row["unserved"])):
                problems.append(f"{name}/{kind}: not every message delivered (F) or connection served (FD)")
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if problems else 0
