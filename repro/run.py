"""Run one write discipline against one workload and judge the result."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from .certs import CertFiles
from .checker import CLASSES, FRAMING, Anomaly, StreamSpec, Summary
from .client import ClientOptions, HandshakeFailed, check_url
from .disciplines import UNSAFE, serve
from .server_proc import ServerOutcome, ServerProcess
from .verdict import Verdict

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
    verdict: Verdict = Verdict.CLEAN
    as_expected: bool = True
    reason: str = ""
    bytes_checked: int = 0
    pongs: int = 0
    tls: bool = False  # over wss://, the server in a child process
    symptoms: list[str] = field(default_factory=list)  # TLS: everything seen, client and server, most telling first
    client_error: str | None = None  # TLS: the SSL error the client's TLS layer raised ("DECRYPTION_FAILED_OR_BAD_RECORD_MAC")
    server: dict[str, Any] | None = None  # TLS: the ServerOutcome (errors by thread, exit status, stderr tail)
    signs: list[str] = field(default_factory=list)  # TLS: the symptoms in a few words, for the table

    @property
    def label(self) -> str:
        return f"{self.discipline} (wss)" if self.tls else self.discipline

    def to_json(self) -> dict[str, object]:
        return asdict(self) | {"label": self.label}


def describe_anomaly(a: Anomaly) -> dict[str, object]:
    """An anomaly as the report and ``--json`` show it."""
    return {"class": a.cls, "offset": a.offset, "detail": a.detail, "meaning": CLASSES[a.cls][1], "hexdump": a.dump}


def format_results(results: list[Result], label: str = "discipline") -> list[str]:
    """The verdict table, then each result's first anomaly (and where the framing broke) with its hex dump."""
    out = []
    width = max([23, *(len(r.label) for r in results)])
    tls = any(r.tls for r in results)
    last = "anomalies, then what else the client and the server saw" if tls else "anomalies (first occurrence first)"
    vw = 12 if tls else 10
    head = f"{label:<{width}} {'expected':>8} {'intact':>8} {'close':>6}  {'verdict':<{vw}} {last}"
    out.append(head)
    out.append("-" * len(head))
    for r in results:
        seen = "; ".join(x for x in [", ".join(f"{k}={v}" for k, v in r.anomalies.items()), *r.signs] if x) or "none"
        close = str(r.close_code) if r.close_code is not None else "-"
        out.append(f"{r.label:<{width}} {r.expected:>8} {r.valid:>8} {close:>6}  {r.verdict:<{vw}} {seen}")
    for r in results:
        if r.tls and r.symptoms:
            out.append("")
            out.append(f"{r.label}: {r.verdict} after {r.seconds:.2f} s")
            out.extend(f"  - {s}" for s in r.symptoms)
            tail = (r.server or {}).get("stderr_tail", "")
            if tail and ((r.server or {}).get("crashed") or (r.server or {}).get("hung")):
                out.append("  server stderr (tail):")
                out.extend("    " + line for line in tail.strip().splitlines()[:25])
        for label, fa in (("first anomaly", r.first_anomaly), ("then the framing broke", r.first_framing)):
            if fa is None or (r.tls and fa["class"] == "loss"):  # over TLS the symptoms say how many arrived
                continue
            out.append("")
            out.append(f"{r.label}: {label}: {fa['class']} at byte {fa['offset']} of the stream")
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


def run_discipline(discipline: str, workload: Workload, tls: CertFiles | None = None) -> Result:
    """Run one discipline against the workload and judge it; over wss:// with ``tls`` (see :func:`run_discipline_tls`)."""
    if tls is not None:
        return run_discipline_tls(discipline, workload, tls)
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
                          time.monotonic() - started, verdict=Verdict.ERROR, as_expected=False, reason=str(exc))
    result = _result(discipline, summary, ended, time.monotonic() - started)
    first = summary.first()
    if summary.corrupted:
        result.verdict = Verdict.CORRUPTED
    elif summary.anomalies or summary.close_code != 1000:
        result.verdict = Verdict.INCOMPLETE
    should_corrupt = discipline in UNSAFE
    if should_corrupt and result.verdict is not Verdict.CORRUPTED:
        result.as_expected = False
        result.reason = f"{discipline} was expected to corrupt the stream but the checker saw it {result.verdict} ({ended})"
    elif not should_corrupt and result.verdict is not Verdict.CLEAN:
        result.as_expected = False
        result.reason = f"{discipline} must be clean but was {result.verdict}: {first.detail if first else ended}"
    return result


