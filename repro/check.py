"""``wsrace-check URL``: does *your* server tear its frames?

The repro proves the bug on its own routes; this points the same strict wire
checker (:mod:`repro.checker`) and hand-written handshake (:mod:`repro.client`)
at any server:

* ``echo`` mode (default) pipelines messages of mixed sizes and types (text
  with multi-byte UTF-8, binary), interleaves pings and reads through a small
  receive window — the conditions that make a server's threads write to one
  socket at once. Every server frame goes through the strict checker, and
  every reply must be byte-identical to one message sent, exactly once (order
  across replies may differ: many servers reply from a pool).
* ``drain`` mode reads what a push endpoint sends: strict framing, UTF-8 and
  deflate checks.

    from repro.check import check
    result = check("ws://127.0.0.1:5000/echo")
    assert result.clean, result.report()

Library code: progress goes to a callback and to :mod:`logging`, never to stdout.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace

from .check_session import CheckOptions, ConnectError, Target, _Session, client_ssl_context, parse_url
from .run import Result, format_results
from .verdict import Verdict

logger = logging.getLogger(__name__)

__all__ = ["CheckOptions", "CheckResult", "check", "parse_url"]



@dataclass
class CheckResult:
    """What ``check()`` found: ``.clean``, ``.anomalies``, ``.report()``; ``.exit_code`` for the CLI."""

    url: str
    options: CheckOptions
    verdict: Verdict
    sentence: str  # one sentence saying what that means
    runs: list[Result] = field(default_factory=list)
    seconds: float = 0.0
    detected_after: float | None = None  # seconds from the start to the end of the first corrupted run

    @property
    def clean(self) -> bool:
        return self.verdict is Verdict.CLEAN

    @property
    def anomalies(self) -> dict[str, int]:
        """Anomaly class -> count, summed over the runs (empty when clean)."""
        total: dict[str, int] = {}
        for r in self.runs:
            for cls, n in r.anomalies.items():
                total[cls] = total.get(cls, 0) + n
        return total

    @property
    def first_anomaly(self) -> dict[str, object] | None:
        return next((r.first_anomaly for r in self.runs if r.first_anomaly), None)

    @property
    def exit_code(self) -> int:
        return self.verdict.exit_code

    def report(self) -> str:
        """The verdict table and the first anomaly's hex dump, as ``make repro`` prints them, then the sentence."""
        o = self.options
        knobs = ", ".join(f"{f.name}={getattr(o, f.name)}" for f in fields(o) if f.name != "headers")
        out = [f"wsrace-check {self.url}  ({knobs})", ""]
        if self.runs:
            bad = next((r for r in self.runs if r.first_anomaly), None)  # the dumps of the first bad run only
            shown = [r if r is bad else replace(r, first_anomaly=None, first_framing=None) for r in self.runs]
            out += [*format_results(shown, label="run"), ""]
        out.append(f"{self.verdict}: {self.sentence}")
        return "\n".join(out)

    def assert_clean(self) -> None:
        """Raise ``AssertionError`` carrying the whole report (hex dump included) unless clean."""
        if not self.clean:
            raise AssertionError(self.report())

    def to_json(self) -> dict[str, object]:
        options = asdict(self.options) | {"headers": [name for name, _ in self.options.headers]}  # never echo secrets
        return {"url": self.url, "verdict": self.verdict, "clean": self.clean, "exit_code": self.exit_code,
                "sentence": self.sentence, "seconds": round(self.seconds, 2), "detected_after": self.detected_after,
                "anomalies": self.anomalies, "options": options, "runs": [r.to_json() for r in self.runs]}

    def __repr__(self) -> str:
        first = self.first_anomaly
        where = f"; first: {first['class']} at byte {first['offset']}: {first['detail']}" if first else ""
        return f"<CheckResult {self.verdict} {self.url}: {len(self.runs)} run(s){where}>"


