"""Workloads F and FD: one Flask app (bench/flask_app.py) under gunicorn, on flask-sock and on wsrace.flask.

gunicorn runs as users run it: ``python -m gunicorn --workers 1 --worker-class
gthread --threads T 'bench.flask_app:create_app(fixed=...)'`` (plus
``--no-control-socket`` where the installed gunicorn has it), started by the
harness on a free port, pinned to the server CPU, stopped by its PID (SIGTERM,
then SIGKILL for the master and its worker). The worker's figures come from
``/proc/<worker pid>/status`` and ``/stat``; the app's ``/pid`` route names the
worker and tells the harness that it has loaded the app.

* F: ``bench.client --go`` (pinned to the client CPU) opens the connections on
  ``/push``, then asks every one for its feed at once; a job per client on the
  app's pool of 8 runs ``for _ in range(n): ws.send(payload)``. Deliveries/s
  from that request to the kernel's receive timestamp of the last frame,
  every frame header checked: a torn frame is counted (``violations``), and the
  connection it tore is not counted any further.
* FD: the harness opens N idle WebSockets itself (raw sockets, the handshake
  only), reads the worker's threads and RSS, then sends one message on each
  and counts the echoes (``served``) and reads them again.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from repro.client import HandshakeFailed, masked_frame, new_key, read_upgrade_reply, upgrade_request

from .client import raise_fd_limit
from .run import CLIENT_CPU, PY, SERVER_CPU, Workload, _line, _pinned

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLASK_KINDS = ["flask-sock", "wsrace-flask", "wsrace-flask-detached"]
F_THREADS = 32  # F's gunicorn --threads: each attached view holds one for its connection's life (20 clients)
DETACHED_THREADS = 4  # FD, wsrace.flask with ws.detach(): the views return at once
POOL = 8  # the app's ThreadPoolExecutor (bench/flask_app.py)


def gunicorn_threads(kind: str, w: Workload) -> int:
    """An attached view holds a WSGI thread per connection: FD's attached kinds need one per client (+100)."""
    if kind == "wsrace-flask-detached":
        return DETACHED_THREADS
    return F_THREADS if w.name == "F" else w.clients + 100


@dataclass
class Gunicorn:
    proc: subprocess.Popen
    port: int
    worker: int  # the worker's PID
    log: str

    def log_tail(self, chars: int = 1500) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()[-chars:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_control_socket() -> list[str]:
    """gunicorn >= 25 opens a control socket in ~/.gunicorn by default; older ones have no such flag."""
    from gunicorn.config import KNOWN_SETTINGS

    return ["--no-control-socket"] if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS) else []


def _server_preexec() -> None:
    _pinned(SERVER_CPU)()
    raise_fd_limit()  # the worker holds a descriptor per connection (FD: 1,000)


