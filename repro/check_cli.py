"""``wsrace-check URL`` / ``python -m repro check URL``: is my server affected?

    wsrace-check ws://127.0.0.1:5000/echo                # echo endpoint (default mode)
    wsrace-check --mode drain ws://127.0.0.1:5000/feed   # push endpoint: read and check what it sends
    wsrace-check --header "Cookie: session=..." --json ws://...
    wsrace-check --cafile ca.pem wss://localhost:8443/echo  # TLS, certificate signed by your own CA
    wsrace-check --insecure wss://127.0.0.1:8443/echo      # TLS without verifying the certificate

Exit status: 0 clean; 1 corrupted (or the server failed the connection with a
protocol error); 2 usage or connection error, or the check could not finish.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .check import check
from .check_session import MODES, CheckOptions
from .verdict import Verdict

PROG = "wsrace-check"


def _size(text: str) -> int:
    """``262144``, ``256k``, ``256KiB``, ``1m``."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    scale = {"k": 1024, "m": 1024 * 1024}.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if scale > 1 else t) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 262144, 256k, 1m)") from None


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = CheckOptions()
    p.add_argument("url", help="ws://host:port/path or wss://host:port/path of the endpoint to check")
    p.add_argument("--mode", choices=MODES, default=d.mode,
                   help="echo: send messages and verify the replies; drain: read a push endpoint (default: %(default)s)")
    p.add_argument("--runs", type=int, default=d.runs, help="connections, one after the other (default: %(default)s)")
    p.add_argument("--time-limit", type=float, default=d.time_limit, help="seconds for the whole check (default: %(default)s)")
    p.add_argument("--deflate", action="store_true", help="offer permessage-deflate (the checker inflates and checks it)")
    p.add_argument("--header", type=_header, action="append", default=[], metavar="'NAME: VALUE'",
                   help="extra handshake header, e.g. a cookie or token; repeatable (values are never printed)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--keep-going", action="store_true", help="do every run even after a corrupted one")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    tls = p.add_argument_group("wss:// (TLS)").add_mutually_exclusive_group()
    tls.add_argument("--cafile", metavar="PATH", default=None,
                     help="trust the CA certificate(s) in this PEM file instead of the system's (a test or private CA)")
    tls.add_argument("--insecure", action="store_true", help="do not verify the server's certificate (host name included)")
    g = p.add_argument_group("knobs (the defaults made the race show fastest on a 2-core machine)")
    g.add_argument("--messages", type=int, default=d.messages, help="echo: messages per run (default: %(default)s)")
    g.add_argument("--min-size", type=_size, default=d.min_size, help="echo: smallest message, bytes (default: %(default)s)")
    g.add_argument("--max-size", type=_size, default=d.max_size, help="echo: largest message, bytes (default: %(default)s)")
    g.add_argument("--text-ratio", type=float, default=d.text_ratio,
                   help="echo: share of text messages, multi-byte UTF-8 (default: %(default)s)")
    g.add_argument("--pipeline", type=int, default=d.pipeline,
                   help="echo: messages sent ahead of their replies (default: %(default)s)")
    g.add_argument("--ping-every", type=int, default=d.ping_every,
                   help="echo: a ping after every Nth message, 0 = none (default: %(default)s)")
    g.add_argument("--ping-interval", type=float, default=d.ping_interval,
                   help="seconds between pings from a pinger thread, 0 = none (default: %(default)s)")
    g.add_argument("--rcvbuf", type=_size, default=d.rcvbuf,
                   help="client SO_RCVBUF: the receive window, 0 = OS default (default: %(default)s)")
    g.add_argument("--idle-timeout", type=float, default=d.idle_timeout,
                   help="echo: give up when the server sends nothing for this long (default: %(default)s)")
    g.add_argument("--seed", type=int, default=None, help="message plan seed, to repeat a run (default: random)")


def options_from(ns: argparse.Namespace) -> CheckOptions:
    return CheckOptions(
        mode=ns.mode, runs=ns.runs, time_limit=ns.time_limit, messages=ns.messages, min_size=ns.min_size,
        max_size=ns.max_size, text_ratio=ns.text_ratio, pipeline=ns.pipeline, ping_every=ns.ping_every,
        ping_interval=ns.ping_interval or None, rcvbuf=ns.rcvbuf or None, deflate=ns.deflate, headers=tuple(ns.header),
        idle_timeout=ns.idle_timeout, keep_going=ns.keep_going, seed=ns.seed, cafile=ns.cafile, insecure=ns.insecure,
    )


def run(ns: argparse.Namespace) -> int:
    logging.basicConfig(level=ns.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = check(ns.url, options_from(ns), progress=lambda line: print(line, file=sys.stderr, flush=True))
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if ns.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.report())
    if result.verdict is Verdict.ERROR:
        print(f"{PROG}: {result.sentence}", file=sys.stderr)
    return result.exit_code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
