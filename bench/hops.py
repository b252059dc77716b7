"""Where a round trip's time goes on our server: the per-hop breakdown of workload R1 (issue 22 item 1).

``python -m bench.hops`` runs the demo server in a child process (pinned to
the server CPU) with six stages of the message path timestamped, and
``bench.echo_client`` (1 connection, 256 B, pinned to the client CPU) against
``/echo`` (the worker pool) and ``/echo-inline`` (the IO thread). Stages, in
order, each on the thread named:

    read      IO thread   the socket read that completed the message returned
    dispatch  IO thread   the session handed out the message (frame parsed)
    handler   worker/IO   on_message started (a thread hop for the pool)
    send      worker/IO   the handler called send()
    drain     IO thread   the writer took the reply from the outbox (the hop back, through the waker),
                          or, sent on the IO thread, began to frame it at once (``Writer.write_now``)
    written   IO thread   sendmsg() returned with the reply's frame

It prints the median microseconds of each step (the time from one stage to the
next) over every round trip of the measured window, and the client's round trip
for comparison. The stage hooks wrap methods of the server's classes in the
child process only, and cost about a microsecond each: the figures show where
the time goes, the R workloads how fast it is.
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import threading
import time

from .run import CLIENT_CPU, PY, SERVER_CPU, _line, _pinned, _stop

STAGES = ["read", "dispatch", "handler", "send", "drain", "written"]


def serve() -> None:
    """The child: the demo server with its message path timestamped; answers ``report`` and ``quit`` on stdin."""
    from server import ConnectionHandle, Limits, Server
    from server.connections.dispatch import Dispatcher
    from server.connections.writer import Writer
    from server.core.transport import SocketTransport
    from server.demo.app import DemoApp

    clock = time.perf_counter_ns
    current: dict[str, int] = {}  # the round trip in progress (one connection, one message in flight)
    done: list[dict[str, int]] = []
    lock = threading.Lock()

    def stamp(stage: str, first_only: bool = True) -> None:
        with lock:
            if not (first_only and stage in current):
                current[stage] = clock()

    def wrap(cls: type, name: str, before: str | None = None, after: str | None = None) -> None:
        original = getattr(cls, name)

        def hooked(*args, **kwargs):  # type: ignore[no-untyped-def]
            if before:
                stamp(before)
            result = original(*args, **kwargs)
            if after:
                stamp(after)
            return result

        setattr(cls, name, hooked)

    original_read = SocketTransport.read

    def read(self: SocketTransport) -> bytes | None:
        data = original_read(self)
        if data:
            with lock:
                current["read"] = clock()  # the last read before the message was complete
        return data

    SocketTransport.read = read  # type: ignore[method-assign]
    wrap(Dispatcher, "dispatch", before="dispatch")
    wrap(Dispatcher, "_handle", before="handler")
    wrap(Dispatcher, "_handle_inline", before="handler")
    wrap(ConnectionHandle, "send", before="send")
    wrap(Writer, "drain", before="drain")
    wrap(Writer, "write_now", before="drain")  # an inline reply is framed there, with no drain
    original_write = SocketTransport.write

    def write(self: SocketTransport, buffer):  # type: ignore[no-untyped-def]
        had_data = bool(buffer.frames)
        original_write(self, buffer)
        with lock:
            if had_data and "drain" in current:
                current["written"] = clock()
                if all(stage in current for stage in STAGES):
                    done.append(dict(current))
                current.clear()

    SocketTransport.write = write  # type: ignore[method-assign]
    srv = Server(DemoApp, port=0, limits=Limits(ping_interval=None, deflate=False)).start()
    print(json.dumps({"ready": srv.port}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)["cmd"]
        if cmd == "reset":
            with lock:
                done.clear()
            print(json.dumps({"ok": True}), flush=True)
        elif cmd == "report":
            with lock:
                samples = list(done)
            steps = {f"{a}->{b}": statistics.median(s[b] - s[a] for s in samples) / 1000
                     for a, b in itertools.pairwise(STAGES)} if samples else {}
            print(json.dumps({"n": len(samples), "steps_us": steps}), flush=True)
        else:
            break
    srv.shutdown(2)


def measure(path: str, seconds: float) -> dict:
    """One run against ``path``: the server's step medians and the client's round trips."""
    server = subprocess.Popen([PY, "-m", "bench.hops", "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, preexec_fn=_pinned(SERVER_CPU))
    try:
        port = _line(server, 20)["ready"]
        client = subprocess.Popen(
            [PY, "-m", "bench.echo_client", "--port", str(port), "--path", path, "--connections", "1",
             "--size", "256", "--seconds", str(seconds), "--warmup", "0.15"],
            stdout=subprocess.PIPE, text=True, preexec_fn=_pinned(CLIENT_CPU))
        got = _line(client, seconds + 30)
        client.wait(10)
        server.stdin.write('{"cmd": "report"}\n')  # type: ignore[union-attr]
        server.stdin.flush()  # type: ignore[union-attr]
        report = _line(server, 10)
        return {"path": path, "rt_per_s": got.get("rt_per_s"), "p50_ms": got.get("latency_ms", {}).get("p50"),
                **report}
    finally:
        _stop(server)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        serve()
        return 0
    seconds = 0.4 if "--quick" in argv else 1.5
    print(f"== HOPS: where an R1 round trip's time goes on our server (1 connection x 256 B, {seconds:g} s; "
          "median us per step, stage hooks included)")
    rows = [measure("/echo", seconds), measure("/echo-inline", seconds)]
    steps = [f"{a}->{b}" for a, b in itertools.pairwise(STAGES)]
    print(f"{'route':14}" + "".join(f"{s:>18}" for s in steps) + f"{'sum':>8}{'client p50':>12}{'n':>8}")
    for row in rows:
        values = [row.get("steps_us", {}).get(s) for s in steps]
        total = sum(v for v in values if v is not None)
        print(f"{row['path']:14}" + "".join(f"{v:18.1f}" if v is not None else f"{'-':>18}" for v in values)
              + f"{total:8.1f}{(row['p50_ms'] or 0) * 1000:12.1f}{row.get('n', 0):8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
