"""``--processes N``: N server processes on one port, kept running, stopped together.

The supervisor reserves the port (a bound, non-listening ``SO_REUSEPORT``
socket, so ``--port 0`` gets one port for all), then starts N children
(``python -m server … --processes 1 --port P --reuse-port``), each a complete
server with its own IO thread; the kernel spreads new connections across
their listeners. It prints the one ready line once every child is ready. A
child that exits on its own is restarted after a backoff (0.5 s doubling to
10 s; reset once a child has run 30 s), logged. SIGINT/SIGTERM are sent on
to every child (each closes its clients with 1001); the supervisor exits 0
when every child exited 0.

SIGHUP is a rolling restart (a deploy: the children run the code on disk
now): one child at a time, a fresh one is started and waited for (it listens
beside the others), then the old one gets SIGUSR1: it stops accepting, sends
what its clients have queued and closes them with 1012 (Service Restart).
They reconnect — to any sibling — and resume from their last position.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger(__name__)

MIN_BACKOFF = 0.5
MAX_BACKOFF = 10.0
STABLE_AFTER = 30.0  # a child that ran this long restarts after MIN_BACKOFF again
SUPERVISOR_ENV = "WSRACE_SUPERVISOR_PID"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 25.0


class Child:
    """One server process and the thread that reads its stdout."""

    def __init__(self, index: int, argv: list[str]) -> None:
        self.index = index
        self.argv = argv
        self.proc: subprocess.Popen[str] | None = None
        self.ready = threading.Event()
        self.started_at = 0.0
        self.backoff = MIN_BACKOFF
        self.restart_at: float | None = None
        self.metrics_url: str | None = None  # its /metrics (with --metrics-port), from its "metrics on" line

    def start(self) -> None:
        self.ready = threading.Event()
        self.metrics_url = None
        # A session of its own: a terminal's Ctrl-C reaches the supervisor only, which sends it on once.
        # WSRACE_SUPERVISOR_PID: the child shuts down gracefully if this process vanishes (even by SIGKILL).
        env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
        self.proc = subprocess.Popen([sys.executable, "-m", "server", *self.argv], stdout=subprocess.PIPE,
                                     text=True, start_new_session=True, env=env)
        self.started_at = time.monotonic()
        threading.Thread(target=self._read_stdout, args=(self.proc, self.ready), daemon=True,
                         name=f"wsrace-supervisor-{self.index}").start()
        logger.info("process %d started (pid %d)", self.index, self.proc.pid)

    def _read_stdout(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("metrics on ") and not ready.is_set():
                self.metrics_url = line.split()[-1]  # printed before its ready line
            elif line.startswith("listening on ") and not ready.is_set():
                ready.set()  # the supervisor prints the one ready line for all
                logger.info("process pid %d ready", proc.pid)
            else:
                sys.stderr.write(f"[pid {proc.pid}] {line}")


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) with SO_REUSEPORT: holds the port, takes no connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def child_argv(argv: list[str], port: int, index: int, metrics: bool = False) -> list[str]:
    """The CLI arguments with the ones the supervisor decides appended (argparse: the last one wins)."""
    extra = ["--processes", "1", "--port", str(port), "--reuse-port"]
    if index > 0:
        extra += ["--publishers", "0"]  # tickers run in the first process only
    if metrics:  # each child on a free local port; the supervisor serves the one the user named
        extra += ["--metrics-port", "0", "--metrics-host", "127.0.0.1"]
    return [*argv, *extra]


class MetricsServer(Protocol):
    port: int

    def close(self) -> None: ...


# Given a way to list (process index, its metrics URL or None), serve them all on one port.
ServeMetrics = Callable[[Callable[[], list[tuple[int, "str | None"]]]], MetricsServer]


def supervise(argv: list[str], host: str, port: int, processes: int, scheme: str = "ws",
              serve_metrics: ServeMetrics | None = None) -> int:
    """Run ``processes`` children serving ``host:port`` (``scheme``: ws or wss); returns the exit status.

    ``serve_metrics``: the children serve their metrics on local ports, and
    this serves them together (the CLI's ``--metrics-port``).
    """
    try:
        reserved = reserve_port(host, port)
    except OSError as exc:
        print(f"wsrace-server: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    port = reserved.getsockname()[1]
    children = [Child(i, child_argv(argv, port, i, serve_metrics is not None)) for i in range(processes)]
    metrics: MetricsServer | None = None
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        stop.set()

    rolling = threading.Event()

    def on_hangup(signum: int, frame: object) -> None:
        rolling.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hangup)
    try:
        for child in children:
            child.start()
        deadline = time.monotonic() + READY_TIMEOUT
        for child in children:
            while not child.ready.wait(0.1):
                assert child.proc is not None
                if stop.is_set() or child.proc.poll() is not None or time.monotonic() > deadline:
                    why = "interrupted" if stop.is_set() else (
                        f"exited with {child.proc.returncode}" if child.proc.poll() is not None else "not ready in time")
                    print(f"wsrace-server: process {child.index} {why}; stopping", file=sys.stderr)
                    _stop_all(children, signal.SIGTERM)
                    return 2 if not stop.is_set() else 0
        shown = f"[{host}]" if ":" in host else host
        if serve_metrics is not None:
            metrics = serve_metrics(lambda: [(c.index, c.metrics_url) for c in children])
            print(f"metrics on http://{shown}:{metrics.port}/metrics", flush=True)
        print(f"listening on {scheme}://{shown}:{port}", flush=True)
        logger.info("%d processes serving %s://%s:%d (SO_REUSEPORT)", processes, scheme, shown, port)
        while not stop.wait(0.2):
            if rolling.is_set():
                rolling.clear()
                _rolling_restart(children, stop)
            _keep_running(children)
        signum = received[0] if received else signal.SIGTERM
        logger.info("received %s: stopping %d processes", signal.Signals(signum).name, processes)
        return _stop_all(children, signum)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        reserved.close()
        if metrics is not None:
            metrics.close()


def _keep_running(children: list[Child]) -> None:
    now = time.monotonic()
    for child in children:
        proc = child.proc
        if child.restart_at is not None:
            if now >= child.restart_at:
                child.restart_at = None
                child.start()
            continue
        if proc is None or proc.poll() is None:
            continue
        if now - child.started_at > STABLE_AFTER:
            child.backoff = MIN_BACKOFF
        logger.error("process %d (pid %d) exited with %s; restarting in %.1f s",
                     child.index, proc.pid, _status(proc.returncode), child.backoff)
        child.restart_at = now + child.backoff
        child.backoff = min(child.backoff * 2, MAX_BACKOFF)


def _rolling_restart(children: list[Child], stop: threading.Event) -> None:
    """Replace each child by a fresh one, one at a time: the new one ready before the old one leaves."""
    logger.info("SIGHUP: rolling restart of %d processes", len(children))
    for i, old in enumerate(children):
        if stop.is_set():
            logger.info("rolling restart interrupted by a stop signal after %d of %d processes", i, len(children))
            return
        new = Child(old.index, old.argv)
        new.start()
        deadline = time.monotonic() + READY_TIMEOUT
        while not new.ready.wait(0.1):
            assert new.proc is not None
            if stop.is_set() or new.proc.poll() is not None or time.monotonic() > deadline:
                logger.error("rolling restart: the new process %d did not get ready (%s); keeping the old one, "
                             "stopping the restart", old.index,
                             "interrupted" if stop.is_set() else "exited" if new.proc.poll() is not None else "timeout")
                if new.proc.poll() is None:
                    new.proc.kill()
                new.proc.wait()
                return
        children[i] = new
        proc = old.proc
        if proc is None or proc.poll() is not None:
            continue
        proc.send_signal(signal.SIGUSR1)  # stop accepting, flush, close clients with 1012
        try:
            code = proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            logger.error("rolling restart: process pid %d did not stop in %.0f s: killing it", proc.pid, STOP_TIMEOUT)
            proc.kill()
            code = proc.wait()
        logger.info("rolling restart: process %d replaced (pid %d exited with %s; now pid %d)", old.index, proc.pid,
                    _status(code), new.proc.pid if new.proc else -1)
    logger.info("rolling restart done")


def _status(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def _stop_all(children: list[Child], signum: int) -> int:
    live = [(c.proc, c.ready.is_set()) for c in children if c.proc is not None and c.proc.poll() is None]
    for proc, _ in live:
        try:
            os.kill(proc.pid, signum)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_TIMEOUT
    status = 0
    for proc, was_ready in live:
        try:
            code = proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.error("process pid %d did not stop in %.0f s: killing it", proc.pid, STOP_TIMEOUT)
            proc.kill()
            code = proc.wait()
        if code == -signum and not was_ready:
            continue  # still starting (no clients yet), so its signal handlers were not installed yet
        if code != 0:
            logger.error("process pid %d exited with %s", proc.pid, _status(code))
            status = 1
    return status


def watch_supervisor(interval: float = 0.5) -> None:
    """In a child: if the supervisor that started it is gone, shut down as on SIGTERM (clients see 1001).

    A supervisor killed with SIGKILL cannot stop its children, and children in
    sessions of their own get no signal from a terminal: without this they
    would keep the port and their clients as orphans.
    """
    expected = os.environ.get(SUPERVISOR_ENV)
    if not expected:
        return

    def watch() -> None:
        while os.getppid() == int(expected):
            time.sleep(interval)
        logger.warning("supervisor (pid %s) is gone: shutting down", expected)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="wsrace-supervisor-watch", daemon=True).start()
