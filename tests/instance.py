"""``python -m server`` run as a user runs it, for the tests that need the command line (scale-out, metrics)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

from .helpers import ROOT


class Instance:
    """``python -m server`` as a user runs it; stderr goes to a file (read it with :meth:`log`).

    With ``--metrics-port`` among ``args``, the "metrics on" line it prints first gives :attr:`metrics_url`.
    """

    def __init__(self, *args: str) -> None:
        self.errfile = tempfile.NamedTemporaryFile(prefix="wsrace-instance-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", "0", "--host", "127.0.0.1", "--log-level", "INFO",
             "--ping-interval", "0", *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=self.errfile, text=True,
            env={**os.environ, "WSRACE_CHECK_AFFINITY": "1"},
        )
        assert self.proc.stdout is not None
        self.metrics_url: str | None = None
        if "--metrics-port" in args:
            first = self.proc.stdout.readline()
            assert first.startswith("metrics on http://127.0.0.1:") and first.rstrip().endswith("/metrics"), (
                first, self.log())
            self.metrics_url = first.split()[-1]
        line = self.proc.stdout.readline()
        assert line.startswith("listening on ws://127.0.0.1:"), (line, self.log())
        self.url = line.split()[-1]
        self.extra_stdout = self.proc.stdout

    def log(self) -> str:
        with open(self.errfile.name, errors="replace") as f:
            return f.read()

    def children(self) -> list[int]:
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                return [int(pid) for pid in f.read().split()]
        except FileNotFoundError:
            return []

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.unlink(self.errfile.name)
