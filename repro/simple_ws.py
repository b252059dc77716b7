"""The demo routes on simple-websocket, used the way flask-sock users use it.

A thread per connection (like Werkzeug's dev server) parses the request,
``simple_websocket.Server.accept()`` takes the socket over, and application
threads call ``ws.send()`` — optionally under a per-connection lock, the usual
workaround. simple-websocket's own reader thread still writes pongs, pings
and close replies outside that lock.

Over TLS (``ssl_context``) the connection thread wraps the accepted socket in
a blocking ``SSLSocket`` and does the handshake, as Werkzeug's dev server with
``ssl_context`` does; then simple-websocket's reader thread sits in
``SSL_read`` while the workers (and the reader's own pongs) call ``SSL_write``
on the same ``SSL`` object: simple-websocket#43, python-socketio#1568. A lock
around ``ws.send()`` cannot cover the reader's read.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import simple_websocket
from wsproto.utilities import LocalProtocolError

from server.codes import CloseCode
from server.demo.app import EchoHandler, StreamHandler, StreamParams, index_page
from server.errors import ConnectionClosed
from server.protocol.frames import OutMessage
from server.protocol.handshake import Handshake, HttpError

from .guard import WriteGuard
from .tlsrace import RecordingSocket, TlsEvents

logger = logging.getLogger(__name__)


class SimpleWsConnection:
    """The ``Connection`` interface the shared handlers use, over a simple_websocket.Server."""

    def __init__(self, ws: simple_websocket.Server, peer: str, lock: bool) -> None:
        self.ws = ws
        self.peer = peer
        self.lock: threading.Lock | contextlib.nullcontext[None] = threading.Lock() if lock else contextlib.nullcontext()

    def send(self, message: str | bytes | OutMessage) -> None:
        if isinstance(message, OutMessage):
            message = message.payload.decode() if message.text else message.payload
        try:
            with self.lock:
                self.ws.send(message)
        except simple_websocket.ConnectionClosed as exc:
            raise ConnectionClosed(int(exc.reason), exc.message or "") from None
        except LocalProtocolError:
            # The reader thread saw the close first: wsproto refuses the send. Its message holds
            # the whole event (a 256 KiB payload repr), so it is not chained.
            raise ConnectionClosed(CloseCode.ABNORMAL, "connection closed while sending") from None
        except OSError as exc:
            raise ConnectionClosed(CloseCode.ABNORMAL, f"write failed: {exc}") from None

    def send_paced(self, message: str | bytes | OutMessage, timeout: float | None = None) -> None:
        self.send(message)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        try:
            with self.lock:
                self.ws.close(code, reason)
        except (simple_websocket.ConnectionClosed, LocalProtocolError, OSError):
            pass


class SimpleWebsocketServer:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        lock: bool = False,
        workers: int = 8,
        sndbuf: int | None = None,
        ping_interval: float | None = None,
        guard: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        tls_events: TlsEvents | None = None,
        handshake_timeout: float = 5.0,
    ) -> None:
        if guard and ssl_context is not None:
            raise ValueError("the write guard wraps plain sockets; run it without TLS")
        self.lock = lock
        self.ssl_context = ssl_context
        self.tls_events = tls_events if tls_events is not None else (TlsEvents() if ssl_context is not None else None)
        self.handshake_timeout = handshake_timeout
        self.guards: list[WriteGuard] | None = [] if guard else None
        self.sndbuf = sndbuf
        self.ping_interval = ping_interval
        self._listener = socket.create_server((host, port))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"{'wss' if ssl_context else 'ws'}://{host}:{self.port}"
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="sws-worker")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[SimpleWsConnection] = []
        self._streams: list[StreamHandler] = []
        self.subscribers: list[SimpleWsConnection] = []
        self._sub_lock = threading.Lock()

    def start(self) -> None:
        t = threading.Thread(target=self._accept_loop, name="sws-accept", daemon=True)
        t.start()
        self._threads.append(t)

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(sock,), name="sws-conn", daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(None)
        if self.sndbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
        try:
            peer = "{}:{}".format(*sock.getpeername()[:2])
        except OSError:
            sock.close()
            return
        if self.ssl_context is not None:
            wrapped = self._tls_handshake(sock)
            if wrapped is None:
                return
            sock = wrapped
        handshake = Handshake()
        try:
            request = None
            while request is None:
                data = sock.recv(65536)
                request = handshake.receive_data(data)
            if request.path == "/":
                sock.sendall(handshake.respond(200, index_page(), b"text/html; charset=utf-8"))
                sock.close()
                return
            if request.path not in ("/echo", "/stream", "/broadcast"):
                raise HttpError(404, f"no route for {request.path}")
            params = StreamParams.parse(request.query) if request.path == "/stream" else None
        except HttpError as exc:
            with contextlib.suppress(OSError):
                sock.sendall(handshake.reject(exc))
            sock.close()
            return
        except OSError:
            sock.close()
            return
        ws_sock: socket.socket | WriteGuard | RecordingSocket = sock
        if isinstance(sock, ssl.SSLSocket) and self.tls_events is not None:
            ws_sock = RecordingSocket(sock, self.tls_events)  # counts what SSL_read/SSL_write raise, by thread
        if self.guards is not None:
            # Wrapped before accept(): this thread writes the 101 and owns the socket.
            ws_sock = WriteGuard(sock, owner=threading.current_thread(), on_violation="record")
            self.guards.append(ws_sock)
        environ: dict[str, object] = {"werkzeug.socket": ws_sock}
        for name, value in request.headers.items():
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        ws = simple_websocket.Server.accept(environ, ping_interval=self.ping_interval, receive_bytes=65536)
        conn = SimpleWsConnection(ws, peer, self.lock)
        self._conns.append(conn)
        if params is not None:
            handler = StreamHandler(params)
            self._streams.append(handler)
            handler.on_open(conn)  # type: ignore[arg-type]
            return
        if request.path == "/broadcast":
            with self._sub_lock:
                self.subscribers.append(conn)
        echo = EchoHandler()
        while not self._stop.is_set():
            try:
                message = ws.receive(timeout=0.5)
            except simple_websocket.ConnectionClosed:
                break
            if message is None:
                continue
            if request.path == "/echo":
                self.executor.submit(self._guarded, echo.on_message, conn, message)
            else:
                self.executor.submit(self.publish, message)
        with self._sub_lock:
            if conn in self.subscribers:
                self.subscribers.remove(conn)

    def _tls_handshake(self, sock: socket.socket) -> ssl.SSLSocket | None:
        """A blocking SSLSocket after its handshake (bounded by ``handshake_timeout``), or None (closed) if it failed."""
        assert self.ssl_context is not None
        try:
            tls = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError:
            sock.close()
            return None
        try:
            tls.settimeout(self.handshake_timeout)
            tls.do_handshake()
            tls.settimeout(None)
        except (OSError, ValueError) as exc:
            if self.tls_events is not None:
                self.tls_events.record("handshake", exc)
            tls.close()
            return None
        return tls

    @staticmethod
    def _guarded(fn, conn: SimpleWsConnection, message: str | bytes) -> None:  # type: ignore[no-untyped-def]
        with contextlib.suppress(ConnectionClosed):
            fn(conn, message)

    def publish(self, message: str | bytes) -> None:
        with self._sub_lock:
            targets = list(self.subscribers)
        for conn in targets:
            with contextlib.suppress(ConnectionClosed):
                conn.send(message)

    def start_tickers(self, publishers: int, rate: float) -> None:
        def tick(n: int) -> None:
            seq = 0
            while not self._stop.wait(1.0 / rate):
                self.publish(f'{{"publisher": {n}, "seq": {seq}, "t": {time.time():.6f}}}')
                seq += 1

        for n in range(publishers):
            t = threading.Thread(target=tick, args=(n,), name=f"sws-ticker-{n}", daemon=True)
            t.start()
            self._threads.append(t)

    def shutdown(self, timeout: float = 10.0) -> bool:
        self._stop.set()
        self._listener.close()
        for conn in list(self._conns):
            conn.close(1001, "server shutting down")
        deadline = time.monotonic() + timeout
        for stream in self._streams:
            stream.join(max(0.0, deadline - time.monotonic()))
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.executor.shutdown(wait=True, cancel_futures=True)
        return True