def _verdict(url: str, options: CheckOptions, runs: list[Result]) -> tuple[Verdict, str]:
    """The worst run decides (the first of the worst, if several)."""
    worst = Verdict.worst([r.verdict for r in runs])
    bad = next(r for r in runs if r.verdict is worst)
    if worst is Verdict.CORRUPTED:
        first = bad.first_anomaly
        if first is None:  # nothing to point at in the frames: the TLS records broke first
            return worst, f"{bad.discipline}: {bad.reason}."
        return worst, (f"{bad.discipline}: the server's byte stream broke ({first.get('class')} at byte "
                       f"{first.get('offset')}): its writes to one socket interleave — the cross-thread write bug, "
                       f"or a relative of it.")
    if worst is Verdict.PROTOCOL_ERROR:
        return worst, f"{bad.discipline}: {bad.reason}."
    if worst is Verdict.INCOMPLETE:
        hint = " (is this an echo endpoint? use --mode drain for push endpoints)" if options.mode == "echo" else ""
        return worst, (f"{bad.discipline}: {bad.reason}{hint}; nothing corrupted was seen, "
                       f"but the check did not finish.")
    checked = sum(r.bytes_checked for r in runs)
    what = f"{sum(r.valid for r in runs)} replies verified" if options.mode == "echo" else f"{sum(r.valid for r in runs)} messages"
    return Verdict.CLEAN, (f"{len(runs)} run(s), {what}, {checked / 2**20:.1f} MiB of frames checked: nothing torn. "
                     f"Timing-dependent bugs can hide; a clean result is evidence, not proof.")


def check(url: str, options: CheckOptions | None = None, progress: Callable[[str], None] | None = None,
          *, ssl_context: ssl.SSLContext | None = None, **knobs: object) -> CheckResult:
    """Check the server at ``url``; ``knobs`` are :class:`CheckOptions` fields. Never raises for network trouble.

    ``wss://`` URLs verify the server's certificate against the system's CAs, or those in ``cafile=PATH``
    (``insecure=True``: no verification); ``ssl_context`` replaces all of that with a client context of
    your own. An untrusted certificate is an ``ERROR`` result saying how to trust it.

    Raises ``ValueError`` for a bad URL or knob (a usage error).
    """
    options = replace(options or CheckOptions(), **knobs)  # type: ignore[arg-type]
    options.validate()
    target: Target = parse_url(url)
    if not target.tls and (options.cafile or options.insecure or ssl_context is not None):
        raise ValueError(f"a CA file, --insecure or an SSL context is for wss:// URLs, not {url!r}")
    if target.tls and ssl_context is None:
        ssl_context = client_ssl_context(options.cafile, options.insecure)
    seed = options.seed if options.seed is not None else int.from_bytes(os.urandom(4), "big")
    options = replace(options, seed=seed)

    def say(line: str) -> None:
        logger.info("%s", line)
        if progress is not None:
            progress(line)

    started = time.monotonic()
    runs: list[Result] = []
    detected_after = None
    for run in range(1, options.runs + 1):
        left = options.time_limit - (time.monotonic() - started)
        if left < 0.5:
            say(f"time limit of {options.time_limit:g} s reached after {len(runs)} run(s)")
            break
        per_run = left if options.mode == "echo" else min(left, options.time_limit / options.runs)
        what = f"{options.messages} messages" if options.mode == "echo" else f"up to {per_run:.1f} s"
        say(f"[run {run}/{options.runs}] {target.url}: {what} ...")
        try:
            result = _Session(target, options, run, seed, ssl_context).run_once(per_run)
        except ConnectError as exc:
            return CheckResult(url, options, Verdict.ERROR, str(exc), runs, time.monotonic() - started)
        runs.append(result)
        say(f"      -> {result.verdict} after {result.seconds:.1f} s ({result.valid} intact, {result.ended})")
        if result.verdict in (Verdict.CORRUPTED, Verdict.PROTOCOL_ERROR):
            detected_after = detected_after or round(time.monotonic() - started, 2)
            if not options.keep_going:
                break
        if result.verdict is Verdict.INCOMPLETE and not options.keep_going:
            break
    verdict, sentence = _verdict(url, options, runs) if runs else (Verdict.ERROR, "no run could start within the time limit.")
    return CheckResult(url, options, verdict, sentence, runs, time.monotonic() - started, detected_after)
