"""A Flask app written the way flask-sock users write it, run by real WSGI servers for tests/e2e/test_flask.py.

``create_app(fixed=True)`` imports ``Sock`` from ``wsrace.flask``,
``fixed=False`` from ``flask_sock``; nothing else differs. Routes:

* ``/``: the /stream verifier page (server/demo/static/index.html), for Chromium;
* ``/echo``: ``ws.receive()`` in the view, replies sent from a thread pool (the bug's setting);
* ``/stream?producers=&count=&size=...``: producer threads ``ws.send()`` /stream messages (server/demo/app.py's format);
* ``/attached``: a blocking echo; remembers how the connection ended (``/last-close``);
* ``/detached``: ``ws.detach(echo)``, the view returns at once;
* ``/feed`` (detached), ``/feed-size`` and ``POST /announce``: a plain HTTP view broadcasts to every feed member
  (``wsrace.wsgi.hub().broadcast``; wsrace.flask only);
* ``/timeout``: ``ws.receive(timeout=0.2)`` first, then one echo;
* ``/hello/<name>``: a blueprint route with a URL variable;
* ``/protocol``: sends the agreed subprotocol.

``python -m tests.flask_apps --port P [--flask-sock]`` serves it with Werkzeug's threaded server.
"""

from __future__ import annotations

import argparse
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flask import Blueprint, Flask, request

from server.demo import streamformat
from server.demo.app import StreamParams, index_page


def create_app(fixed: bool = True, **options: Any) -> Flask:
    """``options``: SOCK_SERVER_OPTIONS."""
    if fixed:
        from wsrace.flask import ConnectionClosed, Sock
    else:
        from flask_sock import ConnectionClosed, Sock  # type: ignore[no-redef]
    app = Flask(__name__)
    app.config["SOCK_SERVER_OPTIONS"] = {"subprotocols": ["chat"], **options}
    sock = Sock(app)
    pool = ThreadPoolExecutor(8)
    last_close: list[str] = ["none"]

    @app.get("/")
    def page() -> tuple[bytes, int, dict[str, str]]:
        return index_page(), 200, {"Content-Type": "text/html; charset=utf-8"}

    @app.get("/last-close")
    def show_last_close() -> str:
        return last_close[0]

    @sock.route("/echo")
    def echo(ws: Any) -> None:
        while True:
            message = ws.receive()
            pool.submit(ws.send, message)

    @sock.route("/stream")
    def stream(ws: Any) -> None:
        params = StreamParams.parse(dict(request.args))

        def produce(producer: int) -> None:
            for seq in range(params.count):
                ws.send(streamformat.encode(producer, seq, params.size_of(producer, seq)))

        producers = [threading.Thread(target=produce, args=(p,)) for p in range(params.producers)]
        for thread in producers:
            thread.start()
        for thread in producers:
            thread.join()
        ws.close(1000, "stream complete")

    @sock.route("/attached")
    def attached(ws: Any) -> None:
        try:
            while True:
                ws.send(ws.receive())
        except ConnectionClosed as exc:
            last_close[0] = f"{exc.reason} {exc.message or ''}".strip()
            raise

    @sock.route("/detached")
    def detached(ws: Any) -> None:
        ws.detach(lambda ws, message: ws.send(message))

    feed: set[Any] = set()
    feed_lock = threading.Lock()

    @sock.route("/feed")
    def join_feed(ws: Any) -> None:
        with feed_lock:
            feed.add(ws)

        def leave(ws: Any) -> None:
            with feed_lock:
                feed.discard(ws)

        ws.detach(lambda ws, message: None, on_close=leave)

    @app.get("/feed-size")
    def feed_size() -> str:
        return f"members {len(feed)}"

    @app.post("/announce")
    def announce() -> str:
        from wsrace.wsgi import hub

        with feed_lock:
            members = [ws.connection for ws in feed]
        result = hub().broadcast(request.get_data(as_text=True), members)
        return f"queued {result.queued}"

    @sock.route("/timeout")
    def timeout(ws: Any) -> None:
        first = ws.receive(timeout=0.2)
        ws.send("timeout" if first is None else f"early {first}")
        ws.send(ws.receive())

    @sock.route("/protocol")
    def protocol(ws: Any) -> None:
        ws.send(str(ws.subprotocol))
        ws.receive(timeout=5)

    bp = Blueprint("greetings", __name__)

    @sock.route("/hello/<name>", bp=bp)
    def hello(ws: Any, name: str) -> None:
        ws.send(f"hello {name}")

    app.register_blueprint(bp)
    return app


if __name__ == "__main__":
    from werkzeug.serving import make_server

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--flask-sock", action="store_true", help="flask_sock.Sock instead of wsrace.flask.Sock")
    parser.add_argument("--certfile", help="serve https/wss with this certificate chain (and --keyfile)")
    parser.add_argument("--keyfile")
    args = parser.parse_args()
    tls = (args.certfile, args.keyfile) if args.certfile else None
    server = make_server("127.0.0.1", args.port, create_app(fixed=not args.flask_sock), threaded=True, ssl_context=tls)
    print(f"listening on ws://127.0.0.1:{server.server_port}/", flush=True)
    server.serve_forever()
