"""The Flask app of workloads F and FD, written the way flask-sock users write theirs; served by gunicorn.

``create_app(fixed=False)`` imports ``Sock`` from ``flask_sock``,
``fixed=True`` from ``wsrace.flask``; nothing else differs (``/echo-detached``
exists only with wsrace: flask-sock has no ``ws.detach()``).

* ``/push?n=N&size=S``: the client asks for a feed (any first message); a job
  on the app's ``ThreadPoolExecutor`` then sends it N binary messages of S
  bytes with a plain ``ws.send()`` loop. The view keeps the connection open in
  ``ws.receive()`` until the client leaves (an attached view: it holds its
  WSGI thread for the connection's lifetime).
* ``/echo``: an attached echo, ``while True: ws.send(ws.receive())``.
* ``/echo-detached``: ``ws.detach(echo)`` and return: the WSGI thread goes back at once.
* ``/pid``: the worker's process id (the harness reads its /proc/PID/status; also the readiness probe).

    gunicorn -k gthread --threads 32 -b 127.0.0.1:8000 'bench.flask_app:create_app(fixed=True)'
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flask import Flask, request


def create_app(fixed: bool = False, workers: int = 8) -> Flask:
    if fixed:
        from wsrace.flask import ConnectionClosed, Sock
    else:
        from flask_sock import ConnectionClosed, Sock  # type: ignore[no-redef]
    app = Flask(__name__)
    sock = Sock(app)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="app-pool")

    def feed(ws: Any, count: int, payload: bytes) -> None:  # a background job: the per-client send loop
        try:
            for _ in range(count):
                ws.send(payload)
        except ConnectionClosed:
            pass  # the client left

    @app.get("/pid")
    def pid() -> str:
        return str(os.getpid())

    @sock.route("/push")
    def push(ws: Any) -> None:
        count, size = int(request.args.get("n", "1000")), int(request.args.get("size", "256"))
        ws.receive()  # the client's request for its feed
        pool.submit(feed, ws, count, bytes(size))
        while True:
            ws.receive()

    @sock.route("/echo")
    def echo(ws: Any) -> None:
        while True:
            ws.send(ws.receive())

    if fixed:

        @sock.route("/echo-detached")
        def echo_detached(ws: Any) -> None:
            ws.detach(lambda ws, message: ws.send(message))

    return app
