"""Connection-flood figures (issue 15): ``python -m bench.floods`` (about a minute).

1. Flood: ``python -m server`` under ``RLIMIT_NOFILE`` 256, then 400 TCP
   connections left silent. Server CPU over the first 3 s (``/proc/PID/stat``),
   its stderr lines, how long a legitimate client (retrying every 0.2 s, as a
   503's ``Retry-After`` invites) needs to be served while the flood is held
   open, and again once the flood has gone.
2. At the limit: under ``RLIMIT_NOFILE`` 4096, idle WebSockets are opened
   until the server answers 503: connections held, server RSS per connection,
   and how fast the refusal comes.

``--root DIR`` runs the server from another tree (e.g. an unfixed one
exported with ``git archive``), ``--server-arg=--max-connections=1000`` passes
arguments to the flooded server (that one forces the EMFILE path),
``--skip-limit`` skips part 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from repro.client import HandshakeFailed, new_key, read_upgrade_reply, upgrade_request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRAPPER = (
    "import resource, runpy, sys; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2]))); "
    "sys.argv = ['server'] + sys.argv[3:]; "
    "runpy.run_module('server', run_name='__main__', alter_sys=True)"
)


def start(root: str, nofile: int, log_path: str, *args: str) -> tuple[subprocess.Popen, int]:
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", WRAPPER, str(nofile), str(nofile), "--port", "0", *args],
                                cwd=root, stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on ws://"):
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def handshake(port: int, timeout: float) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        key = new_key()
        sock.sendall(upgrade_request("127.0.0.1", port, "/echo", key))
        _, rest = read_upgrade_reply(sock, key)
        return sock, rest
    except BaseException:
        sock.close()
        raise


def echo_once(port: int, timeout: float) -> bool:
    """A legitimate client: handshake, one masked text frame, its echo."""
    try:
        sock, rest = handshake(port, timeout)
        with sock:
            mask = b"\x01\x02\x03\x04"
            payload = b"legit"
            sock.sendall(b"\x81\x85" + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
            buf = rest
            while len(buf) < 2 + len(payload):
                data = sock.recv(4096)
                if not data:
                    return False
                buf += data
            return buf[2 : 2 + len(payload)] == payload
    except (OSError, HandshakeFailed):
        return False


def time_to_get_in(port: int, limit: float) -> float | None:
    started = time.monotonic()
    while (left := limit - (time.monotonic() - started)) > 0:
        if echo_once(port, left):
            return time.monotonic() - started
        time.sleep(0.2)
    return None


def flood_figure(root: str, nofile: int, n: int, window: float, server_args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        log_path = os.path.join(tmp, "stderr.log")
        proc, port = start(root, nofile, log_path, *server_args)
        try:
            flood = []
            for _ in range(n):
                sock = socket.socket()
                sock.setblocking(False)
                try:
                    sock.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
                flood.append(sock)
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            during: list[float | None] = []
            legit = threading.Thread(target=lambda: during.append(time_to_get_in(port, 15.0)))
            legit.start()
            time.sleep(window)
            cpu_share = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
            legit.join()
            for sock in flood:
                sock.close()
            after = time_to_get_in(port, 15.0)
        finally:
            stop(proc)
        with open(log_path) as f:
            lines = f.read().splitlines()
    return {"server_args": " ".join(server_args), "nofile": nofile, "silent_sockets": n, "window_s": window,
            "server_cpu_share": round(cpu_share, 3),
            "log_lines": len(lines), "emfile_lines": sum("Too many open files" in line for line in lines),
            "legit_in_during_flood_s": during[0], "legit_in_after_flood_s": after}


def limit_figure(root: str, nofile: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start(root, nofile, os.path.join(tmp, "stderr.log"), "--ping-interval", "0")
        held: list[socket.socket] = []
        try:
            time.sleep(0.2)
            base = rss_kib(proc.pid)
            t0 = time.monotonic()
            refused = b""
            while len(held) < nofile:
                try:
                    sock, _ = handshake(port, 10)
                    held.append(sock)
                except HandshakeFailed as exc:
                    refused = str(exc).encode()
                    break
            open_s = time.monotonic() - t0
            at_limit = rss_kib(proc.pid)
            t1 = time.monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(upgrade_request("127.0.0.1", port, "/echo", new_key()))
                reply = sock.recv(4096)
            refusal_ms = (time.monotonic() - t1) * 1000
        finally:
            for sock in held:
                sock.close()
            stop(proc)
    return {"nofile": nofile, "connections_held": len(held), "open_s": round(open_s, 2),
            "rss_base_mib": round(base / 1024, 1), "rss_at_limit_mib": round(at_limit / 1024, 1),
            "rss_per_connection_kib": round((at_limit - base) / max(1, len(held)), 1),
            "refusal": refused.decode(errors="replace")[:60], "next_client": reply.split(b"\r\n", 1)[0].decode(),
            "refusal_ms": round(refusal_ms, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.floods", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=ROOT, help="tree whose server/ to run (default: this one)")
    p.add_argument("--nofile", type=int, default=256, help="server RLIMIT_NOFILE for the flood (default: %(default)s)")
    p.add_argument("--flood", type=int, default=400, help="silent sockets (default: %(default)s)")
    p.add_argument("--window", type=float, default=3.0, help="seconds of CPU measurement (default: %(default)s)")
    p.add_argument("--limit-nofile", type=int, default=4096, help="server RLIMIT_NOFILE for part 2 (default: %(default)s)")
    p.add_argument("--server-arg", action="append", default=[], help="extra server argument for the flood (repeatable)")
    p.add_argument("--skip-limit", action="store_true", help="only the flood figure")
    args = p.parse_args(argv)
    result = {"flood": flood_figure(args.root, args.nofile, args.flood, args.window, args.server_arg)}
    print(json.dumps(result["flood"]), flush=True)
    if not args.skip_limit:
        result["limit"] = limit_figure(args.root, args.limit_nofile)
        print(json.dumps(result["limit"]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
