"""One discipline's wss:// server in a child process, so that a crash inside OpenSSL is observed, not fatal.

Two threads in one ``SSL`` object is undefined behaviour: besides torn
records and ``SSLError``\\s it can free a buffer twice (simple-websocket#43) or
crash (python/cpython gh-143756). The TLS rows of ``python -m repro --tls``
therefore run the server here, and the parent (:class:`ServerProcess`) reads
what became of it: its report (what its SSL calls raised, by thread), its exit
status (a signal is a crash), the tail of its stderr (glibc's and
faulthandler's messages), or that it did not stop (killed, after a stack dump).

The child's protocol, on its stdout: ``port N`` once listening; after a line
``stop`` (or EOF) on its stdin, ``report {json}``; then it shuts the server
down and exits 0.
"""

from __future__ import annotations

import contextlib
import faulthandler
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

READY_TIMEOUT = 20.0  # python start, imports, listening (a loaded 2-core machine)
STOP_TIMEOUT = 10.0  # from "stop" to the report and the exit (its shutdown gives connections 2 s)


@dataclass
class ServerOutcome:
    """What became of the server process."""

    # {"counts": {...}, "examples": {...}, "eofs": {...}, "thread_errors": [...]}; None: it never reported
    report: dict[str, Any] | None = None
    exit: str = ""  # "exit 0", "exit 1", "killed by SIGSEGV", "did not stop (killed)"
    crashed: bool = False  # died by a signal, or printed a fatal error (double free, Fatal Python error)
    hung: bool = False  # did not stop within STOP_TIMEOUT after the run
    fatal: str = ""  # the first line of its stderr that says it died ("Fatal Python error: Segmentation fault", "free(): double free ...")
    stderr_tail: str = ""  # from that line on if there is one, else the end

    @property
    def errors(self) -> dict[str, int]:
        return dict((self.report or {}).get("counts", {}))

    @property
    def eofs(self) -> dict[str, int]:
        """Reads that reported end of stream, by thread kind (``{"IO thread": 1}``)."""
        return dict((self.report or {}).get("eofs", {}))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


FATAL_MARKERS = ("Fatal Python error", "double free", "free(): ", "malloc(): ", "corrupted size", "corrupted double-linked",
                 "Segmentation fault", "Aborted")


@dataclass
class ServerProcess:
    """Start with :meth:`start` (returns the port), stop with :meth:`stop` (returns the :class:`ServerOutcome`)."""

    discipline: str
    certfile: Path
    keyfile: Path
    sndbuf: int | None = None
    deflate: bool = False
    switch_interval: float | None = None
    workers: int = 8
    stop_timeout: float = STOP_TIMEOUT
    # for the tests of this harness: "segfault" (0.3 s after listening), "hang" (ignores stop) or
    # "eof" (a TLS read after the handshake request reports end of stream that the client never sent)
    fault: str | None = None
    proc: subprocess.Popen[str] | None = field(default=None, init=False)
    _stderr: Any = field(default=None, init=False)

    def start(self) -> int:
        config = {"discipline": self.discipline, "certfile": str(self.certfile), "keyfile": str(self.keyfile),
                  "sndbuf": self.sndbuf, "deflate": self.deflate, "switch_interval": self.switch_interval, "workers": self.workers,
                  "fault": self.fault}
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, LIBC_FATAL_STDERR_="1", PYTHONPATH=os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH", "")) if p))
        self._stderr = tempfile.TemporaryFile(mode="w+", prefix="wsrace-repro-server-")
        self.proc = subprocess.Popen([sys.executable, "-m", "repro.server_proc", json.dumps(config)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env)
        line = self._readline(READY_TIMEOUT)
        if not line.startswith("port "):
            outcome = self.stop()
            raise RuntimeError(f"the {self.discipline} server process did not start ({outcome.exit}): {outcome.stderr_tail[-500:]}")
        return int(line.split()[1])

    def _readline(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline() if ready else ""

    def stop(self) -> ServerOutcome:
        proc = self.proc
        assert proc is not None and proc.stdin is not None
        outcome = ServerOutcome()
        with contextlib.suppress(OSError):  # BrokenPipeError: it is gone already
            proc.stdin.write("stop\n")
            proc.stdin.close()
        deadline = time.monotonic() + self.stop_timeout
        while proc.poll() is None or outcome.report is None:
            line = self._readline(max(0.0, deadline - time.monotonic()))
            if line.startswith("report "):
                outcome.report = json.loads(line[len("report "):])
            elif not line:  # EOF (it exited) or the time is up
                break
        try:
            code = proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            outcome.hung = True
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGUSR1)  # faulthandler: every thread's stack, into the stderr tail
            time.sleep(0.5)
            proc.kill()
            code = proc.wait()
        if outcome.hung:
            outcome.exit = "did not stop (killed)"
        elif code < 0:
            outcome.exit = f"killed by {signal.Signals(-code).name}"
        else:
            outcome.exit = f"exit {code}"
        self._stderr.seek(0)
        err = self._stderr.read()
        self._stderr.close()
        lines = err.splitlines(keepends=True)
        at = next((i for i, line in enumerate(lines) if any(m in line for m in FATAL_MARKERS)), None)
        if at is not None:
            outcome.fatal = lines[at].strip()
            outcome.stderr_tail = "".join(lines[at:])[:4000]
        else:
            outcome.stderr_tail = err[-4000:]
        outcome.crashed = (code < 0 and not outcome.hung) or at is not None
        assert proc.stdout is not None
        proc.stdout.close()
        return outcome


def _child(config: dict[str, Any]) -> int:
    import logging

    from .certs import CertFiles
    from .disciplines import serve
    from .tlsrace import TlsEvents

    faulthandler.enable(all_threads=True)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(level=logging.WARNING, format="%(threadName)s %(name)s: %(message)s")
    if config.get("switch_interval"):
        sys.setswitchinterval(config["switch_interval"])
    thread_errors: list[str] = []

    def hook(args: threading.ExceptHookArgs) -> None:
        thread_errors.append(f"{args.thread.name if args.thread else '?'}: {args.exc_type.__name__}: {args.exc_value}"[:300])

    threading.excepthook = hook
    if config.get("fault") == "eof":
        _phantom_eof()
    files = CertFiles(Path(config["certfile"]).parent, Path(config["certfile"]), Path(config["keyfile"]), Path(), "given")
    with serve(config["discipline"], sndbuf=config.get("sndbuf"), deflate=config.get("deflate", False),
               workers=config.get("workers", 8), ssl_context=files.server_context(), shutdown_timeout=2.0) as served:
        print(f"port {served.port}", flush=True)
        if config.get("fault") == "segfault":
            threading.Timer(0.3, faulthandler._sigsegv).start()  # type: ignore[attr-defined]
        elif config.get("fault") == "hang":
            threading.Event().wait()
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        report = (served.tls_events or TlsEvents()).to_json()
        report["thread_errors"] = thread_errors
        print("report " + json.dumps(report), flush=True)
    return 0


def _phantom_eof() -> None:
    """The "eof" fault: the second TLS read that returns bytes returns ``b""`` instead, as the race sometimes does."""
    from server.core.tls import TlsTransport

    original = TlsTransport.read
    reads = itertools.count()

    def read(self: TlsTransport) -> bytes | None:
        data = original(self)
        return b"" if data and next(reads) == 1 else data

    TlsTransport.read = read  # type: ignore[method-assign]


if __name__ == "__main__":
    raise SystemExit(_child(json.loads(sys.argv[1])))
