"""``python -m tests.fuzz [--seconds N] [--targets a,b]`` (``make fuzz``): run every fuzz target, report.

Each target runs in its own process under libFuzzer (:mod:`tests.fuzz.run`)
for ``--seconds``, starting from its corpus in ``reports/fuzz/corpus/TARGET``
(seeded from :mod:`tests.fuzz.corpus`; what libFuzzer adds is kept, so the
next run goes on from there). Prints executions, executions/s and coverage
(libFuzzer's edges and features over the instrumented ``server``, ``repro``
and ``wsproto`` code) per target. A crash leaves its input in
``reports/fuzz/crashes/``; copy it into ``tests/fuzz/regressions/TARGET/``
so ``make test`` replays it, and fix what it found. Exit status 1 if any
target crashed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

from .corpus import seeds
from .targets import TARGETS

ROOT = Path(__file__).resolve().parents[2]
REPORTS = ROOT / "reports" / "fuzz"
STATS = re.compile(rb"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
DONE = re.compile(rb"Done (\d+) runs in (\d+) second")


def seed(target: str) -> Path:
    corpus = REPORTS / "corpus" / target
    corpus.mkdir(parents=True, exist_ok=True)
    for data in seeds(target):
        (corpus / f"seed-{hashlib.sha1(data).hexdigest()[:12]}").write_bytes(data)
    return corpus


def fuzz(target: str, seconds: int) -> dict[str, object]:
    corpus = seed(target)
    crashes = REPORTS / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    before = set(crashes.iterdir())
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", target, str(corpus), f"-max_total_time={seconds}",
         f"-artifact_prefix={crashes}/{target}-", "-print_final_stats=1", "-max_len=65536"],
        cwd=ROOT, capture_output=True, timeout=seconds + 120, env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    log = proc.stdout + proc.stderr
    (REPORTS / f"{target}.log").write_bytes(log)
    stats = STATS.findall(log)
    done = DONE.search(log)
    runs = int(done[1]) if done else (int(stats[-1][0]) if stats else 0)
    took = max(int(done[2]), 1) if done else seconds
    new = sorted(set(crashes.iterdir()) - before)
    return {"target": target, "runs": runs, "per_s": runs // took, "cov": int(stats[-1][1]) if stats else 0,
            "ft": int(stats[-1][2]) if stats else 0, "corpus": int(stats[-1][3]) if stats else 0,
            "crash": str(new[0]) if new else None, "exit": proc.returncode}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=60, help="per target (default: %(default)s)")
    p.add_argument("--targets", default=",".join(TARGETS), help="comma-separated (default: %(default)s)")
    args = p.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        p.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    if args.seconds < 1:
        p.error("--seconds must be at least 1")
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("make fuzz needs atheris (in the test extra: pip install -e '.[test]')", file=sys.stderr)
        return 2
    print(f"fuzzing {', '.join(targets)}: {args.seconds} s each (logs and corpus in {REPORTS})", flush=True)
    failed = False
    print(f"{'target':<10} {'executions':>11} {'exec/s':>8} {'coverage (edges)':>17} {'features':>9} {'corpus':>7}  result")
    for target in targets:
        r = fuzz(target, args.seconds)
        ok = r["crash"] is None and r["exit"] == 0
        failed |= not ok
        result = "ok" if ok else f"CRASH: {r['crash'] or 'exit ' + str(r['exit'])} (see {REPORTS / (target + '.log')})"
        print(f"{target:<10} {r['runs']:>11,} {r['per_s']:>8,} {r['cov']:>17,} {r['ft']:>9,} {r['corpus']:>7,}  {result}",
              flush=True)
    if failed:
        print("a target crashed: copy its input into tests/fuzz/regressions/TARGET/ (make test replays it) and fix it",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
