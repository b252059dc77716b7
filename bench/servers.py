"""One benchmark server per process: ``python -m bench.servers KIND``.

Every kind accepts WebSocket connections on any path and, on command, runs
producer threads that send each message to every connected client — the
fan-out workload. ``--outbox BYTES`` sets ours' ``Limits.max_queue_bytes`` (default:
``Limits()``'s). Commands arrive as JSON lines on stdin; answers are JSON
lines on stdout:

    {"cmd": "produce", "producers": 4, "count": 1000, "size": 256, "rate": 0}
    {"cmd": "stats"}
    {"cmd": "quit"}

Kinds: ``ours-loop`` (ours, the per-client loop users write for a fan-out,
as documented: ``for conn in server.open_connections(): conn.send(payload,
fanout=True)`` — in every workload: a full member is waited for at most
``Limits.fanout_wait``, as by ``broadcast``; only C and its variants have a
client that falls that far behind),
``ours-broadcast`` (ours, ``Server.broadcast``), ``sws-lock`` (simple-websocket + lock),
``websockets-asyncio`` (call_soon_threadsafe), ``websockets-sync``, ``raw``
(pre-encoded frames, one writer thread per connection, batched sendall) and
``direct`` (ours with workers writing directly: corrupt, for information);
``ours-loop-nometrics`` and ``ours-broadcast-nometrics``: ours with
``Server(metrics=False)``, beside ours in workload A to price the metrics.

The request/response workload R (``bench/echo_bench.py``) uses echo kinds
instead: every message a client sends comes back unchanged. ``ours-echo`` is
the demo application of ``python -m server`` (``server.demo.app.DemoApp``: ``/echo``
through the worker pool, ``/echo-inline`` on the IO thread; bench limits:
keepalive and compression off), ``flask-sock-werkzeug`` is ``bench/flask_app.py``'s
flask-sock ``/echo`` view under Werkzeug's threaded server, ``picows`` a picows
echo listener (``pip install picows``; skipped without it). Both websockets
kinds echo too (the fan-out workloads' clients never send, so there they only
wait). The echo kinds answer ``stats`` like the others; ``produce`` is not theirs.

``--certfile PEM --keyfile PEM``: serve wss:// (TLS) instead. ``TLS_KINDS`` can:
``sws-lock`` (the accepted socket wrapped, its handshake on the connection's
thread; simple-websocket's reader thread and the producers then share one SSL
object, as in a Flask app behind no proxy), ``websockets-asyncio``
(``serve(ssl=...)``), ``raw`` and ours (``Server(ssl_context=...)``).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import resource
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from server.errors import ConnectionClosed
from server.protocol.handshake import Handshake

KINDS = ["ours-loop", "ours-broadcast", "sws-lock", "websockets-asyncio", "websockets-sync", "raw", "direct"]
# Ours with Server(metrics=False): workload A runs them beside ours to price the metrics (issue 23: <= 5 %).
NO_METRICS = ["ours-loop-nometrics", "ours-broadcast-nometrics"]
# Servers that echo every message (workload R); the websockets kinds above echo as well.
ECHO_KINDS = ["ours-echo", "flask-sock-werkzeug", "picows"]
OURS = ("ours-loop", "ours-broadcast")
# Kinds that serve wss:// with --certfile/--keyfile. Ours joins once Server takes ssl_context (issue 9).
TLS_KINDS = ["ours-loop", "ours-broadcast", "sws-lock", "websockets-asyncio", "raw"]


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Base:
    """A kind: ``start()`` returns the port; ``send_all(payload)`` sends to every client."""

    def start(self) -> int:
        raise NotImplementedError

    def connections(self) -> int:
        raise NotImplementedError

    def send_all(self, payload: bytes) -> None:
        raise NotImplementedError

    def extra(self) -> dict[str, object]:
        return {}


# -- ours ------------------------------------------------------------------------


class Ours(Base):
    """``mode``: ``loop`` (``conn.send(payload, fanout=True)`` per client), ``broadcast`` (``Server.broadcast``) or
    ``direct`` (the bug: the same loop over ``DirectConnection``)."""

    def __init__(self, mode: str, outbox: int | None = None, ssl_context: ssl.SSLContext | None = None,
                 metrics: bool = True) -> None:
        from server import ConnectionHandle, Limits, Server

        class Sink:
            def on_open(self, conn: ConnectionHandle) -> None:
                pass

            def on_message(self, conn: ConnectionHandle, message: str | bytes) -> None:
                pass

            def on_close(self, conn: ConnectionHandle) -> None:
                pass

        class Router:
            def route(self, request: object) -> Sink:
                return Sink()

        server_cls: type[Server] = Server
        if mode == "direct":
            from repro.disciplines import DirectConnection, KnobServer

            class DirectServer(KnobServer):
                connection_class = DirectConnection

            server_cls = DirectServer
        self.mode = mode
        # Default limits (keepalive and compression off, as for the peers); C narrows the outbox.
        limits = Limits(ping_interval=None, deflate=False)
        if outbox is not None:
            limits = Limits(ping_interval=None, deflate=False, max_queue_bytes=outbox)
        tls: dict[str, object] = {"ssl_context": ssl_context} if ssl_context is not None else {}
        try:
            self.server = server_cls(Router(), port=0, workers=4, limits=limits, metrics=metrics,
                                     **tls)  # type: ignore[arg-type]
        except TypeError as exc:
            if "ssl_context" in str(exc):
                raise SystemExit(f"ours ({mode}): the server does not take ssl_context yet, so it cannot serve wss:// ({exc})") from None
            raise

    def start(self) -> int:
        self.server.start()
        return self.server.port

    def connections(self) -> int:
        return len(self.server.open_connections())

    def send_all(self, payload: bytes) -> None:
        if self.mode == "broadcast":
            self.server.broadcast(payload, self.server.open_connections())  # encoded once; waits for room itself
            return
        # The loop users write for a fan-out: fanout=True waits at most Limits.fanout_wait for a full member, then
        # closes it as too slow (point-to-point send() would pace the loop to its slowest member, up to stall_timeout).
        # OutMessage.of encodes once per thread.
        for conn in self.server.open_connections():
            try:
                conn.send(payload, fanout=True)
            except ConnectionClosed:
                pass

    def extra(self) -> dict[str, object]:
        stats = self.server.stats
        return {"closed_by_policy": stats.closed_by_policy, "closed_too_slow": stats.closed_too_slow,
                "closed_stalled": stats.closed_stalled, "dropped": stats.dropped_messages,
                "backlog_waits": self.server.send_backlog.waits, "backlog_peak": self.server.send_backlog.peak}


# -- thread-per-connection servers ------------------------------------------------------


class ThreadedListener(Base):
    """Accepts on a thread; reads each request with h11 (blocking) and hands the socket on.

    ``ssl_context``: each accepted socket is wrapped (handshake deferred to ``read_request``, on whichever
    thread reads the request), so the kinds built on this serve wss://.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
        self.lock = threading.Lock()
        self.ssl_context = ssl_context

    def start(self) -> int:
        threading.Thread(target=self._accept, daemon=True).start()
        return self.listener.getsockname()[1]

    def _accept(self) -> None:
        while True:
            sock, _ = self.listener.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            self.on_socket(sock)

    @staticmethod
    def read_request(sock: socket.socket) -> Handshake:
        """Read one request (over TLS: the TLS handshake first, blocking, on this thread); the handshake answers it."""
        if isinstance(sock, ssl.SSLSocket):
            sock.do_handshake()
        handshake = Handshake()
        while handshake.receive_data(sock.recv(65536)) is None:
            pass
        return handshake

    def on_socket(self, sock: socket.socket) -> None:
        raise NotImplementedError


