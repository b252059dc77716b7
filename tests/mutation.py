"""``make mutation``: break the fix on purpose and require the regression tests to go red.

Each mutant is a textual change to a copy of the source tree. The runner first
runs the regression tests on an unmutated copy (the control: must pass), then
on each mutant (must fail), and names the test that caught each one. Exit
status 0 only if the control passed and every mutant was killed.
"""

from __future__ import annotations

import argparse
import fnmatch
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
UNIT_TESTS = ["tests/unit/test_frames.py", "tests/unit/test_deflate.py", "tests/unit/test_streamformat.py", "tests/unit/test_app.py",
              "tests/unit/test_outbox.py", "tests/unit/test_writer.py", "tests/unit/test_transport.py", "tests/unit/test_session.py",
              "tests/unit/test_http_phase.py", "tests/unit/test_reader.py"]
TESTS = [*UNIT_TESTS, "tests/e2e/test_stall.py", "tests/e2e/test_flow_control.py", "tests/e2e/test_regression.py"]
# wss:// only: the five clients over TLS, then tests/e2e/test_tls.py (a mutant with its own list runs only those)
TLS_TESTS = ("tests/e2e/test_regression.py::test_fixed_server_over_wss_delivers_every_message_intact",
             "tests/e2e/test_regression.py::test_fixed_server_over_wss_under_backpressure_and_pings", "tests/e2e/test_tls.py")


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    path: str
    old: str
    new: str
    occurrences: int
    env: tuple[tuple[str, str], ...] = ()
    tests: tuple[str, ...] = ()  # the tests to run instead of TESTS (pytest paths or node ids)


