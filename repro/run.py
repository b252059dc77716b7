"""Run one write discipline against one workload and judge the result."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from .checker import CLASSES, FRAMING, Anomaly, StreamSpec
from .client import ClientOptions, HandshakeFailed, check_url
from .disciplines import UNSAFE, serve

logger = logging.getLogger(__name__)


@dataclass
class Workload:
    """The default reproduces on a 2-core machine; see README "Why it is timing-dependent"."""

    producers: int = 8  # threads writing to one connection at once
    count: int = 100  # messages per producer
    size: int = 256 * 1024  # bytes per message: large frames keep writes partial
    sndbuf: int | None = 16 * 1024  # server SO_SNDBUF: small, so writes block mid-frame
    rcvbuf: int | None = 8 * 1024  # client SO_RCVBUF: small, so the server hits backpressure
    switch_interval: float = 0.0005  # sys.setswitchinterval: threads swap more often
    ping_interval: float | None = 0.0005  # client pings: the IO/reader thread writes pongs
    deflate: bool = False
    time_limit: float = 10.0  # seconds per discipline

    @property
    def target(self) -> str:
        return f"/stream?producers={self.producers}&count={self.count}&size={self.size}"


@dataclass
class Result:
    discipline: str
    expected: int
    received: int
    valid: int
    anomalies: dict[str, int]
    close_code: int | None
    ended: str
    seconds: float
    first_anomaly: dict[str, object] | None = None
    first_framing: dict[str, object] | None = None
    verdict: str = "CLEAN"
    as_expected: bool = True
    reason: str = ""
    bytes_checked: int = 0
    pongs: int = 0

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def describe_anomaly(a: Anomaly) -> dict[str, object]:
    """An anomaly as the report and ``--json`` show it."""
    return {"class": a.cls, "offset": a.offset, "detail": a.detail, "meaning": CLASSES[a.cls][1], "hexdump": a.dump}


def format_results(results: list[Result], label: str = "discipline") -> list[str]:
    """The verdict table, then each result's first anomaly (and where the framing broke) with its hex dump."""
    out = []
    head = f"{label:<23} {'expected':>8} {'intact':>8} {'close':>6}  {'verdict':<10} anomalies (first occurrence first)"
    out.append(head)
    out.append("-" * len(head))
    for r in results:
        anomalies = ", ".join(f"{k}={v}" for k, v in r.anomalies.items()) or "none"
        close = str(r.close_code) if r.close_code is not None else "-"
        out.append(f"{r.discipline:<23} {r.expected:>8} {r.valid:>8} {close:>6}  {r.verdict:<10} {anomalies}")
    for r in results:
        for label, fa in (("first anomaly", r.first_anomaly), ("then the framing broke", r.first_framing)):
            if fa is None:
                continue
            out.append("")
            out.append(f"{r.discipline}: {label}: {fa['class']} at byte {fa['offset']} of the stream")
            out.append(f"  {fa['detail']}")
            out.append(f"  ({fa['meaning']})")
            if fa["hexdump"]:
                out.extend("  " + line for line in str(fa["hexdump"]).splitlines())
    return out


@contextlib.contextmanager
def switch_interval(seconds: float) -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def run_discipline(discipline: str, workload: Workload) -> Result:
    options = ClientOptions(
        rcvbuf=workload.rcvbuf, ping_interval=workload.ping_interval, deflate=workload.deflate, time_limit=workload.time_limit
    )
    stream = StreamSpec(workload.producers, workload.count)
    started = time.monotonic()
    with switch_interval(workload.switch_interval), serve(discipline, sndbuf=workload.sndbuf, deflate=workload.deflate) as srv:
        try:
            summary, ended = check_url("127.0.0.1", srv.port, workload.target, stream, options)
        except (HandshakeFailed, OSError) as exc:
            return Result(discipline, stream.producers * stream.count, 0, 0, {}, None, f"handshake failed: {exc}",
                          time.monotonic() - started, verdict="ERROR", as_expected=False, reason=str(exc))
    seconds = time.monotonic() - started
    first = summary.first()
    framing = [a for a in summary.anomalies.values() if a.cls in FRAMING]
    describe = describe_anomaly
    result = Result(
        discipline=discipline,
        expected=summary.expected_messages or 0,
        received=summary.received_messages,
        valid=summary.valid_messages,
        anomalies={name: a.count for name, a in sorted(summary.anomalies.items(), key=lambda kv: kv[1].offset)},
        close_code=summary.close_code if not summary.corrupted else (summary.close_code or 1002),
        ended=ended,
        seconds=round(seconds, 2),
        bytes_checked=summary.bytes_checked,
        pongs=summary.pongs,
        first_anomaly=None if first is None else describe(first),
        first_framing=describe(framing[0]) if framing and framing[0] is not first else None,
    )
    if summary.corrupted:
        result.verdict = "CORRUPTED"
    elif summary.anomalies or summary.close_code != 1000:
        result.verdict = "INCOMPLETE"
    should_corrupt = discipline in UNSAFE
    if should_corrupt and result.verdict != "CORRUPTED":
        result.as_expected = False
        result.reason = f"{discipline} was expected to corrupt the stream but the checker saw it {result.verdict} ({ended})"
    elif not should_corrupt and result.verdict != "CLEAN":
        result.as_expected = False
        result.reason = f"{discipline} must be clean but was {result.verdict}: {first.detail if first else ended}"
    return result