class SwsLock(ThreadedListener):
    """simple-websocket + lock: one thread per connection, as under Werkzeug."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(ssl_context)
        self.clients: list[tuple[object, threading.Lock]] = []

    def on_socket(self, sock: socket.socket) -> None:
        threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        import simple_websocket

        request = self.read_request(sock).request
        assert request is not None
        environ: dict[str, object] = {"werkzeug.socket": sock}
        environ.update({"HTTP_" + k.upper().replace("-", "_"): v for k, v in request.headers.items()})
        ws = simple_websocket.Server.accept(environ)
        with self.lock:
            self.clients.append((ws, threading.Lock()))

    def connections(self) -> int:
        return len(self.clients)

    def send_all(self, payload: bytes) -> None:
        import simple_websocket

        for ws, lock in list(self.clients):
            try:
                with lock:
                    ws.send(payload)  # type: ignore[attr-defined]
            except (simple_websocket.ConnectionClosed, OSError):
                pass


# -- websockets ---------------------------------------------------------------------


def _serve_on(owner: Base, loop: Any, create: Callable[[], Any], ready: threading.Event) -> None:
    """Run an asyncio server on ``loop`` for ever (this thread); ``owner.port`` is set, then ``ready``.

    ``create``: makes the awaitable that creates the server (called on the running loop).
    """
    async def main() -> None:
        server = await create()
        owner.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        ready.set()
        await server.serve_forever()

    loop.run_until_complete(main())


class WebsocketsAsyncio(Base):
    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        import asyncio

        self.ssl_context = ssl_context
        self.asyncio = asyncio
        self.loop = asyncio.new_event_loop()
        self.conns: set = set()
        self.port = 0

    def start(self) -> int:
        ready = threading.Event()

        def run() -> None:
            from websockets.asyncio.server import ServerConnection, serve
            from websockets.exceptions import ConnectionClosed as WsClosed

            async def handler(ws: ServerConnection) -> None:
                # Echoes what a client sends (workload R); the fan-out clients send nothing, so there it only waits.
                self.conns.add(ws)
                try:
                    async for message in ws:
                        await ws.send(message)
                except WsClosed:
                    pass
                finally:
                    self.conns.discard(ws)

            _serve_on(self, self.loop, lambda: serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None,
                                                     max_queue=None, ssl=self.ssl_context), ready)

        threading.Thread(target=run, daemon=True).start()
        ready.wait()
        return self.port

    def connections(self) -> int:
        return len(self.conns)

    def send_all(self, payload: bytes) -> None:
        from websockets.asyncio.server import broadcast

        self.loop.call_soon_threadsafe(broadcast, list(self.conns), payload)


class WebsocketsSync(Base):
    def __init__(self) -> None:
        self.conns: list = []
        self.lock = threading.Lock()

    def start(self) -> int:
        from websockets.sync.server import serve

        def handler(ws: object) -> None:
            with self.lock:
                self.conns.append(ws)
            try:
                for message in ws:  # type: ignore[attr-defined]
                    ws.send(message)  # type: ignore[attr-defined]  # workload R; the fan-out clients send nothing
            except Exception:
                pass

        self.server = serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None, max_queue=None)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.server.socket.getsockname()[1]

    def connections(self) -> int:
        return len(self.conns)

    def send_all(self, payload: bytes) -> None:
        for ws in list(self.conns):
            try:
                ws.send(payload)
            except Exception:
                pass


# -- raw reference --------------------------------------------------------------------


class Raw(ThreadedListener):
    """Pre-encoded frames, one writer thread per connection, batched sendall."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(ssl_context)
        self.queues: list[queue.SimpleQueue] = []

    def on_socket(self, sock: socket.socket) -> None:
        sock.sendall(self.read_request(sock).accept(deflate=False)[0])
        q: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._writer, args=(sock, q), daemon=True).start()
        with self.lock:
            self.queues.append(q)

    @staticmethod
    def _writer(sock: socket.socket, q: queue.SimpleQueue) -> None:
        while True:
            batch = [q.get()]
            while True:  # batch whatever else is queued
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            try:
                sock.sendall(b"".join(batch))
            except OSError:
                return

    def connections(self) -> int:
        return len(self.queues)

    def send_all(self, payload: bytes) -> None:
        from server.protocol.frames import frame_header

        frame = frame_header(0x2, len(payload)) + payload  # encoded once
        for q in self.queues:
            q.put(frame)