MUTANTS = [
    Mutant(
        "drop-unsent-ignores-tls-retry",
        "a failing connection drops the frames a TLS send must retry with the same bytes: bad write retry, or a torn stream",
        "server/core/sendbuffer.py",
        "keep = max(self.in_flight, 1 if self._head_sent else 0)",
        "keep = 1 if self._head_sent else 0",
        1,
    ),
    Mutant(
        "close-before-replies",
        "a client's protocol error sends the close frame at once, before the replies its earlier messages are owed",
        "server/protocol/session.py",
        "        if self.inflight:\n            self._arm(Deadline.FAIL",
        "        if False:\n            self._arm(Deadline.FAIL",
        1,
    ),
    Mutant(
        "direct-writes",
        "producers take their messages into frames and write them on their own thread instead of posting to the IO thread",
        "server/connections/writer.py",
        "schedule=partial(loop.post, self.drain),",
        "schedule=lambda: (self.drain(), self.flush()),",
        1,
    ),
    Mutant(
        "direct-writes-no-affinity-check",
        "the same, with the write-affinity check off: only the clients' own checks can catch it",
        "server/connections/writer.py",
        "schedule=partial(loop.post, self.drain),",
        "schedule=lambda: (self.drain(), self.flush()),",
        1,
        (("WSRACE_CHECK_AFFINITY", "0"),),
    ),
    Mutant(
        "tls-direct-writes-no-affinity-check",
        "over wss://: producers write the SSL socket on their own thread while the IO thread reads it (no affinity check); "
        "run against the TLS tests only",
        "server/connections/writer.py",
        "schedule=partial(loop.post, self.drain),",
        "schedule=lambda: (self.drain(), self.flush()),",
        1,
        (("WSRACE_CHECK_AFFINITY", "0"),),
        TLS_TESTS,
    ),
    Mutant(
        "tls-silent-client-kept",
        "a client that never completes the TLS handshake is answered 408 into a connection that cannot carry it, and kept "
        "until the close timeout",
        "server/connections/connection.py",
        "        if not self.transport.established:  # no TLS yet: no way to send an HTTP answer",
        "        if False:",
        1,
        tests=("tests/e2e/test_tls.py",),
    ),
    Mutant(
        "unordered-queue",
        "the IO loop runs posted callables newest first (LIFO) instead of in the order posted",
        "server/core/loop.py",
        "callback = posted.popleft()",
        "callback = posted.pop()",
        1,
    ),
    Mutant(
        "reader-ignores-fragments",
        "the frame splitter decodes a plain-looking frame inside a fragmented message instead of giving it to wsproto",
        "server/protocol/reader.py",
        "and second & 0x80 and not self._fragmented",
        "and second & 0x80",
        1,
    ),
    Mutant(
        "reader-holds-partial-text",
        "the frame splitter waits for a text frame to be whole: invalid UTF-8 is no longer failed as it arrives",
        "server/protocol/reader.py",
        "if start > end or (stop > end and first == _BINARY_FIN):",
        "if start > end or stop > end:",
        1,
    ),
    Mutant(
        "lost-wakeup",
        "post() never signals the waker: posted work waits for unrelated socket activity",
        "server/core/loop.py",
        "os.eventfd_write(self._fd, 1)",
        "pass",
        1,
    ),
    Mutant(
        "partial-write-resends-head",
        "after a partial write, the rest of the head frame is offered from its first byte again",
        "server/core/sendbuffer.py",
        "buffers.append(memoryview(buf)[skip:] if skip else buf)",
        "buffers.append(buf)",
        1,
    ),
    Mutant(
        "partial-write-forgets-progress",
        "a second partial write into the same frame overwrites the offset instead of adding to it",
        "server/core/sendbuffer.py",
        "self._head_sent += remaining",
        "self._head_sent = remaining",
        1,
    ),
    Mutant(
        "no-backpressure",
        "a full queue never makes a producer wait (or drop): the queue grows without bound",
        "server/connections/outbox.py",
        "if self._queued >= self.limit and not self._in_io_thread():",
        "if False:",
        1,
    ),
    Mutant(
        "stall-judged-by-the-clock",
        "a client is judged stalled by the time since its socket refused bytes, without asking the kernel what it "
        "took since: a busy IO thread or a writability gap gets readers evicted",
        "server/connections/writer.py",
        "idle = time.monotonic() - self._transport.idle_since()",
        "idle = time.monotonic() - (self.buffer.blocked_since or 0.0)",
        1,
    ),
    Mutant(
        "stall-judged-by-writability",
        "a client is judged only by bytes its socket accepts, not by what its TCP acknowledges: a reader at 1 MB/s "
        "draining a full send buffer looks stuck for seconds and is closed as stalled",
        "server/core/transport.py",
        "        elif unacked < self._unacked:\n            self.last_progress = now",
        "        elif False:\n            self.last_progress = now",
        1,
        tests=("tests/e2e/test_stall.py", "tests/e2e/test_slow_readers.py::test_a_steady_reader_gets_the_whole_download[plain-1MB/s]"),
    ),
    Mutant(
        "fanout-paced-by-its-slowest",
        "broadcast waits for a full member like a point-to-point send: one slow reader paces the fan-out and is "
        "closed as stalled, not as too slow for the feed",
        "server/registry.py",
        "_count_send(partial(blocked.put, fanout_wait=self._fanout_wait), out, result)",
        "_count_send(blocked.put, out, result)",
        1,
        tests=("tests/e2e/test_slow_readers.py::test_one_slow_member_is_closed_as_too_slow_and_the_rest_get_everything[20KB/s-broadcast]",),
    ),
    Mutant(
        "fanout-judged-without-writing",
        "a fan-out member is judged too slow without first writing what its socket takes now: a busy IO thread "
        "gets members that read meanwhile closed",
        "server/connections/writer.py",
        "        self.flush()\n        if self._transport.closed or not outbox.full",
        "        if self._transport.closed or not outbox.full",
        1,
        tests=("tests/e2e/test_stall.py",),
    ),
    Mutant(
        "half-close-before-flushed",
        "the writer half-closes the socket as soon as a close is queued, while data and the close frame still "
        "wait in the send buffer: the client loses them",
        "server/connections/writer.py",
        "if self._shut_when_flushed and not buffer.frames and",
        "if self._shut_when_flushed and",
        1,
    ),
    Mutant(
        "busy-timeout-without-pressure",
        "the handshake sweep keeps answering 408 at the busy timeout after the pressure has gone: a slow but "
        "legitimate client loses the normal handshake timeout",
        "server/admission.py",
        "        if not self._handshaking or not self._under_pressure():",
        "        if not self._handshaking:",
        1,
        tests=("tests/unit/test_admission.py",),
    ),
    Mutant(
        "accept-backoff-never-grows",
        "every failed accept waits the shortest backoff: at the descriptor limit the loop retries accept() "
        "twenty times a second for as long as it lasts",
        "server/admission.py",
        "self._backoff = min(BACKOFF_MAX, self._backoff * 2) if self._backoff else BACKOFF_FIRST",
        "self._backoff = BACKOFF_FIRST",
        1,
        tests=("tests/unit/test_admission.py",),
    ),
    Mutant(
        "pong-late-behind-data",
        "a keepalive ping queued behind data a slow reader is still taking times out: the reader is failed with 1011",
        "server/connections/connection.py",
        "late_behind_data = self._pong_behind_data() if deadline is Deadline.PONG else None",
        "late_behind_data = None",
        1,
        tests=("tests/e2e/test_slow_readers.py::test_keepalive_waits_for_a_ping_stuck_behind_data_a_slow_reader_is_taking[plain]",),
    ),
    Mutant(
        "inline-ignored",
        "an inline handler's on_message goes to the worker pool like any other: the hops it exists to save, and "
        "its IO-thread timing guard, are gone",
        "server/connections/dispatch.py",
        'self._inline = bool(getattr(handler, "inline", False))',
        "self._inline = False",
        1,
        tests=("tests/e2e/test_inline.py",),
    ),
    Mutant(
        "pool-no-second-worker",
        "a worker that takes a job with more queued behind it does not call another: a burst waits behind a "
        "handler that blocks",
        "server/connections/pool.py",
        "wake = self._call_one_locked() if jobs and not self._looking else None",
        "wake = None",
        1,
        tests=("tests/unit/test_pool.py",),
    ),
    Mutant(
        "write-now-overtakes-the-outbox",
        "an IO-thread send is written at once even while a producer's message waits in the outbox: the inline "
        "reply overtakes a message sent before it",
        "server/connections/outbox.py",
        "if self._closed is not None or self._pending:",
        "if self._closed is not None:",
        1,
        tests=("tests/unit/test_writer.py",),
    ),
    Mutant(
        "unbounded-backlog",
        "the server-wide backlog never makes producers wait",
        "server/connections/outbox.py",
        "if backlog.bytes >= backlog.limit and not self._in_io_thread():",
        "if False:",
        1,
    ),
    # -- partial-write bookkeeping (server/core/sendbuffer.py: gather / written / drop_unsent) --
    Mutant(
        "partial-write-off-by-one-at-frame-end",
        "a write that ends exactly on a frame's last byte leaves the frame queued as 'partly written' (< became <=)",
        "server/core/sendbuffer.py",
        "if remaining < left:",
        "if remaining <= left:",
        1,
    ),
    Mutant(
        "partial-write-offset-off-by-one-across-buffers",
        "resuming a two-buffer frame (header, payload) miscounts the offset by one where it crosses into the payload",
        "server/core/sendbuffer.py",
        "skip -= len(buf)",
        "skip -= len(buf) - 1",
        1,
    ),
    Mutant(
        "partial-write-miscounts-offered",
        "after a partial write, gather() reports one byte more than its buffers hold",
        "server/core/sendbuffer.py",
        "offered = frame.length - skip",
        "offered = frame.length - skip + 1",
        1,
    ),
    Mutant(
        "one-frame-fast-path-ignores-offset",
        "a single queued frame, partly written, is offered again from its first byte (the one-frame shortcut skips the offset check)",
        "server/core/sendbuffer.py",
        "if not skip and len(queue) == 1:",
        "if len(queue) == 1:",
        1,
    ),
    Mutant(
        "budget-released-when-offered",
        "the budget of every frame offered to sendmsg comes back whether the socket took it or not (released on gather, not on written)",
        "server/core/sendbuffer.py",
        "# the socket's buffer is full now\n        if freed:\n            self.release(freed)",
        "# the socket's buffer is full now\n        if reserved:\n            self.release(reserved)",
        1,
    ),
    Mutant(
        "gather-passes-iov-max",
        "gather() offers up to twice IOV_MAX buffers in one sendmsg (the kernel refuses the call)",
        "server/core/sendbuffer.py",
        "room = (IOV_MAX - len(buffers)) // 2",
        "room = IOV_MAX - len(buffers)",
        1,
    ),
    Mutant(
        "drop-unsent-drops-started-head",
        "drop_unsent() drops the partly written head frame too: the rest of the stream starts mid-frame",
        "server/core/sendbuffer.py",
        "keep = max(self.in_flight, 1 if self._head_sent else 0)",
        "keep = self.in_flight",
        1,
    ),
    Mutant(
        "drop-unsent-restarts-started-head",
        "drop_unsent() keeps the partly written head frame but forgets how much of it went out: it is sent again from its first byte",
        "server/core/sendbuffer.py",
        "            self.frames = deque(kept)\n",
        "            self.frames = deque(kept)\n            self._head_sent = 0\n",
        1,
    ),
    # -- flow control (server/connections/outbox.py: put / release / put_shared / Backlog) --
    Mutant(
        "no-wake-on-release",
        "room coming back never wakes a waiting producer",
        "server/connections/outbox.py",
        "if self._waiters and self._queued < self.limit:",
        "if False:",
        1,
    ),
    Mutant(
        "full-check-off-by-one",
        "a queue exactly at its limit still takes messages (>= became >)",
        "server/connections/outbox.py",
        "if self._queued >= self.limit and not self._in_io_thread():",
        "if self._queued > self.limit and not self._in_io_thread():",
        1,
    ),
    Mutant(
        "full-property-off-by-one",
        "Outbox.full (what the stall judgement reads) is false exactly at the limit",
        "server/connections/outbox.py",
        "return self._queued >= self.limit",
        "return self._queued > self.limit",
        1,
    ),
    Mutant(
        "put-shared-full-check-off-by-one",
        "a broadcast's fast path queues to an outbox exactly at its limit instead of handing it to put()",
        "server/connections/outbox.py",
        "if outbox._queued >= outbox.limit or",
        "if outbox._queued > outbox.limit or",
        1,
    ),
    Mutant(
        "drop-not-counted",
        "a message dropped by the drop policy is not counted on the connection",
        "server/connections/outbox.py",
        "self.dropped += 1",
        "pass",
        1,
    ),
    Mutant(
        "drop-not-reported",
        "a message dropped by the drop policy is not reported (the server's dropped_messages misses it)",
        "server/connections/outbox.py",
        "self._on_drop()",
        "pass",
        1,
    ),
    Mutant(
        "full-reported-on-every-wait",
        "every producer that waits asks the IO thread to judge the client again, not once per judgement",
        "server/connections/outbox.py",
        "if report and not self._full_reported:",
        "if report:",
        1,
    ),
    Mutant(
        "woken-by-shut-still-queues",
        "a producer woken because the connection is closing queues its message instead of raising ConnectionClosed",
        "server/connections/outbox.py",
        "self._wait_for_room(size, timeout, report=not paced)\n                if self._closed is not None:\n"
        "                    raise ConnectionClosed(*self._closed)",
        "self._wait_for_room(size, timeout, report=not paced)",
        1,
    ),
    Mutant(
        "backlog-timeout-keeps-reservation",
        "a producer that timed out waiting for the server-wide backlog leaves its bytes reserved in the client's queue",
        "server/connections/outbox.py",
        "self._release(size)\n                    raise",
        "raise",
        1,
    ),
    Mutant(
        "backlog-no-wake",
        "the IO thread taking messages never wakes producers waiting for the server-wide backlog",
        "server/connections/backlog.py",
        "if self._waiters and self.bytes < self.limit:",
        "if False:",
        1,
    ),
    # -- frames and deflate --
    Mutant(
        "frame-header-length-126-as-7-bit",
        "a 126-byte payload gets a 7-bit length (126 means 'a 16-bit length follows')",
        "server/protocol/frames.py",
        "if length < 126:",
        "if length <= 126:",
        1,
    ),
    Mutant(
        "mutable-buffer-remembered",
        "OutMessage.of remembers a bytearray: sending the same buffer again after changing it sends the old bytes",
        "server/protocol/frames.py",
        "return cls(bytes(message), False)  # mutable: copied, never remembered",
        "out = cls(bytes(message), False)",
        1,
    ),
    Mutant(
        "large-payload-copied",
        "every payload is joined to its header: a large message is copied once per message",
        "server/protocol/frames.py",
        "if len(payload) <= _JOIN_BELOW else (self.header, payload)",
        "if True else (self.header, payload)",
        1,
    ),
    Mutant(
        "inflate-unbounded",
        "permessage-deflate inflates a whole frame before checking the limit: a bomb costs its full size in memory",
        "server/protocol/deflate.py",
        "room + 1)",
        ")",
        1,
    ),
    Mutant(
        "inflate-limit-off-by-one",
        "a message that inflates to exactly the limit is refused (> became >=)",
        "server/protocol/deflate.py",
        "if self._inflated > self.max_message_bytes",
        "if self._inflated >= self.max_message_bytes",
        1,
    ),
    Mutant(
        "inflate-count-per-frame",
        "the inflated count restarts with every frame: a message split into frames passes the limit",
        "server/protocol/deflate.py",
        "if fin:\n            self._inflated = 0",
        "self._inflated = 0",
        1,
    ),
    Mutant(
        "inflate-count-never-restarts",
        "the inflated count never restarts: a connection's messages together hit the per-message limit",
        "server/protocol/deflate.py",
        "if fin:\n            self._inflated = 0",
        "if fin:\n            pass",
        1,
    ),
    # -- metrics (issue 23): what an operator reads must be what happened --
    Mutant(
        "batch-timed-before-its-last-byte",
        "a partial write counts every frame it offered as written: a batch's send-to-socket time is taken early",
        "server/core/sendbuffer.py",
        "self._done += done",
        "self._done += frames",
        1,
        tests=("tests/unit/test_histogram.py",),
    ),
    Mutant(
        "slow-client-warned-every-probe",
        "a slow client is logged and counted at every probe instead of once per episode",
        "server/observe/metrics.py",
        "if conn not in self._slow:",
        "if True:",
        1,
        tests=("tests/e2e/test_metrics.py::test_a_stuck_client_shows_in_the_scrape_before_it_is_closed",),
    ),
    Mutant(
        "resume-refuses-the-oldest-held",
        "a resume from the position just before the oldest message the history holds is refused as too old",
        "server/scaleout/broker.py",
        "if since.n + 1 < first:",
        "if since.n < first:",
        1,
        tests=("tests/unit/test_positions.py",),
    ),
    Mutant(
        "resume-repeats-its-position",
        "a resume replays the message at its own position again: the client gets it twice",
        "server/scaleout/broker.py",
        "islice(history.entries, since.n + 1 - first, None)",
        "islice(history.entries, since.n - first, None)",
        1,
        tests=("tests/unit/test_positions.py",),
    ),
    Mutant(
        "redis-resume-ignores-the-epoch",
        "a Redis reader replays for a position of a lost history (another epoch) as if it were of the new one",
        "server/scaleout/broker.py",
        "if since.epoch != state.epoch or not since.entry_id:",
        "if not since.entry_id:",
        1,
        tests=("tests/e2e/test_resume.py::test_a_redis_restart_keeps_positions_only_if_it_keeps_its_data",),
    ),
]


