"""How often, and how fast, ``wsrace-check`` with its defaults finds the bug (a measurement, not a test).

    .venv/bin/python -m bench.check_detection            # 10 checks per server, defaults
    .venv/bin/python -m bench.check_detection --checks 3 --json

Servers: the flask-sock example (replies from a pool), the same with a lock,
our fixed server's ``/echo`` and a ``websockets`` asyncio echo server. For the
affected ones it reports how many checks said CORRUPTED within 10 s and the
time to detection; for the others how many were CLEAN.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from repro.check import check
from repro.verdict import Verdict
from tests.check_servers import flask_sock_server, websockets_echo_server
from tests.helpers import running_server


@contextmanager
def _ours() -> Iterator[int]:
    with running_server() as srv:
        yield srv.port


SERVERS: dict[str, tuple[Callable[[], AbstractContextManager[int]], str, bool]] = {
    "flask-sock + pool": (lambda: flask_sock_server(lock=False), "/echo", True),
    "flask-sock + pool + lock": (lambda: flask_sock_server(lock=True), "/echo", True),
    "wsrace server /echo": (_ours, "/echo", False),
    "websockets asyncio": (websockets_echo_server, "/", False),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checks", type=int, default=10)
    p.add_argument("--json", action="store_true")
    ns = p.parse_args(argv)
    rows: list[dict[str, object]] = []
    for name, (start, path, affected) in SERVERS.items():
        verdicts, times, seconds = [], [], []
        with start() as port:
            for i in range(ns.checks):
                r = check(f"ws://127.0.0.1:{port}{path}")
                verdicts.append(r.verdict)
                seconds.append(r.seconds)
                if r.detected_after is not None:
                    times.append(r.detected_after)
                print(f"{name:<26} check {i + 1}/{ns.checks}: {r.verdict} after {r.seconds:.1f} s "
                      f"({len(r.runs)} run(s); {', '.join(r.anomalies) or 'no anomalies'})", file=sys.stderr, flush=True)
        row = {"server": name, "affected": affected, "checks": ns.checks, "verdicts": verdicts,
               "clean": verdicts.count(Verdict.CLEAN), "corrupted": verdicts.count(Verdict.CORRUPTED),
               "detected_within_10s": sum(t <= 10 for t in times),
               "detection_s_median": round(statistics.median(times), 2) if times else None,
               "detection_s_max": max(times) if times else None,
               "check_s_median": round(statistics.median(seconds), 2)}
        rows.append(row)
    if ns.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'server':<26} {'checks':>6} {'CORRUPTED':>9} {'<=10 s':>6} {'detect median/max':>18} {'CLEAN':>6}")
        for row in rows:
            det = f"{row['detection_s_median']}/{row['detection_s_max']} s" if row["detection_s_median"] is not None else "-"
            print(f"{row['server']:<26} {row['checks']:>6} {row['corrupted']:>9} {row['detected_within_10s']:>6} {det:>18} "
                  f"{row['clean']:>6}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
