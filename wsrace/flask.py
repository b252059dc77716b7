"""``from wsrace.flask import Sock``: flask-sock's API, fixed (see server/wsgi/flask.py). Needs ``wsrace[flask]``."""

from __future__ import annotations

from .server.wsgi.flask import ConnectionClosed, Sock, WebSocket

__all__ = ["ConnectionClosed", "Sock", "WebSocket"]