# -- echo servers (workload R) ------------------------------------------------------------


class OursEcho(Base):
    """The demo application of ``python -m server`` (``server.demo.app.DemoApp``) with its default worker count:
    ``/echo`` hands each message to the worker pool (``concurrent_messages = True``), ``/echo-inline`` (where
    the demo app has it) answers on the IO thread. Bench limits: keepalive and compression off."""

    def __init__(self) -> None:
        from server import Limits, Server
        from server.cli import build_parser
        from server.demo.app import DemoApp

        workers = build_parser().get_default("workers")  # what `python -m server` runs with
        self.server = Server(DemoApp, port=0, workers=workers, limits=Limits(ping_interval=None, deflate=False))

    def start(self) -> int:
        self.server.start()
        return self.server.port

    def connections(self) -> int:
        return len(self.server.open_connections())

    def extra(self) -> dict[str, object]:
        stats = self.server.stats
        return {"closed_by_policy": stats.closed_by_policy, "handler_errors": stats.handler_errors,
                "inline_slow": getattr(stats, "inline_slow", None)}  # inline handlers that held the IO thread too long


class FlaskSockWerkzeug(Base):
    """``bench/flask_app.py``'s flask-sock app (``create_app(fixed=False)``, ``/echo``: ``while True:
    ws.send(ws.receive())``) under Werkzeug's threaded development server: a thread per connection, as
    ``flask run`` serves it."""

    def __init__(self) -> None:
        from werkzeug.serving import make_server

        from .flask_app import create_app

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on a pipe nobody reads
        app = create_app(fixed=False)
        self.open = 0
        self.lock = threading.Lock()

        def counted(environ: dict, start_response: Callable) -> object:
            # A flask-sock view runs inside the WSGI call for its connection's life: calls in progress = connections.
            with self.lock:
                self.open += 1
            try:
                return app(environ, start_response)
            finally:
                with self.lock:
                    self.open -= 1

        self.server = make_server("127.0.0.1", 0, counted, threaded=True)  # type: ignore[arg-type]

    def start(self) -> int:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.server.server_port

    def connections(self) -> int:
        return self.open


