"""``python -m server`` / ``wsrace-server``: run the fixed server."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from .admission import nofile_limit, raise_nofile_limit
from .core import affinity
from .core.tls import TlsConfigError, server_context
from .demo.app import DemoApp
from .errors import WsraceError
from .limits import Limits, OverflowPolicy
from .observe.prometheus import MetricsHttpServer, require_client, serve, serve_gathered
from .scaleout.broker import DEFAULT_MAXLEN, DEFAULT_PUBLISH_QUEUE, Broker, BrokerError, make_broker
from .server import Server

logger = logging.getLogger("server")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsrace-server", description="WebSocket server where one IO thread does every write.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--certfile", metavar="PATH",
                   help="serve wss:// (and the page over https://) with this PEM certificate chain; needs --keyfile")
    p.add_argument("--keyfile", metavar="PATH", help="the PEM private key of --certfile (unencrypted)")
    p.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one (default: %(default)s)")
    p.add_argument("--workers", type=int, default=8, help="worker threads for message handlers (default: %(default)s)")
    p.add_argument("--max-queue-bytes", type=int, default=Limits.max_queue_bytes,
                   help="per-client queue limit in bytes: past it producers wait (close) or messages are dropped (drop) "
                        "(default: %(default)s)")
    p.add_argument("--overflow", choices=[p.value for p in OverflowPolicy], default="close",
                   help="when a client's queue is full: wait while it drains (a fan-out: at most --fanout-wait) and "
                        "close it with 1008 if it stalls or falls behind the feed, or drop the new message "
                        "(default: %(default)s)")
    p.add_argument("--stall-timeout", type=float, default=Limits.stall_timeout,
                   help="a client whose queue is full and that takes nothing this long (no byte accepted by its socket, "
                        "none acknowledged by its TCP) is closed with 1008 (default: %(default)s s)")
    p.add_argument("--fanout-wait", type=float, default=Limits.fanout_wait,
                   help="the longest a broadcast or publish waits for one member's full queue before that member is "
                        "closed (1008, too slow for this feed) or, with --overflow drop, skipped (default: %(default)s s)")
    p.add_argument("--max-backlog-bytes", type=int, default=64 * 1024 * 1024,
                   help="server-wide: bytes sent by producers and not yet taken by the IO thread; "
                        "past it producers wait (default: %(default)s)")
    p.add_argument("--max-message-bytes", type=int, default=Limits.max_message_bytes,
                   help="largest message accepted from a client; larger ones close it with 1009 (default: %(default)s)")
    p.add_argument("--ping-interval", type=float, default=20.0,
                   help="keepalive ping period in seconds, 0 to disable (default: %(default)s)")
    p.add_argument("--ping-timeout", type=float, default=20.0, help="seconds to wait for a pong (default: %(default)s)")
    p.add_argument("--no-deflate", action="store_true", help="refuse permessage-deflate")
    p.add_argument("--publishers", type=int, default=0, help="ticker threads publishing to /broadcast (default: %(default)s)")
    p.add_argument("--rate", type=float, default=10.0, help="messages per second per ticker (default: %(default)s)")
    p.add_argument("--max-connections", type=int, default=None,
                   help="connections held at once; past it new clients get HTTP 503 with Retry-After "
                        "(default: the open-file limit minus headroom)")
    p.add_argument("--max-connections-per-ip", type=int, default=None,
                   help="connections from one address; past it HTTP 429 (default: no limit)")
    p.add_argument("--max-handshakes", type=int, default=None,
                   help="handshakes in progress at once; past it HTTP 503 (default: half of --max-connections)")
    p.add_argument("--busy-handshake-timeout", type=float, default=Limits.busy_handshake_timeout,
                   help="handshake timeout under pressure, instead of 10 s (default: %(default)s)")
    p.add_argument("--broker", default="memory://",
                   help="where /broadcast and Server.publish() messages go: memory:// (this process only) or "
                        "redis://HOST:PORT/DB (Redis Streams: every process and host on it is one broadcast domain; "
                        "needs pip install 'wsrace[redis]') (default: %(default)s)")
    p.add_argument("--stream-maxlen", type=int, default=DEFAULT_MAXLEN,
                   help="messages each topic's history keeps (Redis: XADD MAXLEN ~ N; memory://: exactly N): a "
                        "subscriber resuming from further back (since=) is closed with 4410, a Redis reader further "
                        "behind closes its subscribers with 1013 (default: %(default)s)")
    p.add_argument("--publish-queue", type=int, default=DEFAULT_PUBLISH_QUEUE,
                   help="Redis: publishes held while the broker is unreachable; past it publishing fails "
                        "(a /broadcast client is closed with 1013) (default: %(default)s)")
    p.add_argument("--processes", default="1",
                   help="server processes on one port (SO_REUSEPORT), each with its own IO thread; 'auto': one per "
                        "core. More than 1 needs a shared --broker (default: %(default)s)")
    p.add_argument("--reuse-port", action="store_true",
                   help="listen with SO_REUSEPORT (set by --processes for its children)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on http://METRICS-HOST:PORT/metrics (0: a free port, printed); with "
                        "--processes, one port for all, labelled by process; needs pip install 'wsrace[metrics]' "
                        "(default: off)")
    p.add_argument("--metrics-host", default=None, help="address for --metrics-port (default: --host)")
    p.add_argument("--slow-warn", type=float, default=Limits.slow_warn,
                   help="a client whose oldest queued message is older than this is logged and counted as slow "
                        "(default: %(default)s s)")
    p.add_argument("--check-affinity", action="store_true",
                   help="raise on any socket write off the IO thread (also WSRACE_CHECK_AFFINITY=1)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="(default: %(default)s)")
    return p


def positive(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("workers", "max_queue_bytes", "max_message_bytes", "max_backlog_bytes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be 0..65535")
    for name in ("max_connections", "max_connections_per_ip", "max_handshakes"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.stall_timeout <= 0:
        parser.error("--stall-timeout must be > 0")
    if args.slow_warn <= 0:
        parser.error("--slow-warn must be > 0")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        parser.error("--metrics-port must be 0..65535")
    if args.fanout_wait < 0:
        parser.error("--fanout-wait must be >= 0")
    if args.busy_handshake_timeout <= 0:
        parser.error("--busy-handshake-timeout must be > 0")
    if args.publishers < 0 or args.rate <= 0:
        parser.error("--publishers must be >= 0 and --rate > 0")
    if args.stream_maxlen < 1 or args.publish_queue < 1:
        parser.error("--stream-maxlen and --publish-queue must be at least 1")


def process_count(parser: argparse.ArgumentParser, value: str) -> int:
    if value == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        n = int(value)
    except ValueError:
        parser.error(f"--processes must be a number or 'auto', not {value!r}")
    if n < 1:
        parser.error("--processes must be at least 1")
    return n


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    positive(parser, args)
    processes = process_count(parser, args.processes)
    if (args.certfile is None) != (args.keyfile is None):
        parser.error("--certfile and --keyfile go together: give both for wss://, or neither")
    ssl_context = None
    if args.certfile:
        try:
            ssl_context = server_context(args.certfile, args.keyfile)  # checked here, not in N children
        except TlsConfigError as exc:
            print(f"wsrace-server: {exc}", file=sys.stderr)
            return 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metrics_host = args.metrics_host or args.host
    if args.metrics_port is not None:
        try:
            require_client()  # checked here: a clear error, not one per child
        except WsraceError as exc:
            print(f"wsrace-server: {exc}", file=sys.stderr)
            return 2
    if processes > 1:
        if args.broker.split(":", 1)[0].lower() == "memory":
            print(f"wsrace-server: --processes {processes} needs a shared broker: with {args.broker} each process "
                  "would broadcast only to its own clients (split brain); pass --broker redis://HOST:PORT/DB",
                  file=sys.stderr)
            return 2
        try:
            make_broker(args.broker, args.stream_maxlen, args.publish_queue)  # fail here, not in N children
        except BrokerError as exc:
            print(f"wsrace-server: {exc}", file=sys.stderr)
            return 2
        from .scaleout.supervisor import supervise

        gathered = None
        if args.metrics_port is not None:
            def gathered(children: Callable[[], list[tuple[int, str | None]]]) -> MetricsHttpServer:
                return serve_gathered(children, metrics_host, args.metrics_port)
        return supervise(sys.argv[1:] if argv is None else argv, args.host, args.port, processes,
                         "wss" if ssl_context else "ws", gathered)
    from .scaleout.supervisor import watch_supervisor

    watch_supervisor()  # a child of --processes: leave with the supervisor
    try:
        broker: Broker = make_broker(args.broker, args.stream_maxlen, args.publish_queue)
    except BrokerError as exc:
        print(f"wsrace-server: {exc}", file=sys.stderr)
        return 2
    if args.check_affinity:
        affinity.set_enabled(True)
    limits = Limits(
        max_queue_bytes=args.max_queue_bytes,
        overflow=OverflowPolicy(args.overflow),
        stall_timeout=args.stall_timeout,
        fanout_wait=args.fanout_wait,
        max_message_bytes=args.max_message_bytes,
        ping_interval=args.ping_interval or None,
        ping_timeout=args.ping_timeout,
        deflate=not args.no_deflate,
        max_connections=args.max_connections,
        max_connections_per_ip=args.max_connections_per_ip,
        max_handshakes=args.max_handshakes,
        busy_handshake_timeout=args.busy_handshake_timeout,
        slow_warn=args.slow_warn,
    )
    raise_nofile_limit()  # before the server sizes its default --max-connections from it
    try:
        server = Server(DemoApp, host=args.host, port=args.port, workers=args.workers, limits=limits,
                        max_backlog_bytes=args.max_backlog_bytes, broker=broker, reuse_port=args.reuse_port,
                        ssl_context=ssl_context)
    except OSError as exc:
        print(f"wsrace-server: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    server.start()
    metrics_http: MetricsHttpServer | None = None
    if args.metrics_port is not None:
        try:
            metrics_http = serve(lambda: server.metrics, metrics_host, args.metrics_port)
        except OSError as exc:
            print(f"wsrace-server: cannot serve metrics on {metrics_host}:{args.metrics_port}: {exc.strerror or exc}",
                  file=sys.stderr)
            server.shutdown()
            return 2
        shown = f"[{metrics_host}]" if ":" in metrics_host else metrics_host
        print(f"metrics on http://{shown}:{metrics_http.port}/metrics", flush=True)  # before the ready line
    logger.info("broker: %s", args.broker)
    logger.info("admission: max %d connections (%s), %d handshakes at once; open-file limit %d",
                server.admission.max_connections, "set" if args.max_connections else "from the open-file limit",
                server.admission.max_handshakes, nofile_limit())
    if args.publishers:
        server.router.hub.start_tickers(args.publishers, args.rate)  # type: ignore[attr-defined]

    def announce(srv: Server) -> None:
        # The one line tools and tests wait for.
        print(f"listening on {srv.url}", flush=True)
        logger.info("the live check page: %s", srv.page_url)

    try:
        clean = server.serve_forever(ready=announce)
    finally:
        if metrics_http is not None:
            metrics_http.close()
    return 0 if clean else 1
