"""wsrace.flask.Sock under real WSGI servers: a flask-sock app fixed by changing its import.

Every server here is a subprocess started by the test (tests/check_servers.py
``wsgi_server``): Werkzeug's threaded dev server, gunicorn's gthread and sync
workers. The app (tests/flask_apps.py) is written the way flask-sock users
write theirs; ``fixed=False`` runs the very same code on flask-sock, which is
what shows that the checks can fail. ``make test`` sets WSRACE_CHECK_AFFINITY=1,
which the servers inherit: a socket touched off wsrace's IO thread would break
the connection and the test.
"""

from __future__ import annotations

import signal
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from repro.check import check

from ..check_servers import WSGI_SERVERS, wsgi_server
from ..clients import CLIENTS
from ..helpers import StreamCheck, client_frame, http_exchange, read_server_frames, upgrade_request, wait_until, ws_handshake
from .test_browser import _run_page, browser  # noqa: F401  (a fixture)

pytestmark = pytest.mark.timeout(120)


def _url(port: int, path: str) -> str:
    return f"ws://127.0.0.1:{port}{path}"


# -- the bug, and the one-import fix -----------------------------------------------------


@pytest.mark.parametrize("kind", WSGI_SERVERS)
def test_one_changed_import_makes_the_pool_replying_app_clean(kind: str) -> None:
    """The seed's scenario (pool replies, pings, a small receive window, 128-256 KiB messages) under wsrace-check."""
    with wsgi_server(kind, fixed=True) as srv:
        # 4 runs with time to spare: 8 runs take ~24 s of the default 30 s, and a check out of time stops early.
        result = check(_url(srv.port, "/echo"), runs=4, time_limit=90)
        log = srv.log_tail()
    assert result.verdict == "CLEAN", result.report() + log
    assert len(result.runs) == 4 and all(run.valid > 0 for run in result.runs), result.report()


@pytest.mark.timeout(240)
@pytest.mark.timing
def test_the_same_app_on_flask_sock_under_gunicorn_is_corrupted() -> None:
    """The control: the identical code with ``from flask_sock import Sock`` (gthread; Werkzeug is in test_check).

    The tear is timing-dependent: one check of 8 runs (3,200 replies) once found nothing. Short checks are
    repeated until one finds it — usually the first — within a budget no healthy machine needs.
    """
    clean: list[str] = []
    with wsgi_server("gthread", fixed=False) as srv:
        deadline = time.monotonic() + 150
        while True:
            # keep_going: a run flask-sock ends without a close frame (INCOMPLETE) does not stop the check
            result = check(_url(srv.port, "/echo"), runs=2, keep_going=True)
            if result.verdict == "CORRUPTED" or time.monotonic() > deadline:
                break
            clean.append(f"{result.verdict} after {len(result.runs)} runs")
    assert result.verdict == "CORRUPTED", f"{clean}\n{result.report()}"


# -- the five regression clients and Chromium through a Flask route ------------------------------


@pytest.mark.parametrize("client", list(CLIENTS))
def test_every_client_gets_a_whole_stream_through_a_flask_route(client: str) -> None:
    """8 producer threads ``ws.send()`` at once; small receive window and client pings (``small=True``)."""
    run, _ = CLIENTS[client]
    check_stream = StreamCheck(8, 150)
    with wsgi_server("werkzeug") as srv:
        outcome = run(srv.port, "/stream?producers=8&count=150&size=16&maxsize=65536", check_stream, False, True)
    assert not outcome.error, outcome
    assert outcome.close_code == 1000, outcome
    check_stream.assert_complete()


# -- flask-sock's API ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["werkzeug", "gthread"])
def test_flask_sock_api(kind: str) -> None:
    with wsgi_server(kind) as srv:
        with connect(_url(srv.port, "/hello/ada")) as ws:  # blueprint route, URL variable
            assert ws.recv(timeout=10) == "hello ada"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000  # closed when the view returned
        with connect(_url(srv.port, "/timeout")) as ws:  # receive(timeout=0.2) returned None
            assert ws.recv(timeout=10) == "timeout"
            ws.send(b"\x00binary")
            assert ws.recv(timeout=10) == b"\x00binary"
        with connect(_url(srv.port, "/protocol"), subprotocols=[Subprotocol("v2"), Subprotocol("chat")]) as ws:  # SOCK_SERVER_OPTIONS
            assert ws.subprotocol == "chat"
            assert ws.recv(timeout=10) == "chat"
        with connect(_url(srv.port, "/attached")) as ws:
            ws.send("one")
            assert ws.recv(timeout=10) == "one"
            ws.close(4000, "bye")
        assert srv.last_close_is(b"4000 bye")


@pytest.mark.parametrize("kind", ["werkzeug", "gthread"])
def test_frames_sent_right_behind_the_handshake_are_not_lost(kind: str) -> None:
    """The WSGI server read them with the request head; the takeover hands its buffer over."""
    with wsgi_server(kind) as srv:
        sock, rest = ws_handshake(srv.port, "/attached", frames=client_frame(0x1, b"early one") + client_frame(0x2, b"early two"))
        with sock:
            frames, _ = read_server_frames(sock, rest, timeout=10, max_frames=2)
    assert frames == [(1, b"early one"), (2, b"early two")], frames