def _result(discipline: str, summary: Summary, ended: str, seconds: float) -> Result:
    first = summary.first()
    framing = [a for a in summary.anomalies.values() if a.cls in FRAMING]
    return Result(
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
        first_anomaly=None if first is None else describe_anomaly(first),
        first_framing=describe_anomaly(framing[0]) if framing and framing[0] is not first else None,
    )


# -- over TLS -----------------------------------------------------------------------------

# The verdicts a wss:// row can get, most severe first. A row gets the worst that applies; its symptoms list all.
TLS_VERDICTS = [Verdict.CRASHED, Verdict.TLS_ERROR, Verdict.CORRUPTED, Verdict.SERVER_ERROR, Verdict.HUNG,
                Verdict.INCOMPLETE, Verdict.CLEAN]
_SSL_REASON = re.compile(r"\[SSL: ([A-Z0-9_]+)\]")
_SSL_FILE = re.compile(r"\s*\(_ssl\.c:\d+\)")
# Not the TLS layer breaking: the peer went away (an EOF without close_notify, a close_notify, a reset).
_GONE = ("UNEXPECTED_EOF_WHILE_READING", "SSLEOFError", "SSLZeroReturnError", "ECONNRESET", "EPIPE", "EBADF",
         "ValueError", "ENOTCONN")


def _server_error_is_primary(key: str) -> bool:
    """A server-side error the race caused itself, not the echo of the client going away or of the client's alert."""
    error = key.split(": ", 1)[1]
    return error.startswith("SSLError") and "_ALERT_" not in error and not any(g in error for g in _GONE)


def _short(key: str) -> str:
    """``IO thread write: SSLError BAD_LENGTH`` -> ``IO thread write BAD_LENGTH``."""
    where, _, error = key.partition(": ")
    return f"{where} {error.removeprefix('SSLError ')}"


def run_discipline_tls(discipline: str, workload: Workload, certs: CertFiles) -> Result:
    """The same workload over wss://, the server in a child process; the row says what the client and the server saw.

    The unsafe disciplines then call ``SSL_write`` from worker threads while
    another thread reads and writes the same ``SSL`` object. Whatever follows
    is classified (:data:`TLS_VERDICTS`): a crash, a TLS error on the client,
    torn frames inside intact records, SSL errors on the server, a hang (the
    client's time limit, and :data:`~repro.server_proc.STOP_TIMEOUT` for the
    server), or nothing.
    """
    options = ClientOptions(rcvbuf=workload.rcvbuf, ping_interval=workload.ping_interval, deflate=workload.deflate,
                            time_limit=workload.time_limit, ssl_context=certs.client_context())
    stream = StreamSpec(workload.producers, workload.count)
    expected = stream.producers * stream.count
    proc = ServerProcess(discipline, certs.cert, certs.key, sndbuf=workload.sndbuf, deflate=workload.deflate,
                         switch_interval=workload.switch_interval)
    try:
        port = proc.start()
    except RuntimeError as exc:
        return Result(discipline, expected, 0, 0, {}, None, "server did not start", 0.0, verdict=Verdict.ERROR, as_expected=False,
                      reason=str(exc), tls=True)
    started = time.monotonic()
    summary: Summary | None = None
    try:
        with switch_interval(workload.switch_interval):
            summary, ended = check_url("127.0.0.1", port, workload.target, stream, options)
    except (HandshakeFailed, OSError) as exc:
        ended = f"handshake failed: {exc}"
    seconds = time.monotonic() - started  # until the client was done: the server's stop is not part of it
    outcome = proc.stop()
    if summary is None:
        result = Result(discipline, expected, 0, 0, {}, None, ended, round(seconds, 2))
    else:
        result = _result(discipline, summary, ended, seconds)
    result.tls = True
    result.server = outcome.to_json()
    _classify_tls(result, summary, outcome, workload)
    if discipline in UNSAFE and result.verdict in (Verdict.CLEAN, Verdict.ERROR):
        result.as_expected = False
        result.reason = (f"{result.label} was expected to fail visibly but was {result.verdict} ({ended}): "
                         "the TLS race did not show in this run")
    elif discipline not in UNSAFE and result.verdict is not Verdict.CLEAN:
        result.as_expected = False
        result.reason = f"{result.label} must be clean but was {result.verdict}: {'; '.join(result.symptoms) or ended}"
    return result