def _worker_pid(port: int) -> int | None:
    """GET /pid: the worker's PID once it has loaded the app, else None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /pid HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
    except OSError:
        return None
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(body) if head.startswith(b"HTTP/1.1 200") and body.strip().isdigit() else None


@contextlib.contextmanager
def gunicorn(kind: str, threads: int, max_connections: int, ready_timeout: float = 30) -> Iterator[Gunicorn]:
    """bench/flask_app.py under gunicorn (gthread, one worker, ``threads`` threads) on a free port; stopped by PID."""
    port = _free_port()
    args = [PY, "-m", "gunicorn", "--workers", "1", "--worker-class", "gthread", "--threads", str(threads),
            # gthread stops accepting at --worker-connections (default 1,000) open connections
            "--worker-connections", str(max_connections), "--graceful-timeout", "5", "--log-level", "warning",
            "--bind", f"127.0.0.1:{port}", "--chdir", ROOT, *_no_control_socket(),
            f"bench.flask_app:create_app(fixed={kind != 'flask-sock'})"]
    fd, log = tempfile.mkstemp(prefix=f"wsrace-bench-{kind}-", suffix=".log")
    with os.fdopen(fd, "w") as err:
        proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=_server_preexec)
    g = Gunicorn(proc, port, 0, log)
    try:
        deadline = time.monotonic() + ready_timeout
        while not g.worker:
            if proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {proc.returncode}: {g.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"gunicorn did not serve /pid within {ready_timeout:.0f} s: {g.log_tail()}")
            g.worker = _worker_pid(port) or 0
            if not g.worker:
                time.sleep(0.1)
        yield g
    finally:
        _stop(g)
        os.unlink(log)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (its parent, the master, not yet waited for it) counts as gone.
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] != "Z"
    return False


def _stop(g: Gunicorn) -> None:
    """SIGTERM to the master (a graceful stop); SIGKILL to the master and to its worker, by PID, if that hangs."""
    if g.proc.poll() is None:
        g.proc.terminate()
        try:
            g.proc.wait(10)
        except subprocess.TimeoutExpired:
            g.proc.kill()
            g.proc.wait()
    if g.worker:
        deadline = time.monotonic() + 3
        while _alive(g.worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(g.worker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(g.worker, signal.SIGKILL)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB) and Threads of a process, from /proc/PID/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM", "Threads"):
                out[name] = int(value.split()[0])
    return out


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_flask(kind: str, w: Workload) -> dict:
    """One run of F or FD for one kind: the figures, or ``{"error": ...}``."""
    try:
        return _run_f(kind, w) if w.name == "F" else _run_fd(kind, w)
    except (RuntimeError, TimeoutError, KeyError, OSError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _run_f(kind: str, w: Workload) -> dict:
    threads = gunicorn_threads(kind, w)
    with gunicorn(kind, threads, w.clients + threads + 100) as g:
        client = subprocess.Popen(
            [PY, "-m", "bench.client", "--port", str(g.port), "--connections", str(w.clients), "--expect", str(w.count),
             "--size", str(w.size), "--idle-timeout", str(w.idle_timeout), "--path", f"/push?n={w.count}&size={w.size}", "--go"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_pinned(CLIENT_CPU))
        try:
            try:
                _line(client, 60)
            except (RuntimeError, TimeoutError) as exc:
                return {"error": f"clients could not connect: {exc}; gunicorn: {g.log_tail(500)}"}
            cpu0, connected = proc_cpu(g.worker), proc_status(g.worker)  # every view is in ws.receive() now
            client.stdin.write("go\n")  # type: ignore[union-attr]
            client.stdin.flush()  # type: ignore[union-attr]
            got = _line(client, w.idle_timeout + 120)
            cpu1, status = proc_cpu(g.worker), proc_status(g.worker)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
    deliveries, expected = got["messages"], w.clients * w.count
    seconds = (got["last_ns"] - got["start_ns"]) / 1e9 if got["last_ns"] and got["start_ns"] else None
    return {
        "deliveries": deliveries,
        "expected": expected,
        "complete_clients": got["complete"],
        "incomplete": deliveries < expected,
        "violations": got["violations"],
        "corrupt": got["violations"] > 0,
        "healthy_closed": got.get("closed_early", 0),
        "seconds": seconds,
        "msg_per_s": deliveries / seconds if seconds else 0.0,
        "cpu_us_per_msg": (cpu1 - cpu0) / deliveries * 1e6 if deliveries else None,
        "peak_rss_mb": status["VmHWM"] / 1024,
        "threads": connected["Threads"],  # with every connection open, before the feeds
        "gunicorn_threads": threads,
    }


def open_idle(port: int, path: str, n: int, timeout: float, batch: int = 100) -> tuple[list[socket.socket], list[str]]:
    """Open ``n`` WebSockets (``batch`` handshakes in flight at a time); give up on the rest after ``timeout`` s in all.

    Returns the open sockets (non-blocking) and a note per failure.
    """
    deadline = time.monotonic() + timeout
    opened: list[socket.socket] = []
    failures: list[str] = []
    for start in range(0, n, batch):
        group: list[tuple[socket.socket, str]] = []
        for _ in range(min(batch, n - start)):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                key = new_key()
                s.sendall(upgrade_request("127.0.0.1", port, path, key))
            except OSError as exc:
                failures.append(f"connect: {exc}")
                continue
            group.append((s, key))
        for s, key in group:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError("no 101 before the deadline")
                s.settimeout(left)
                read_upgrade_reply(s, key)
            except (OSError, HandshakeFailed) as exc:
                failures.append(f"handshake: {exc}")
                s.close()
                continue
            s.setblocking(False)
            opened.append(s)
    return opened, failures


def echo_round(socks: list[socket.socket], timeout: float) -> int:
    """Send one text message on every socket; how many sockets got it echoed back (as one text frame) in time."""
    want = {s: f"client {i}".encode() for i, s in enumerate(socks)}
    for s, payload in want.items():
        s.setblocking(True)
        s.sendall(masked_frame(0x1, payload))
        s.setblocking(False)
    sel = selectors.DefaultSelector()
    bufs: dict[socket.socket, bytearray] = {}
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
        bufs[s] = bytearray()
    served = 0
    deadline = time.monotonic() + timeout
    while bufs and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            buf = bufs[sock]
            buf += data
            # The echo is one short unmasked text frame: 0x81, length, payload.
            if not data or (len(buf) >= 2 and len(buf) >= 2 + (buf[1] & 0x7F)):
                if data and buf[0] == 0x81 and buf[2 : 2 + (buf[1] & 0x7F)] == want[sock]:
                    served += 1
                sel.unregister(sock)
                del bufs[sock]
    sel.close()
    return served


def _run_fd(kind: str, w: Workload) -> dict:
    threads = gunicorn_threads(kind, w)
    path = "/echo-detached" if kind == "wsrace-flask-detached" else "/echo"
    with gunicorn(kind, threads, 2 * w.clients + threads + 100) as g:
        base = proc_status(g.worker)
        t0 = time.monotonic()
        socks, failures = open_idle(g.port, path, w.clients, timeout=60)
        open_s = time.monotonic() - t0
        try:
            time.sleep(0.5)  # let the last views reach ws.receive() (and flask-sock start their reader threads)
            idle = proc_status(g.worker)
            served = echo_round(socks, timeout=30)
            after = proc_status(g.worker)
        finally:
            for s in socks:
                s.close()
    n = w.clients
    return {
        "clients": n,
        "opened": len(socks),
        "open_failures": failures[:3],
        "served": served,
        "unserved": n - served,
        "gunicorn_threads": threads,
        "base_threads": base["Threads"],
        "base_rss_mib": base["VmRSS"] / 1024,
        "idle_threads": idle["Threads"],
        "idle_rss_mib": idle["VmRSS"] / 1024,
        "threads": after["Threads"],
        "rss_mib": after["VmRSS"] / 1024,
        "rss_per_conn_kib": (after["VmRSS"] - base["VmRSS"]) / n,
        "peak_rss_mb": after["VmHWM"] / 1024,
        "handshakes_per_s": len(socks) / open_s if open_s else None,
        "seconds": open_s,
    }
