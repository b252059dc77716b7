"""Every independent client of the regression suite, and ``wsrace-check``, over wss:// against a real TLS server.

The server is ``websockets`` asyncio with the throwaway certificate of tests/tls.py (``tls_files``), so these
tests prove the client side of the TLS plumbing before our own server speaks TLS: the five clients of
tests/clients.py read a /stream run over wss (with and without permessage-deflate, with and without the
small receive window and pings), each round-trips text and binary messages, and ``wsrace-check`` accepts
wss:// with ``--cafile`` and fails clearly (exit 2) without it.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from repro.check import check
from server.demo import streamformat

from ..check_servers import ROOT, websockets_echo_server
from ..clients import CLIENTS, IDLE_TIMEOUT, RCVBUF, connect_websockets
from ..helpers import StreamCheck, assert_same_messages, raw_connect
from ..tls import TLSFiles

pytestmark = pytest.mark.timeout(60)

PRODUCERS, COUNT, SIZE = 4, 25, 20000  # 100 messages, each larger than one TLS record (16 KiB)
STREAM = f"/stream?producers={PRODUCERS}&count={COUNT}&size={SIZE}"
MESSAGES: list[str | bytes] = [
    "hello over TLS",
    "wsrace é ü ж ק € 中 ✓ 𝄞 😀 " * 200,  # multi-byte UTF-8 across record boundaries
    b"\x00\xff\x80\x7f" * 8,
    bytes(range(256)) * 300,  # 76,800 bytes: several records, a 64-bit length
    "",
    b"",
]


async def _routes(ws: Any) -> None:
    """``/stream?producers=&count=&size=``: the /stream format (as the server's route), then close 1000; anything else echoes."""
    url = urlsplit(ws.request.path)
    if url.path != "/stream":
        async for message in ws:
            await ws.send(message)
        return
    query = {k: int(v[0]) for k, v in parse_qs(url.query).items()}
    for seq in range(query["count"]):
        for producer in range(query["producers"]):
            await ws.send(streamformat.encode(producer, seq, query["size"]))
    await ws.close(1000)


@pytest.fixture(scope="module")
def tls_port(tls_files: TLSFiles) -> Iterator[int]:
    with websockets_echo_server(tls_files.server_context(), handler=_routes) as port:
        yield port


STREAM_CASES = [pytest.param(name, deflate, small, id=f"{name}-{'deflate' if deflate else 'plain'}{'-small' if small else ''}")
                for name, (_, supports) in CLIENTS.items()
                for deflate in ([False, True] if supports else [False])
                for small in ([False] if name == "simple_websocket.Client" else [False, True])]  # it makes its own socket


@pytest.mark.parametrize("client,deflate,small", STREAM_CASES)
def test_client_reads_a_stream_over_wss(client: str, deflate: bool, small: bool, tls_port: int, tls_files: TLSFiles) -> None:
    run, _ = CLIENTS[client]
    stream = StreamCheck(PRODUCERS, COUNT)
    outcome = run(tls_port, STREAM, stream, deflate, small, ssl_context=tls_files.client_context())
    assert not outcome.error, outcome
    assert outcome.close_code == 1000, outcome
    stream.assert_complete()


# -- round trips: each client sends text and binary messages and gets them back ---------------------


def _echo_websockets(port: int, context: ssl.SSLContext, deflate: bool) -> tuple[list[str | bytes], bool]:
    # websockets' framing, deflate and close over the taking-turns TLS (tests/clients.py: its own sync TLS uses one
    # SSL object from two threads and loses about one request in 200).
    with connect_websockets(port, "/echo", context, compression="deflate" if deflate else None,
                            max_size=None, open_timeout=10) as ws:
        got = []
        for message in MESSAGES:
            ws.send(message)
            got.append(ws.recv(timeout=IDLE_TIMEOUT))
        assert ws.response is not None
        negotiated = "permessage-deflate" in (ws.response.headers.get("Sec-WebSocket-Extensions") or "")
    return got, negotiated


def _echo_websocket_client(port: int, context: ssl.SSLContext, deflate: bool) -> tuple[list[str | bytes], bool]:
    import websocket  # websocket-client

    ws = websocket.WebSocket(sslopt={"context": context})
    ws.connect(f"wss://127.0.0.1:{port}/echo", timeout=IDLE_TIMEOUT)
    try:
        got = []
        for message in MESSAGES:
            if isinstance(message, str):
                ws.send(message)
            else:
                ws.send_binary(message)
            got.append(ws.recv())
    finally:
        ws.close()
    return got, False


def _echo_simple_websocket(port: int, context: ssl.SSLContext, deflate: bool) -> tuple[list[str | bytes], bool]:
    import simple_websocket

    ws = simple_websocket.Client.connect(f"wss://127.0.0.1:{port}/echo", ssl_context=context)
    try:
        got = []
        for message in MESSAGES:
            ws.send(message)
            got.append(ws.receive(timeout=IDLE_TIMEOUT))
    finally:
        # Not ws.close(): Client.close() closes the socket while the client's reader thread is inside SSL_read on
        # it, and OpenSSL's next read() on that descriptor number then takes bytes from whichever connection gets
        # it next (here: the next test's TLS handshake failed with WRONG_VERSION_NUMBER, or its replies stopped).
        # Send the close frame only; the reader thread closes its own socket once the server's close arrives.
        simple_websocket.ws.Base.close(ws)
        ws.thread.join(IDLE_TIMEOUT)
    assert not ws.thread.is_alive(), "simple_websocket's reader thread did not end after the close handshake"
    return got, False


def _echo_wsproto(port: int, context: ssl.SSLContext, deflate: bool) -> tuple[list[str | bytes], bool]:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Message, Ping, Request, TextMessage
    from wsproto.extensions import PerMessageDeflate

    sock = raw_connect(port, IDLE_TIMEOUT, rcvbuf=RCVBUF, ssl_context=context)  # SO_RCVBUF before connect, then TLS
    ws = WSConnection(ConnectionType.CLIENT)
    got: list[str | bytes] = []
    accepted: list[AcceptConnection] = []

    def pump(until: int) -> None:
        parts: list[Any] = []
        while not accepted or len(got) < until:
            data = sock.recv(65536)
            assert data, f"EOF after {len(got)} messages"
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    accepted.append(event)
                elif isinstance(event, Ping):
                    sock.sendall(ws.send(event.response()))
                elif isinstance(event, Message):
                    parts.append(event.data)
                    if event.message_finished:
                        got.append(("" if isinstance(event.data, str) else b"").join(parts))
                        parts = []
                elif isinstance(event, CloseConnection):
                    raise AssertionError(f"closed: {event.code} {event.reason}")

    try:
        sock.sendall(ws.send(Request(host="127.0.0.1", target="/echo", extensions=[PerMessageDeflate()] if deflate else [])))
        pump(0)
        for i, message in enumerate(MESSAGES):
            sock.sendall(ws.send(TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)))
            pump(i + 1)
        sock.sendall(ws.send(CloseConnection(code=1000)))
    finally:
        sock.close()
    return got, any(isinstance(e, PerMessageDeflate) for e in accepted[0].extensions)