def _classify_tls(result: Result, summary: Summary | None, outcome: ServerOutcome, workload: Workload) -> None:
    verdicts: list[Verdict] = []
    signs: list[str] = []  # short, for the table
    symptoms: list[str] = []  # sentences, for the details
    progress = f"after {result.valid} of {result.expected} messages intact"
    if outcome.crashed:
        verdicts.append(Verdict.CRASHED)
        signs.append(f"server crashed ({outcome.exit})")
        symptoms.append(f"server: crashed, {outcome.exit}{': ' + outcome.fatal if outcome.fatal else ''} ({progress})")
    ssl_reason = _SSL_REASON.search(result.ended)
    if result.ended.startswith(("connection error", "handshake failed")):
        reason = ssl_reason.group(1) if ssl_reason else None
        result.client_error = reason or result.ended.split(": ", 1)[-1]
        if reason is not None and reason not in _GONE:
            verdicts.append(Verdict.TLS_ERROR)
            signs.append(f"client SSL {reason}")
            symptoms.append(f"client: its TLS layer raised {result.ended.split(': ', 1)[1]} ({progress})")
        else:
            signs.append(f"client: {result.client_error}")
            symptoms.append(f"client: the connection failed: {result.ended} ({progress})")
    if summary is not None and summary.corrupted:
        verdicts.append(Verdict.CORRUPTED)
        first = summary.first()
        if first is not None:
            symptoms.append(f"checker: {first.cls} at byte {first.offset} of the decrypted stream: {first.detail}")
    if outcome.eofs and result.ended == "EOF without a close frame":
        # The client was still reading when a server read reported end of stream: an EOF nobody sent,
        # from the SSL object shared with the workers' SSL_write (about 1 run in 100 of locked and direct).
        verdicts.append(Verdict.SERVER_ERROR)
        signs.append("server read an EOF never sent")
        symptoms.append(f"server: a TLS read ({', '.join(outcome.eofs)}) reported end of stream though the client "
                        f"had not closed, and the server dropped the connection ({progress})")
    errors = outcome.errors
    primary = [k for k in errors if _server_error_is_primary(k)]
    if primary:
        verdicts.append(Verdict.SERVER_ERROR)
    for key in sorted(errors, key=lambda k: (not _server_error_is_primary(k), k)):
        example = _SSL_FILE.sub("", (outcome.report or {}).get("examples", {}).get(key, ""))
        times = f" x{errors[key]}" if errors[key] > 1 else ""
        symptoms.append(f"server: {key}{times}" + (f" ({example})" if example and example not in key else ""))
    signs.extend("server " + _short(k) + (f" x{errors[k]}" if errors[k] > 1 else "") for k in primary)
    others = len(errors) - len(primary)
    if others:
        signs.append(f"+{others} server error{'s' if others > 1 else ''} from the connection going away")
    for error in (outcome.report or {}).get("thread_errors", []):
        symptoms.append(f"server: uncaught in thread {error}")
    if summary is not None and result.ended == "time limit" and result.valid < result.expected:
        verdicts.append(Verdict.HUNG)
        signs.append(f"stalled: time limit {workload.time_limit:g} s")
        symptoms.append(f"client: the stream stalled; the time limit ({workload.time_limit:g} s) ended it ({progress})")
    if outcome.hung:
        verdicts.append(Verdict.HUNG)
        signs.append("server did not stop")
        symptoms.append("server: did not stop within its timeout after the run; killed (its threads' stacks are in its stderr)")
    elif not outcome.crashed and outcome.report is None:
        symptoms.append(f"server: no report ({outcome.exit})")
    if summary is not None and not summary.corrupted and (summary.anomalies or summary.close_code != 1000):
        verdicts.append(Verdict.INCOMPLETE)
        if not any(s.startswith("client:") for s in symptoms):
            symptoms.append(f"client: {result.ended}, close {summary.close_code} ({progress})")
    if summary is None and not verdicts:
        verdicts.append(Verdict.ERROR)
    result.verdict = Verdict.worst(verdicts)
    result.symptoms = symptoms
    result.signs = signs
