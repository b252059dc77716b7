"""A Flask + flask-sock echo app written the way its users write it — affected by the bug, and fixed by one import.

``ws.receive()`` in the route; the reply is sent from a ``ThreadPoolExecutor``
(a background job finishing); Werkzeug's threaded server. Two threads (or a
worker and simple-websocket's reader thread, which writes pongs) end up
writing to one socket at once. With ``--fixed`` the same code runs with
``from wsrace.flask import Sock`` instead of ``from flask_sock import Sock``:
every byte is then written by wsrace's IO thread.

    python examples/flask_sock_pool.py --port 5000          # replies from a pool
    python examples/flask_sock_pool.py --port 5000 --lock   # the same with the usual lock around ws.send()
    python examples/flask_sock_pool.py --port 5000 --fixed  # the one-import fix
    wsrace-check ws://127.0.0.1:5000/echo                   # exits 1 with a hex dump (0 with --fixed)
    gunicorn --threads 8 -b 127.0.0.1:5000 'examples.flask_sock_pool:create_app(fixed=True)'

Needs ``pip install flask flask-sock`` (in wsrace's ``test`` extra).
"""

from __future__ import annotations

import argparse
import threading
from concurrent.futures import ThreadPoolExecutor

from flask import Flask


def create_app(lock: bool = False, workers: int = 8, fixed: bool = False) -> Flask:
    if fixed:
        from wsrace.flask import Sock
    else:
        from flask_sock import Sock  # type: ignore[no-redef]
    app = Flask(__name__)
    sock = Sock(app)
    pool = ThreadPoolExecutor(workers)
    send_lock = threading.Lock() if lock else None

    def reply(ws, message):  # a background job finishing
        if send_lock is None:
            ws.send(message)
        else:
            with send_lock:  # protects the workers from each other, not from the reader thread's pongs
                ws.send(message)

    @sock.route("/echo")
    def echo(ws):
        while True:
            message = ws.receive()
            pool.submit(reply, ws, message)

    return app


if __name__ == "__main__":
    from werkzeug.serving import make_server

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--lock", action="store_true", help="put a lock around ws.send()")
    parser.add_argument("--fixed", action="store_true", help="import Sock from wsrace.flask instead of flask_sock")
    args = parser.parse_args()
    server = make_server("127.0.0.1", args.port, create_app(lock=args.lock, fixed=args.fixed), threaded=True)
    print(f"listening on ws://127.0.0.1:{server.server_port}/echo", flush=True)
    server.serve_forever()
