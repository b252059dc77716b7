"""Plain HTTP for routes: responses a router returns, and the Origin check.

A router's ``route(request)`` returns a :class:`~server.connections.connection.Handler`
for a WebSocket route, or a :class:`Response` for a plain HTTP one (status,
headers, body; :meth:`Response.json` for JSON). Every response closes its
connection: this is a WebSocket server that answers a little HTTP, not a
web framework.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .handshake import HttpError, HttpRequest, http_response


@dataclass(frozen=True)
class Response:
    """An HTTP response a route returns instead of a WebSocket handler."""

    status: int = 200
    body: bytes | str = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Sequence[tuple[str, str]] = ()

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: Sequence[tuple[str, str]] = ()) -> Response:
        """``data`` as ``application/json`` (UTF-8)."""
        return cls(status, json.dumps(data, ensure_ascii=False), "application/json", headers)

    @classmethod
    def html(cls, page: bytes | str, status: int = 200) -> Response:
        return cls(status, page, "text/html; charset=utf-8")

    def encoded(self) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
        """Body, content type and extra headers as bytes, for :meth:`Handshake.respond <server.protocol.handshake.Handshake.respond>`."""
        body = self.body.encode("utf-8") if isinstance(self.body, str) else self.body
        extra = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in self.headers]
        return body, self.content_type.encode("latin-1"), extra

    def to_bytes(self, head_only: bool = False) -> bytes:
        """The response on the wire (``head_only`` for HEAD: same headers, no body)."""
        body, content_type, extra = self.encoded()
        data = http_response(self.status, body, content_type, extra)
        return data[: len(data) - len(body)] if head_only else data


class OriginCheck:
    """Wraps a router: a WebSocket handshake whose ``Origin`` is not allowed gets 403.

    ``origins`` as in websockets: the allowed ``Origin`` header values
    (``"https://example.com"``); ``None`` in the list allows requests without
    the header (non-browser clients). Plain HTTP routes are not checked.
    """

    def __init__(self, router: Any, origins: Iterable[str | None]) -> None:
        self.router = router
        self.origins = set(origins)

    def route(self, request: HttpRequest) -> Any:
        if request.wants_websocket:
            origin = request.headers.get("origin")
            if origin not in self.origins:
                raise HttpError(403, f"origin {origin!r} is not allowed" if origin else "an Origin header is required")
        return self.router.route(request)