def copy_tree(dest: str) -> None:
    for name in ("server", "repro", "tests"):
        shutil.copytree(os.path.join(ROOT, name), os.path.join(dest, name),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("setup.cfg", "pyproject.toml"):
        shutil.copy(os.path.join(ROOT, name), dest)


def run_tests(tree: str, env_extra: tuple[tuple[str, str], ...], timeout: int, tests: list[str]) -> tuple[int, str, float]:
    env = {**os.environ, "PYTHONPATH": tree, "WSRACE_CHECK_AFFINITY": "1", **dict(env_extra)}
    # Make sure the copy is what gets imported, not the installed checkout.
    where = subprocess.run([sys.executable, "-c", "import server, repro; print(server.__file__); print(repro.__file__)"],
                           cwd=tree, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(p.startswith(tree) for p in where), f"mutation run would import {where}, not the copy in {tree}"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *tests, "-x", "-q", "-p", "no:cacheprovider", f"--timeout={timeout}"],
        cwd=tree, env=env, capture_output=True, text=True,
    )
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


def first_failure(output: str) -> str:
    match = re.search(r"^(?:FAILED|ERROR) (\S+)(?: - (.*))?$", output, re.M)
    if not match:
        return "(no FAILED line; see output)"
    return match.group(1) + (f" — {match.group(2)[:160]}" if match.group(2) else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="comma-separated mutant names or globs (default: every mutant)")
    p.add_argument("--unit", action="store_true",
                   help=f"run only the socket-free tests ({', '.join(UNIT_TESTS)}) on the control and each mutant: "
                        "seconds, not minutes; a mutant only the socket tests kill survives")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    ns = p.parse_args(argv)
    mutants = MUTANTS
    if ns.only:
        patterns = [pat.strip() for pat in ns.only.split(",") if pat.strip()]
        mutants = [m for m in MUTANTS if any(fnmatch.fnmatchcase(m.name, pat) for pat in patterns)]
        if not mutants:
            print(f"no mutant matches {ns.only!r}; --list shows them")
            return 2
    if ns.list:
        for m in mutants:
            print(f"{m.name:<48} {m.path:<20} {m.what}{' [tests: ' + ', '.join(m.tests) + ']' if m.tests else ''}")
        return 0

    def tests_for(mutant: Mutant) -> list[str]:
        return UNIT_TESTS if ns.unit else list(mutant.tests) or TESTS

    # The control runs every test some selected mutant will run, in order, each once.
    control_tests = list(dict.fromkeys(test for mutant in mutants for test in tests_for(mutant)))
    results: list[tuple[str, bool, str]] = []
    with tempfile.TemporaryDirectory(prefix="wsrace-mutation-") as tmp:
        control = os.path.join(tmp, "control")
        copy_tree(control)
        print(f"control: unmutated copy, running {' '.join(control_tests)} ...", flush=True)
        code, output, secs = run_tests(control, (), timeout=180, tests=control_tests)
        if code != 0:
            print(output[-3000:])
            print(f"control FAILED in {secs:.0f} s: the tests must pass on the real code before mutants mean anything")
            return 1
        print(f"control: passed in {secs:.0f} s", flush=True)
        for mutant in mutants:
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
            code, output, secs = run_tests(tree, mutant.env, timeout=60, tests=tests_for(mutant))
            killed = code != 0
            caught_by = first_failure(output) if killed else "nothing: every test passed"
            print(f"  {'KILLED' if killed else 'SURVIVED'} in {secs:.1f} s by {caught_by}", flush=True)
            results.append((mutant.name, killed, caught_by))
    print()
    print(f"{'mutant':<48} {'result':<9} caught by")
    for name, killed, by in results:
        print(f"{name:<48} {'killed' if killed else 'SURVIVED':<9} {by}")
    survivors = [name for name, killed, _ in results if not killed]
    if survivors:
        print(f"\n{len(survivors)} mutant(s) survived: the regression tests would not catch {', '.join(survivors)}")
        return 1
    print(f"\nall {len(results)} mutant(s) killed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
