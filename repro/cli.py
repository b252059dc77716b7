"""``python -m repro`` / ``wsrace-repro``: reproduce, diagnose, and show the fix.

    python -m repro                 # every discipline, default workload, table
    python -m repro --json          # the same as JSON
    python -m repro --tls           # every discipline over wss:// (a throwaway certificate): the TLS half of the bug
    python -m repro serve --mode direct --port 8766   # a live broken server (--tls: over wss://)
    python -m repro check ws://127.0.0.1:5000/echo    # is *your* server affected? (also: wsrace-check)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import ssl
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import fields

from server.core.tls import TlsConfigError, server_context

from . import check_cli
from .certs import CertError, CertFiles, make_cert_files
from .disciplines import DESCRIPTIONS, DISCIPLINES, UNSAFE, serve
from .run import TLS_VERDICTS, Result, Workload, format_results, run_discipline

logger = logging.getLogger("repro")


def _workload_args(p: argparse.ArgumentParser) -> None:
    d = Workload()
    g = p.add_argument_group("workload knobs (defaults reproduce on a 2-core machine)")
    g.add_argument("--producers", type=int, default=d.producers, help="threads sending on one connection (default: %(default)s)")
    g.add_argument("--count", type=int, default=d.count, help="messages per producer (default: %(default)s)")
    g.add_argument("--size", type=int, default=d.size, help="bytes per message (default: %(default)s)")
    g.add_argument("--sndbuf", type=int, default=d.sndbuf, help="server SO_SNDBUF, 0 = OS default (default: %(default)s)")
    g.add_argument("--rcvbuf", type=int, default=d.rcvbuf, help="client SO_RCVBUF, 0 = OS default (default: %(default)s)")
    g.add_argument("--switch-interval", type=float, default=d.switch_interval,
                   help="sys.setswitchinterval while running (default: %(default)s)")
    g.add_argument("--ping-interval", type=float, default=d.ping_interval,
                   help="client ping period in seconds, 0 = no pings (default: %(default)s)")
    g.add_argument("--deflate", action="store_true", help="negotiate permessage-deflate")
    g.add_argument("--time-limit", type=float, default=d.time_limit, help="seconds per discipline (default: %(default)s)")


def _workload(ns: argparse.Namespace) -> Workload:
    w = Workload(
        producers=ns.producers, count=ns.count, size=ns.size, sndbuf=ns.sndbuf or None, rcvbuf=ns.rcvbuf or None,
        switch_interval=ns.switch_interval, ping_interval=ns.ping_interval or None, deflate=ns.deflate, time_limit=ns.time_limit,
    )
    return w


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsrace-repro", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--disciplines", default=",".join(DISCIPLINES),
                   help="comma-separated subset of: " + ", ".join(DISCIPLINES) + " (default: all)")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--tls", action="store_true",
                   help="over wss:// with a throwaway certificate; the server runs in a child process, so a crash is reported")
    _workload_args(p)
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("serve", help="run the demo routes with one write discipline, for a browser or any client")
    s.add_argument("--mode", required=True, choices=DISCIPLINES)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8766)
    s.add_argument("--sndbuf", type=int, default=16 * 1024, help="server SO_SNDBUF, 0 = OS default (default: %(default)s)")
    s.add_argument("--publishers", type=int, default=0, help="ticker threads publishing to /broadcast")
    s.add_argument("--rate", type=float, default=10.0, help="messages per second per ticker")
    s.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    s.add_argument("--tls", action="store_true", help="serve wss:// with a throwaway certificate (its CA's path is printed)")
    s.add_argument("--certfile", help="serve wss:// with this certificate chain (PEM); with --keyfile")
    s.add_argument("--keyfile", help="the certificate's private key (PEM, unencrypted)")
    c = sub.add_parser("check", help="check any server's wire output (same as wsrace-check)", description=check_cli.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    check_cli.add_arguments(c)
    return p


def format_table(results: list[Result], workload: Workload) -> str:
    out = []
    knobs = ", ".join(f"{f.name}={getattr(workload, f.name)}" for f in fields(workload))
    over = " over wss:// (the server in a child process)" if any(r.tls for r in results) else ""
    out.append(f"workload: {workload.target}{over}  ({knobs})")
    out.append("")
    out.extend(format_results(results))
    return "\n".join(out)


def run_report(ns: argparse.Namespace) -> int:
    chosen = [d.strip() for d in ns.disciplines.split(",") if d.strip()]
    unknown = [d for d in chosen if d not in DISCIPLINES]
    if unknown:
        print(f"wsrace-repro: unknown discipline(s) {', '.join(unknown)}; choose from {', '.join(DISCIPLINES)}", file=sys.stderr)
        return 2
    workload = _workload(ns)
    results = []
    try:
        with _throwaway_certificate(ns.tls) as certs:
            for i, name in enumerate(chosen, 1):
                label = f"{name} (wss)" if certs else name
                print(f"[{i}/{len(chosen)}] {label:<23} {DESCRIPTIONS[name]} ...", file=sys.stderr, flush=True)
                result = run_discipline(name, workload, tls=certs)
                print(f"      -> {result.verdict} after {result.seconds:.1f} s ({result.ended})", file=sys.stderr, flush=True)
                results.append(result)
    except CertError as exc:
        print(f"wsrace-repro: {exc}", file=sys.stderr)
        return 2
    failures = [r.reason for r in results if not r.as_expected]
    if ns.json:
        print(json.dumps({"workload": vars(workload) | {"target": workload.target}, "tls": ns.tls,
                          "results": [r.to_json() for r in results],
                          "ok": not failures, "failures": failures}, indent=2))
    else:
        print(format_table(results, workload))
        print()
        if ns.tls:
            print("verdicts over wss://, most severe first (a row shows the first that applies):")
            print("\n".join(f"  {v:<12} {v.meaning}" for v in TLS_VERDICTS))
            print()
        if failures:
            print("NOT AS EXPECTED:")
            for reason in failures:
                print(f"  - {reason}")
        elif ns.tls:
            print("As expected: every unsafe discipline failed over wss://; the queued server delivered the stream intact.")
        else:
            print("As expected: every unsafe discipline corrupted the stream; the queued server delivered it intact.")
    return 1 if failures else 0


@contextlib.contextmanager
def _throwaway_certificate(tls: bool) -> Iterator[CertFiles | None]:
    """With ``tls``: a new certificate in a temporary directory, removed afterwards (CertError if none can be made)."""
    if not tls:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="wsrace-repro-tls-") as directory:
        yield make_cert_files(directory)


def run_serve(ns: argparse.Namespace) -> int:
    logging.basicConfig(level=ns.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if ns.mode in UNSAFE:
        banner = "!" * 78
        print(f"{banner}\n!! WARNING: '{ns.mode}' is UNSAFE ON PURPOSE: {DESCRIPTIONS[ns.mode]}.\n"
              f"!! Clients of this server WILL see corrupted frames. Never use it for anything real.\n{banner}",
              file=sys.stderr, flush=True)
    if (ns.certfile is None) != (ns.keyfile is None):
        print("wsrace-repro: --certfile and --keyfile go together", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.ExitStack() as stack:
        context: ssl.SSLContext | None = None
        ca: str | None = None
        try:
            if ns.certfile is not None:
                context = server_context(ns.certfile, ns.keyfile)
            elif ns.tls:
                # Kept until the server stops: a client needs ca.pem meanwhile.
                files = make_cert_files(stack.enter_context(tempfile.TemporaryDirectory(prefix="wsrace-repro-tls-")))
                context, ca = files.server_context(), str(files.ca)
        except (TlsConfigError, CertError) as exc:
            print(f"wsrace-repro: {exc}", file=sys.stderr)
            return 2
        ws, http = ("wss", "https") if context is not None else ("ws", "http")
        try:
            ctx = serve(ns.mode, host=ns.host, port=ns.port, sndbuf=ns.sndbuf or None, publishers=ns.publishers, rate=ns.rate,
                        ssl_context=context)
            with ctx as srv:
                print(f"listening on {ws}://{ns.host}:{srv.port} (mode {ns.mode}); open {http}://{ns.host}:{srv.port}/", flush=True)
                if ca is not None:
                    print(f"throwaway certificate; a client must trust its CA: {ca} "
                          f"(e.g. wsrace-check --cafile {ca} {ws}://{ns.host}:{srv.port}/echo; "
                          "Chromium: --ignore-certificate-errors)", flush=True)
                while not stop.wait(0.5):
                    pass
        except OSError as exc:
            print(f"wsrace-repro: cannot listen on {ns.host}:{ns.port}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.command == "serve":
        return run_serve(ns)
    if ns.command == "check":
        return check_cli.run(ns)
    logging.basicConfig(level=ns.log_level, format="%(levelname)s %(name)s: %(message)s")
    return run_report(ns)
