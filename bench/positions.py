"""The cost of positions on the publish path, and replay speed (issue 24 item 5).

``python -m bench.positions`` runs the demo server in a child process (pinned
to the server CPU, ``memory://`` with a history of 200,000 per topic) and
``bench.client`` (pinned to the client CPU) as the subscribers. Three ways of
getting the same messages to the same subscribers, alternated over the runs:

    broadcast    Server.broadcast(message, subscribers): no numbering, no history (the path before positions)
    publish      Server.publish(message, topic): numbered under the topic's lock, kept in the history
    positions    Server.publish to /broadcast?positions=1 subscribers: each message also wrapped with its position

It prints deliveries/s (the subscribers' first to last byte) and the server's
CPU per delivery (its process CPU time over the run, all threads), and the
ratios to ``broadcast``. (With ``positions`` the client parses every frame on
its own — their sizes vary — so its deliveries/s is the client's limit.) Then the replay: a history of H messages, and one
subscriber resuming from its start (``since=EPOCH.0``): messages/s from the
first replayed byte to the last, and the time from connecting to the last.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time

from .run import CLIENT_CPU, PY, SERVER_CPU, _line, _pinned, _stop

MODES = ["broadcast", "publish", "positions"]


def serve() -> None:
    """The child: the demo server; publishes on command (stdin), answers on stdout."""
    from server import Limits, Server
    from server.demo.app import DemoApp
    from server.scaleout.broker import MemoryBroker

    broker = MemoryBroker(maxlen=200_000)
    srv = Server(DemoApp, port=0, limits=Limits(ping_interval=None, deflate=False), broker=broker,
                 metrics=False).start()
    print(json.dumps({"ready": srv.port}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "run":
            topic, count, size, want = cmd["topic"], cmd["count"], cmd["size"], cmd["subscribers"]
            while len(srv.subscribers(topic)) < want:
                time.sleep(0.01)
            time.sleep(0.1)  # the bookmarks are out
            payload = bytes(size)
            started = time.process_time()

            def publish(topic: str = topic, count: int = count, payload: bytes = payload,
                        broadcast: bool = cmd["mode"] == "broadcast") -> None:
                if broadcast:
                    targets = srv.subscribers(topic)
                    for _ in range(count):
                        srv.broadcast(payload, targets)
                else:
                    for _ in range(count):
                        srv.publish(payload, topic)

            thread = threading.Thread(target=publish)
            thread.start()
            thread.join()
            print(json.dumps({"published": count}), flush=True)
        elif cmd["cmd"] == "cpu":
            print(json.dumps({"cpu_s": time.process_time() - started}), flush=True)
        elif cmd["cmd"] == "history":
            payload = bytes(cmd["size"])
            for _ in range(cmd["count"]):
                srv.publish(payload, cmd["topic"])
            print(json.dumps({"history": cmd["count"], "epoch": broker.epoch_of(cmd["topic"])}), flush=True)
        else:
            break
    srv.shutdown(2)


def _client(port: int, connections: int, expect: int, size: int, path: str) -> subprocess.Popen:
    return subprocess.Popen(
        [PY, "-m", "bench.client", "--port", str(port), "--connections", str(connections), "--expect", str(expect),
         "--size", str(size), "--path", path], stdout=subprocess.PIPE, text=True, preexec_fn=_pinned(CLIENT_CPU))


def _ask(server: subprocess.Popen, timeout: float, **cmd: object) -> dict:
    server.stdin.write(json.dumps(cmd) + "\n")  # type: ignore[union-attr]
    server.stdin.flush()  # type: ignore[union-attr]
    return _line(server, timeout)


def fan_out(server: subprocess.Popen, port: int, mode: str, run: int, subscribers: int, count: int, size: int) -> dict:
    topic = f"{mode}{run}"
    query = f"/broadcast?topic={topic}" + ("&positions=1" if mode == "positions" else "")
    expect = count + (1 if mode == "positions" else 0)  # the bookmark
    client = _client(port, subscribers, expect, size, query)
    try:
        _line(client, 30)  # connected
        _ask(server, 120, cmd="run", mode=mode, topic=topic, count=count, size=size, subscribers=subscribers)
        got = _line(client, 120)
        cpu = _ask(server, 10, cmd="cpu")["cpu_s"]
    finally:
        client.wait(10)
    deliveries = subscribers * count
    seconds = (got["last_ns"] - got["first_ns"]) / 1e9
    return {"mode": mode, "deliveries_per_s": deliveries / seconds if seconds > 0 else None,
            "cpu_us": cpu * 1e6 / deliveries, "complete": got["complete"] == subscribers}


def replay(server: subprocess.Popen, port: int, run: int, count: int, size: int) -> dict:
    topic = f"history{run}"
    epoch = _ask(server, 120, cmd="history", topic=topic, count=count, size=size)["epoch"]
    started = time.monotonic_ns()
    client = _client(port, 1, count, size, f"/broadcast?topic={topic}&since={epoch}.0")
    try:
        got = _line(client, 30)
        if "connected" in got:
            got = _line(client, 120)
    finally:
        client.wait(10)
    seconds = (got["last_ns"] - got["first_ns"]) / 1e9
    return {"messages_per_s": count / seconds if seconds > 0 else None, "complete": got["complete"] == 1,
            "connect_to_last_s": (got["last_ns"] - started) / 1e9}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        serve()
        return 0
    quick = "--quick" in argv
    runs, subscribers, count, size, history = (1, 20, 2000, 256, 5000) if quick else (5, 50, 10_000, 256, 50_000)
    print(f"== POSITIONS: {subscribers} subscribers x {count} messages x {size} B, memory://, {runs} run(s) "
          "alternated; the server pinned to one core, the subscribers to the other")
    server = subprocess.Popen([PY, "-m", "bench.positions", "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, preexec_fn=_pinned(SERVER_CPU))
    try:
        ready = _line(server, 20)
        port = ready["ready"]
        rows: dict[str, list[dict]] = {mode: [] for mode in MODES}
        for run in range(runs):
            for mode in MODES:
                rows[mode].append(fan_out(server, port, mode, run, subscribers, count, size))
        base = statistics.median(r["deliveries_per_s"] or 0 for r in rows["broadcast"])
        base_cpu = statistics.median(r["cpu_us"] for r in rows["broadcast"])
        print(f"{'path':12}{'deliveries/s':>14}{'x broadcast':>13}{'CPU us/delivery':>17}{'x broadcast':>13}  complete")
        for mode in MODES:
            rate = statistics.median(r["deliveries_per_s"] or 0 for r in rows[mode])
            cpu = statistics.median(r["cpu_us"] for r in rows[mode])
            print(f"{mode:12}{rate:14,.0f}{rate / base:13.2f}{cpu:17.2f}{cpu / base_cpu:13.2f}  "
                  f"{all(r['complete'] for r in rows[mode])}")
        print("(positions: the subscribers' client parses each enveloped frame on its own, frames of varying size,\n"
              " so its deliveries/s is the client's limit; the server's CPU per delivery is the figure to compare)")
        replays = [replay(server, port, run, history, size) for run in range(runs)]
        rate = statistics.median(r["messages_per_s"] or 0 for r in replays)
        print(f"replay: {history:,} messages of {size} B from the history to one resuming subscriber: {rate:,.0f} "
              f"messages/s (first to last byte), {statistics.median(r['connect_to_last_s'] for r in replays):.2f} s "
              f"from connecting to the last; complete: {all(r['complete'] for r in replays)}")
    finally:
        _stop(server)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