@pytest.mark.parametrize("kind", ["werkzeug", "gthread"])
def test_bad_handshakes_get_http_errors_from_the_wsgi_server(kind: str) -> None:
    with wsgi_server(kind) as srv:
        plain = http_exchange(srv.port, b"GET /attached HTTP/1.1\r\nHost: x\r\n\r\n")
        bad_key = http_exchange(srv.port, upgrade_request("/attached", key="short"))
        bad_version = http_exchange(srv.port, upgrade_request("/attached", version="8"))
        with connect(_url(srv.port, "/attached")) as ws:  # and the server still serves
            ws.send("still here")
            assert ws.recv(timeout=10) == "still here"
    assert plain.startswith(b"HTTP/1.1 400"), plain[:200]  # Flask's websocket=True rule
    assert bad_key.startswith(b"HTTP/1.1 400") and b"Sec-WebSocket-Key" in bad_key, bad_key[:300]
    assert bad_version.startswith(b"HTTP/1.1 426") and b"Sec-WebSocket-Version: 13" in bad_version, bad_version[:300]


@pytest.mark.parametrize("kind", ["werkzeug", "gthread"])
def test_a_client_that_vanishes_ends_the_view_with_connection_closed(kind: str) -> None:
    with wsgi_server(kind) as srv:
        sock, rest = ws_handshake(srv.port, "/attached", frames=client_frame(0x1, b"echo me"))
        assert read_server_frames(sock, rest, timeout=10, max_frames=1)[0] == [(1, b"echo me")]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, no close frame
        assert srv.last_close_is(b"1006")


# -- detached views: the WSGI thread goes back ---------------------------------------------


def test_a_thousand_detached_connections_on_four_gunicorn_threads() -> None:
    """Each view calls ``ws.detach(echo)`` and returns: 4 threads serve 1,000 open WebSockets."""
    count = 1000
    with wsgi_server("gthread", threads=4) as srv:
        opened: list[tuple[socket.socket, bytes]] = []
        try:
            with ThreadPoolExecutor(8) as pool:  # every connection stays open until the end
                opened = list(pool.map(lambda i: ws_handshake(srv.port, "/detached", frames=client_frame(0x1, b"client %d" % i),
                                                               timeout=30), range(count)))
                echoes = list(pool.map(lambda o: read_server_frames(o[0], o[1], timeout=30, max_frames=1)[0], opened))
            threads = _threads_of_worker(srv.proc.pid)
        finally:
            for sock, _ in opened:
                sock.close()
    assert echoes == [[(1, b"client %d" % i)] for i in range(count)]
    print(f"{count} detached connections: {threads} threads in the gunicorn worker")
    assert threads < 30, f"{threads} threads in the worker for {count} connections"


def _threads_of_worker(master_pid: int) -> int:
    import pathlib

    children = pathlib.Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    status = pathlib.Path(f"/proc/{children[0]}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


def test_a_plain_flask_view_broadcasts_to_detached_members() -> None:
    """``wsrace.wsgi.hub().broadcast(msg, [ws.connection ...])`` from an HTTP view: every member gets it once."""
    with wsgi_server("gthread", threads=4) as srv, ExitStack() as stack:
        members = [stack.enter_context(connect(_url(srv.port, "/feed"))) for _ in range(5)]
        size = b"GET /feed-size HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        assert wait_until(lambda: b"members 5" in http_exchange(srv.port, size), timeout=10, interval=0.1)
        post = b"POST /announce HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        assert b"queued 5" in http_exchange(srv.port, post)
        got = [ws.recv(timeout=10) for ws in members]
    assert got[0] == "hello" and len(set(got)) == 1


# -- graceful stop ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gthread", "sync"])
def test_sigterm_closes_attached_websockets_with_1001_and_gunicorn_exits(kind: str) -> None:
    """With the documented hook (tests/gunicorn_conf.py: post_worker_init), blocked views end and the worker exits."""
    with wsgi_server(kind) as srv, ExitStack() as stack:
        clients = [stack.enter_context(connect(_url(srv.port, "/attached" if kind == "gthread" else "/detached")))
                   for _ in range(3)]
        for ws in clients:
            ws.send("hi")
            assert ws.recv(timeout=10) == "hi"
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        codes = []
        for ws in clients:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=15)
            codes.append(closed.value.rcvd.code if closed.value.rcvd else None)
        assert srv.proc.wait(timeout=15) == 0, srv.log_tail()
        took = time.monotonic() - started
    assert codes == [1001] * 3, codes
    assert took < 10, f"gunicorn took {took:.1f} s to stop (graceful timeout 10 s)"


@pytest.mark.browser
def test_chromium_verifies_a_stream_from_a_flask_route(browser) -> None:  # noqa: F811
    """The /stream verifier page (served by Flask) in headless Chromium, over gunicorn with wsrace.flask."""
    with wsgi_server("gthread") as srv:
        result, logs = _run_page(browser, srv.port, "?producers=8&count=250&size=16&maxsize=65536")
    assert result["verified"], (result, logs)
    assert result["received"] == result["expected"] == 2000
    assert result["failures"] == 0
    assert result["close_code"] == 1000

