"""``make mutation``: break the fix on purpose and require the regression tests to go red.

Each mutant is a textual change to a copy of the source tree. The runner first
runs the regression tests on an unmutated copy (the control: must pass), then
on each mutant (must fail), and names the test that caught each one. Exit
status 0 only if the control passed and every mutant was killed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Fast socket-free tests first: -x stops at the first failure.
TESTS = [
    "tests/test_outbox.py", "tests/test_transport.py", "tests/test_session.py", "tests/test_stall.py",
    "tests/test_flow_control.py", "tests/test_regression.py",
]


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    path: str
    old: str
    new: str
    occurrences: int
    env: tuple[tuple[str, str], ...] = ()


MUTANTS = [
    Mutant(
        "close-before-replies",
        "a client's protocol error sends the close frame at once, before the replies its earlier messages are owed",
        "server/session.py",
        "        if self.inflight:\n            self._arm(Deadline.FAIL",
        "        if False:\n            self._arm(Deadline.FAIL",
        1,
    ),
    Mutant(
        "direct-writes",
        "producers take their messages into frames and write them on their own thread instead of posting to the IO thread",
        "server/writer.py",
        "schedule=partial(loop.post, self._drain),",
        "schedule=lambda: (self._drain(), self.flush()),",
        1,
    ),
    Mutant(
        "direct-writes-no-affinity-check",
        "the same, with the write-affinity check off: only the clients' own checks can catch it",
        "server/writer.py",
        "schedule=partial(loop.post, self._drain),",
        "schedule=lambda: (self._drain(), self.flush()),",
        1,
        (("WSRACE_CHECK_AFFINITY", "0"),),
    ),
    Mutant(
        "unordered-queue",
        "the IO loop runs posted callables newest first (LIFO) instead of in the order posted",
        "server/loop.py",
        "callback = self._posted.popleft()",
        "callback = self._posted.pop()",
        1,
    ),
    Mutant(
        "lost-wakeup",
        "post() never writes the wake-up byte: posted work waits for unrelated socket activity",
        "server/loop.py",
        'self._wake_w.send(b"\\0")',
        "pass",
        1,
    ),
    Mutant(
        "partial-write-resends-head",
        "after a partial write, the rest of the head frame is offered from its first byte again",
        "server/outbox.py",
        "buffers.append(memoryview(buf)[skip:] if skip else buf)",
        "buffers.append(buf)",
        1,
    ),
    Mutant(
        "partial-write-forgets-progress",
        "a second partial write into the same frame overwrites the offset instead of adding to it",
        "server/outbox.py",
        "self._head_sent += remaining",
        "self._head_sent = remaining",
        1,
    ),
    Mutant(
        "no-backpressure",
        "a full queue never makes a producer wait (or drop): the queue grows without bound",
        "server/outbox.py",
        "if self._queued >= self.limit and not self._in_io_thread():",
        "if False:",
        1,
    ),
    Mutant(
        "stall-judged-by-the-clock",
        "a client is judged stalled by elapsed time alone, without asking its socket: a busy IO thread gets readers evicted",
        "server/writer.py",
        "if self._transport.can_write_now():",
        "if False:",
        1,
    ),
    Mutant(
        "unbounded-backlog",
        "the server-wide backlog never makes producers wait",
        "server/outbox.py",
        "if backlog.bytes >= backlog.limit and not self._in_io_thread():",
        "if False:",
        1,
    ),
]


def copy_tree(dest: str) -> None:
    for name in ("server", "repro", "tests"):
        shutil.copytree(os.path.join(ROOT, name), os.path.join(dest, name),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("setup.cfg", "pyproject.toml"):
        shutil.copy(os.path.join(ROOT, name), dest)


def run_tests(tree: str, env_extra: tuple[tuple[str, str], ...], timeout: int) -> tuple[int, str, float]:
    env = {**os.environ, "PYTHONPATH": tree, "WSRACE_CHECK_AFFINITY": "1", **dict(env_extra)}
    # Make sure the copy is what gets imported, not the installed checkout.
    where = subprocess.run([sys.executable, "-c", "import server, repro; print(server.__file__); print(repro.__file__)"],
                           cwd=tree, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(p.startswith(tree) for p in where), f"mutation run would import {where}, not the copy in {tree}"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *TESTS, "-x", "-q", "-p", "no:cacheprovider", f"--timeout={timeout}"],
        cwd=tree, env=env, capture_output=True, text=True,
    )
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


def first_failure(output: str) -> str:
    match = re.search(r"^(?:FAILED|ERROR) (\S+)(?: - (.*))?$", output, re.M)
    if not match:
        return "(no FAILED line; see output)"
    return match.group(1) + (f" — {match.group(2)[:160]}" if match.group(2) else "")


def main() -> int:
    results: list[tuple[str, bool, str]] = []
    with tempfile.TemporaryDirectory(prefix="wsrace-mutation-") as tmp:
        control = os.path.join(tmp, "control")
        copy_tree(control)
        print(f"control: unmutated copy, running {' '.join(TESTS)} ...", flush=True)
        code, output, secs = run_tests(control, (), timeout=180)
        if code != 0:
            print(output[-3000:])
            print(f"control FAILED in {secs:.0f} s: the tests must pass on the real code before mutants mean anything")
            return 1
        print(f"control: passed in {secs:.0f} s", flush=True)
        for mutant in MUTANTS:
            tree = os.path.join(tmp, mutant.name)
            copy_tree(tree)
            path = os.path.join(tree, mutant.path)
            with open(path) as f:
                source = f.read()
            found = source.count(mutant.old)
            if found != mutant.occurrences:
                print(f"mutant {mutant.name}: pattern found {found} times, expected {mutant.occurrences}: update tests/mutation.py")
                return 1
            with open(path, "w") as f:
                f.write(source.replace(mutant.old, mutant.new))
            print(f"mutant {mutant.name}: {mutant.what} ...", flush=True)
            code, output, secs = run_tests(tree, mutant.env, timeout=60)
            killed = code != 0
            caught_by = first_failure(output) if killed else "nothing: every test passed"
            print(f"  {'KILLED' if killed else 'SURVIVED'} in {secs:.0f} s by {caught_by}", flush=True)
            results.append((mutant.name, killed, caught_by))
    print()
    print(f"{'mutant':<34} {'result':<9} caught by")
    for name, killed, by in results:
        print(f"{name:<34} {'killed' if killed else 'SURVIVED':<9} {by}")
    survivors = [name for name, killed, _ in results if not killed]
    if survivors:
        print(f"\n{len(survivors)} mutant(s) survived: the regression tests would not catch {', '.join(survivors)}")
        return 1
    print(f"\nall {len(results)} mutants killed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
