"""``from wsrace.flask import Sock``: flask-sock's API, fixed (see server/wsgi/flask.py). Needs ``wsrace[flask]``."""

from __future__ import annotations

from . import submodule

_flask = submodule("wsgi.flask")
ConnectionClosed = _flask.ConnectionClosed
Sock = _flask.Sock
WebSocket = _flask.WebSocket

__all__ = ["ConnectionClosed", "Sock", "WebSocket"]