class PicowsEcho(Base):
    """A picows echo listener on its own asyncio loop (the standard one, as for websockets asyncio): each data
    frame goes back as it came (picows works frame by frame; R's clients send whole messages, one frame each)."""

    def __init__(self) -> None:
        try:
            import picows  # noqa: F401
        except ImportError:
            raise SystemExit("picows is not installed (pip install picows): no picows peer") from None
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.open = 0
        self.port = 0

    def start(self) -> int:
        from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

        kind = self

        class Echo(WSListener):
            def on_ws_connected(self, transport: WSTransport) -> None:
                kind.open += 1

            def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
                if frame.msg_type == WSMsgType.CLOSE:
                    transport.send_close(frame.get_close_code(), frame.get_close_message())
                    transport.disconnect()
                elif frame.msg_type in (WSMsgType.BINARY, WSMsgType.TEXT, WSMsgType.CONTINUATION):
                    transport.send(frame.msg_type, frame.get_payload_as_memoryview(), frame.fin)

            def on_ws_disconnected(self, transport: WSTransport) -> None:
                kind.open -= 1

        def listener(request: WSUpgradeRequest) -> WSListener:
            return Echo()

        ready = threading.Event()

        def run() -> None:
            _serve_on(self, self.loop, lambda: ws_create_server(listener, "127.0.0.1", 0), ready)

        threading.Thread(target=run, daemon=True).start()
        ready.wait()
        return self.port

    def connections(self) -> int:
        return self.open