ECHO = {
    "websockets": _echo_websockets,
    "websocket-client": _echo_websocket_client,
    "simple_websocket.Client": _echo_simple_websocket,
    "wsproto": _echo_wsproto,
}
ECHO_CASES = [pytest.param(name, deflate, id=f"{name}-{'deflate' if deflate else 'plain'}")
              for name, (_, supports) in CLIENTS.items() for deflate in ([False, True] if supports else [False])]


@pytest.mark.parametrize("client,deflate", ECHO_CASES)
def test_client_round_trips_text_and_binary_over_wss(client: str, deflate: bool, tls_port: int, tls_files: TLSFiles) -> None:
    assert set(ECHO) | {"strict-checker"} == set(CLIENTS), "a client of tests/clients.py without a round trip here"
    context = tls_files.client_context()
    if client == "strict-checker":  # its echo mode is wsrace-check: text (multi-byte UTF-8) and binary, every reply verified
        result = check(f"wss://127.0.0.1:{tls_port}/echo", ssl_context=context, runs=1, messages=40, min_size=64,
                       max_size=70000, pipeline=8, deflate=deflate, time_limit=30)
        assert result.clean, result.report()
        run = result.runs[0]
        assert run.valid == 40 and run.pongs > 0 and run.close_code == 1000, result.report()
        if deflate:  # the repetitive bodies shrink many times over: proof the frames were compressed
            assert run.bytes_checked < 40 * 64 * 4 + 40 * 70000 // 8, run.bytes_checked
        return
    got, negotiated = ECHO[client](tls_port, context, deflate)
    assert_same_messages(got, MESSAGES)
    assert negotiated == deflate, f"permessage-deflate {'not ' if deflate else ''}negotiated"


# -- wsrace-check wss:// --------------------------------------------------------------------------


def _wsrace_check(*args: str) -> subprocess.CompletedProcess[str]:
    script = os.path.join(os.path.dirname(sys.executable), "wsrace-check")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "repro", "check"]
    return subprocess.run([*command, *args, "--runs", "1", "--messages", "50", "--time-limit", "20"],
                          cwd=ROOT, capture_output=True, text=True, timeout=40)


def test_wsrace_check_over_wss_needs_the_ca(tls_port: int, tls_files: TLSFiles) -> None:
    url = f"wss://127.0.0.1:{tls_port}/echo"
    trusted = _wsrace_check(url, "--cafile", str(tls_files.ca))
    assert trusted.returncode == 0, trusted.stdout[-2000:] + trusted.stderr[-2000:]
    assert "CLEAN" in trusted.stdout

    untrusted = _wsrace_check(url)
    assert untrusted.returncode == 2, untrusted.stdout[-2000:] + untrusted.stderr[-2000:]
    assert "certificate is not trusted" in untrusted.stderr and "--cafile PATH" in untrusted.stderr, untrusted.stderr

    insecure = _wsrace_check(url, "--insecure")
    assert insecure.returncode == 0, insecure.stdout[-2000:] + insecure.stderr[-2000:]


def test_wsrace_check_names_the_scheme_mismatch(tls_port: int) -> None:
    """wss:// to a plain port and ws:// to a TLS port: exit 2, saying which scheme the port may want."""
    with websockets_echo_server() as plain_port:  # answers the ClientHello with an HTTP error
        to_plain = _wsrace_check(f"wss://127.0.0.1:{plain_port}/echo", "--insecure")
    assert to_plain.returncode == 2 and "does the server speak TLS on this port?" in to_plain.stderr, to_plain.stderr
    to_tls = _wsrace_check(f"ws://127.0.0.1:{tls_port}/echo")
    assert to_tls.returncode == 2 and "use wss://" in to_tls.stderr, to_tls.stderr
