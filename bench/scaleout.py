"""Fan-out across processes through Redis: ``python -m bench.scaleout``.

Starts its own ``redis-server`` (free port, temp dir), then for each design and
process count: N server processes on one port (SO_REUSEPORT), C subscribers
(``bench.client``: raw sockets, every frame header checked, kernel receive
timestamps), and a publisher in this process writing straight to Redis. So
every message crosses a process boundary through Redis before its fan-out.

* ``ours``: ``python -m server --processes N --broker redis://…`` (Streams:
  ``XADD`` by the Lua script the server uses; each process's reader thread
  ``XREAD``s and fans out on its own IO thread).
* ``peer``: websockets asyncio + Redis Pub/Sub, as websockets' docs suggest
  for several processes: each process ``SUBSCRIBE``s with ``redis.asyncio``
  and calls ``websockets.asyncio.server.broadcast`` for each message
  (``python -m bench.scaleout peer --port P --redis URL``).

Throughput: M messages published as fast as Redis takes them; deliveries/s =
C*M / (last arrival - first publish). Latency: a fixed rate, the first 8
payload bytes are ``time.monotonic_ns()`` at the publish call; p50/p99 from
publish to the kernel's receive timestamp. One run per figure (the machine is
small and shared); read ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import struct
import subprocess
import sys
import time
from typing import Any

from server.scaleout.broker import _XADD_LUA

CHANNEL = "wsrace-bench"


def _publisher(url: str, design: str) -> tuple[Any, Any]:
    import redis

    client = redis.Redis.from_url(url)
    return client, client.register_script(_XADD_LUA) if design == "ours" else None


def publish(url: str, design: str, count: int, size: int, rate: float) -> float:
    """Publish ``count`` messages (``rate`` 0: as fast as possible, batches of 64); return the first publish time."""
    client, script = _publisher(url, design)
    pad = b"x" * (size - 8)
    first = time.monotonic()
    batch = 1 if rate else 64
    sent = 0
    while sent < count:
        pipe = client.pipeline(transaction=False)
        for _ in range(min(batch, count - sent)):
            data = struct.pack("!Q", time.monotonic_ns()) + pad
            if script is not None:
                script(keys=["wsrace:stream:", "wsrace:seq:", "wsrace:epoch:"],
                       args=[1_000_000, "bench", sent, "b", data, "be0c0001"], client=pipe)
            else:
                pipe.publish(CHANNEL, data)
            sent += 1
        pipe.execute()
        if rate:
            delay = first + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    return first


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_servers(design: str, processes: int, redis_url: str) -> tuple[list[subprocess.Popen[str]], int]:
    if design == "ours":
        proc = subprocess.Popen([sys.executable, "-m", "server", "--port", "0", "--processes", str(processes),
                                 "--broker", redis_url, "--stream-maxlen", "1000000", "--log-level", "WARNING",
                                 "--ping-interval", "0"], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        return [proc], int(line.rsplit(":", 1)[1])
    port = free_port()
    procs = []
    for _ in range(processes):
        proc = subprocess.Popen([sys.executable, "-m", "bench.scaleout", "peer", "--port", str(port), "--redis", redis_url],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        proc.stdout.readline()
        procs.append(proc)
    return procs, port


def run_one(design: str, processes: int, redis_url: str, connections: int, count: int, size: int,
            rate: float) -> dict[str, Any]:
    servers, port = start_servers(design, processes, redis_url)
    try:
        client = subprocess.Popen([sys.executable, "-m", "bench.client", "--port", str(port), "--connections",
                                   str(connections), "--expect", str(count), "--size", str(size), "--path", "/broadcast",
                                   "--idle-timeout", "5", *(["--latency"] if rate else [])],
                                  stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None
        json.loads(client.stdout.readline())  # connected
        time.sleep(1.0)  # every subscription registered
        first = publish(redis_url, design, count, size, rate)
        result = json.loads(client.stdout.readline())
        client.wait(30)
    finally:
        for proc in servers:
            proc.send_signal(signal.SIGTERM)
        for proc in servers:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    seconds = (result["last_ns"] / 1e9 - first) if result["last_ns"] else float("nan")
    return {"design": design, "processes": processes, "deliveries": result["messages"],
            "expected": connections * count, "violations": result["violations"],
            "deliveries_per_s": result["messages"] / seconds if seconds > 0 else 0.0,
            "latency_ms": result["latency_ms"]}


async def peer_main(port: int, redis_url: str) -> None:
    """The peer: websockets asyncio + Redis Pub/Sub (one process; run several on one port)."""
    import redis.asyncio as aioredis
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    clients: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(handler, "127.0.0.1", port, reuse_port=True, compression=None, ping_interval=None):
        pubsub = aioredis.from_url(redis_url).pubsub()
        await pubsub.subscribe(CHANNEL)
        print("ready", flush=True)

        async def relay() -> None:
            async for message in pubsub.listen():
                if message["type"] == "message":
                    broadcast(clients, message["data"])

        task = asyncio.create_task(relay())
        await stop
        task.cancel()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.scaleout")
    sub = p.add_subparsers(dest="cmd")
    peer = sub.add_parser("peer")
    peer.add_argument("--port", type=int, required=True)
    peer.add_argument("--redis", required=True)
    p.add_argument("--connections", type=int, default=40)
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--rate", type=float, default=500.0, help="latency runs: messages per second")
    p.add_argument("--latency-seconds", type=float, default=4.0)
    p.add_argument("--json", default="bench/scaleout-results.json")
    args = p.parse_args()
    if args.cmd == "peer":
        asyncio.run(peer_main(args.port, args.redis))
        return
    from tests.redis_server import RedisServer

    redis_server = RedisServer().start()
    results = []
    try:
        print(f"load before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs", flush=True)
        for design in ("ours", "peer"):
            for processes in (1, 2):
                r = run_one(design, processes, redis_server.url, args.connections, args.count, args.size, 0)
                r["kind"] = "throughput"
                results.append(r)
                print(json.dumps(r), flush=True)
        n = int(args.rate * args.latency_seconds)
        for design in ("ours", "peer"):
            r = run_one(design, 2, redis_server.url, args.connections, n, args.size, args.rate)
            r["kind"] = "latency"
            results.append(r)
            print(json.dumps(r), flush=True)
        print(f"load after: {os.getloadavg()[0]:.2f} (1 min)", flush=True)
    finally:
        redis_server.stop()
    tput = {(r["design"], r["processes"]): r["deliveries_per_s"] for r in results if r["kind"] == "throughput"}
    lat = {r["design"]: r["latency_ms"] for r in results if r["kind"] == "latency"}
    print(f"\n== fan-out through Redis, {args.size} B, 1 publisher -> {args.connections} subscribers, "
          f"{args.count} messages")
    print(f"{'design':<34}{'1 process':>14}{'2 processes':>14}{'2/1':>8}")
    for design, name in (("ours", "ours (Streams, IO thread)"), ("peer", "websockets asyncio + Pub/Sub")):
        one, two = tput[(design, 1)], tput[(design, 2)]
        print(f"{name:<34}{one:>14,.0f}{two:>14,.0f}{two / one:>7.2f}x")
    print(f"ours / peer: 1 process {tput[('ours', 1)] / tput[('peer', 1)]:.2f}x, "
          f"2 processes {tput[('ours', 2)] / tput[('peer', 2)]:.2f}x")
    print(f"\n== latency publish -> client, 2 processes, {args.rate:.0f} msg/s x {args.connections} subscribers")
    for design in ("ours", "peer"):
        print(f"{design:<6} p50 {lat[design]['p50']:.2f} ms  p99 {lat[design]['p99']:.2f} ms  "
              f"max {lat[design]['max']:.2f} ms  (n={lat[design]['n']})")
    print(f"ours / peer: p50 {lat['ours']['p50'] / lat['peer']['p50']:.2f}x, "
          f"p99 {lat['ours']['p99'] / lat['peer']['p99']:.2f}x")
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