def make(kind: str, outbox: int | None = None, ssl_context: ssl.SSLContext | None = None) -> Base:
    """A server of ``kind``; ``ssl_context`` (a server context): wss://, for ``TLS_KINDS`` (ours: see ``Ours``)."""
    if ssl_context is not None and kind not in TLS_KINDS and kind not in (*OURS, "direct"):
        raise SystemExit(f"{kind} does not serve TLS in this benchmark (TLS kinds: {', '.join(TLS_KINDS)})")
    factories: dict[str, Callable[[], Base]] = {
        "ours-loop": lambda: Ours("loop", outbox, ssl_context),
        "ours-broadcast": lambda: Ours("broadcast", outbox, ssl_context),
        "ours-loop-nometrics": lambda: Ours("loop", outbox, ssl_context, metrics=False),
        "ours-broadcast-nometrics": lambda: Ours("broadcast", outbox, ssl_context, metrics=False),
        "direct": lambda: Ours("direct", outbox, ssl_context),
        "sws-lock": lambda: SwsLock(ssl_context),
        "websockets-asyncio": lambda: WebsocketsAsyncio(ssl_context),
        "websockets-sync": WebsocketsSync,
        "raw": lambda: Raw(ssl_context),
        "ours-echo": OursEcho,
        "flask-sock-werkzeug": FlaskSockWerkzeug,
        "picows": PicowsEcho,
    }
    return factories[kind]()


def server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context


def produce(server: Base, producers: int, count: int, size: int, rate: float) -> dict[str, object]:
    """Each producer sends ``count`` messages of ``size`` bytes to every client.

    The first 8 payload bytes carry ``time.monotonic_ns()`` at the send call
    (same host clock as the clients), for latency.
    """
    filler = b"\x5a" * max(0, size - 8)
    longest = [0.0] * producers
    sends: list[list[float]] = [[] for _ in range(producers)]
    barrier = threading.Barrier(producers + 1)

    def run(p: int) -> None:
        barrier.wait()
        period = 1.0 / rate if rate else 0.0
        next_at = time.monotonic()
        for _ in range(count):
            if period:
                next_at += period
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            t0 = time.monotonic_ns()
            server.send_all(t0.to_bytes(8, "big") + filler)
            took = (time.monotonic_ns() - t0) / 1e9
            sends[p].append(took)
            if took > longest[p]:
                longest[p] = took

    threads = [threading.Thread(target=run, args=(p,)) for p in range(producers)]
    for t in threads:
        t.start()
    cpu0 = cpu_seconds()
    start_ns = time.monotonic_ns()
    barrier.wait()
    started = time.monotonic()
    for t in threads:
        t.join()
    all_sends = sorted(s for per in sends for s in per)
    p999 = all_sends[min(len(all_sends) - 1, int(len(all_sends) * 0.999))] if all_sends else 0.0
    return {
        "producer_seconds": time.monotonic() - started,
        "cpu_at_start": cpu0,
        "max_send": max(longest),
        "p999_send": p999,
        "start_ns": start_ns,
    }


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.servers")
    parser.add_argument("kind", choices=KINDS + NO_METRICS + ECHO_KINDS)
    parser.add_argument("--outbox", type=int, default=None, help="ours: Limits.max_queue_bytes (default: Limits()'s)")
    parser.add_argument("--certfile", default=None, help="serve wss://: the certificate chain (PEM); needs --keyfile")
    parser.add_argument("--keyfile", default=None, help="serve wss://: the private key (PEM); needs --certfile")
    args = parser.parse_args()
    if (args.certfile is None) != (args.keyfile is None):
        parser.error("--certfile and --keyfile go together")
    try:
        import resource as r

        _soft, hard = r.getrlimit(r.RLIMIT_NOFILE)
        r.setrlimit(r.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    context = server_context(args.certfile, args.keyfile) if args.certfile else None
    server = make(args.kind, args.outbox, context)
    port = server.start()
    print(json.dumps({"ready": port, "pid": os.getpid(), "tls": context is not None}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        if cmd["cmd"] == "stats":
            print(json.dumps({"connections": server.connections(), "rss_kib": rss_kib(), "peak_rss_kib": peak_rss_kib(),
                              "threads": threading.active_count(), "cpu": cpu_seconds(), **server.extra()}), flush=True)
        elif cmd["cmd"] == "produce":
            result = produce(server, cmd["producers"], cmd["count"], cmd["size"], cmd.get("rate", 0))
            print(json.dumps({**result, "cpu": cpu_seconds(), "rss_kib": rss_kib(), "peak_rss_kib": peak_rss_kib(),
                              "threads": threading.active_count(), **server.extra()}), flush=True)
    os._exit(0)  # daemon threads and open sockets go with the process


if __name__ == "__main__":
    main()
