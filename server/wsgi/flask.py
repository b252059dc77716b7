"""``Sock`` for Flask: flask-sock's API, with every byte written by wsrace's IO thread.

Change one import and the app is fixed::

    from flask_sock import Sock      # before
    from wsrace.flask import Sock    # after

Routes, blueprints, ``SOCK_SERVER_OPTIONS`` and the ``ws`` object
(``send``, ``receive``, ``close``, ``connected``; ``ConnectionClosed``) work
as with flask-sock; ``ws.send()`` is safe from any thread, and
``ws.detach(on_message, on_close)`` lets the view return without closing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import wraps
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request

from . import Refused, accept
from .takeover import StartResponse
from .websocket import ConnectionClosed, WebSocket

__all__ = ["ConnectionClosed", "Sock", "WebSocket"]


class Sock:
    """The extension: ``Sock(app)`` or ``Sock()`` then :meth:`init_app`; routes with :meth:`route`."""

    def __init__(self, app: Flask | None = None) -> None:
        self.app: Flask | None = None
        self.bp: Blueprint | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if self.bp is not None:
            app.register_blueprint(self.bp)
        self.app = app

    def route(self, path: str, bp: Blueprint | None = None, **kwargs: Any) -> Callable[[Callable[..., Any]], None]:
        """A WebSocket route: the view gets ``ws`` first, then the URL's variables (as with flask-sock).

        When the view returns, the connection is closed after what it queued
        — unless it called ``ws.detach()``. An exception other than
        ``ConnectionClosed`` closes it with 1011 and propagates to Flask (its
        500 page goes nowhere: the socket is no longer Flask's).
        """
        def decorator(view: Callable[..., Any]) -> None:
            @wraps(view)
            def websocket_route(*args: Any, **kw: Any) -> Response:
                try:
                    ws = accept(request.environ, **current_app.config.get("SOCK_SERVER_OPTIONS", {}))
                except Refused as exc:
                    return Response(exc.message + "\n", exc.status, exc.wsgi_headers,
                                    mimetype="text/plain")
                try:
                    view(ws, *args, **kw)
                except ConnectionClosed:
                    pass
                except Exception:
                    if ws.connected:
                        ws.close(1011, "internal error")
                    if ws.borrowed:  # Flask's 500 goes to the server's SSLSocket: only once we are done with it
                        ws.connection.wait_closed()
                    raise
                if not ws.detached and ws.connected:
                    try:
                        ws.close()
                    except ConnectionClosed:
                        pass
                return _Handled(ws)

            kwargs["websocket"] = True
            if bp is not None:
                bp.route(path, **kwargs)(websocket_route)
            elif self.app is not None:
                self.app.route(path, **kwargs)(websocket_route)
            else:
                if self.bp is None:
                    self.bp = Blueprint("__wsrace_sock", __name__)
                self.bp.route(path, **kwargs)(websocket_route)

        return decorator


class _Handled(Response):
    """The view's response once wsrace owns the socket: the WSGI server writes nothing that reaches the client."""

    def __init__(self, ws: WebSocket) -> None:
        super().__init__()
        self.ws = ws

    def __call__(self, environ: Any, start_response: StartResponse) -> Iterable[bytes]:  # type: ignore[override]
        return self.ws.response(start_response)
