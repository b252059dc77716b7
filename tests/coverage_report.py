"""``python -m tests.coverage_report [--floor]``: what ``make test`` executed of ``server/`` and ``repro/``.

Reads the combined coverage.py data (every test process and every Python
process the tests started) and prints branch and line coverage per package
and the files with the most branches left. ``--floor``: exit 1 if a package's
branch coverage is below its floor in :data:`FLOORS` — the figure measured
when the floor was last raised, so it can only rise (raise it when the suite
covers more; never lower it to make a change pass).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict

# Branch coverage, percent. Measured 2026-12-05 in three runs: server 88.6 each time, repro 79.8-80.9 (which
# branches of the repro run depends on what the races produce): the floors sit under the lowest run.
FLOORS = {"server": 87.5, "repro": 78.5}
WORST = 12


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.coverage_report", description=__doc__.split("\n\n")[0])
    p.add_argument("--floor", action="store_true", help="fail if a package is below its floor")
    args = p.parse_args(argv)
    out = "reports/coverage/coverage.json"
    subprocess.run([sys.executable, "-m", "coverage", "json", "-q", "-o", out], check=True)
    with open(out) as f:
        files = json.load(f)["files"]
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # branches, covered, statements, covered
    for path, data in files.items():
        s = data["summary"]
        t = totals[path.split("/")[0]]
        t[0] += s["num_branches"]
        t[1] += s["covered_branches"]
        t[2] += s["num_statements"]
        t[3] += s["covered_lines"]
    print("coverage of make coverage (branches; lines), every process the tests started included:")
    below = []
    for package, (branches, covered, statements, lines) in sorted(totals.items()):
        pct = 100 * covered / branches if branches else 100.0
        floor = FLOORS.get(package, 0.0)
        print(f"  {package + '/':<8} branches {pct:5.1f} % ({covered}/{branches}); lines "
              f"{100 * lines / statements:5.1f} % ({lines}/{statements}); floor {floor:.1f} %")
        if pct + 1e-9 < floor:
            below.append(f"{package}/ branch coverage {pct:.1f} % is below its floor {floor:.1f} %")
    worst = sorted(files.items(), key=lambda kv: kv[1]["summary"]["num_branches"] - kv[1]["summary"]["covered_branches"],
                   reverse=True)[:WORST]
    print("  most branches left:", ", ".join(
        f"{path} {d['summary']['num_branches'] - d['summary']['covered_branches']}" for path, d in worst))
    print("  per file: .venv/bin/python -m coverage report (or html)")
    if args.floor and below:
        for line in below:
            print(f"COVERAGE FLOOR: {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
