"""HTTP side of a connection: parse the request with h11, answer or upgrade.

:class:`Handshake` is a small state machine with no I/O, in the style of
wsproto's ``H11Handshake``: one h11 connection per request parses it
(:meth:`Handshake.receive_data` returns ``None`` until the request is complete)
and writes the answer (:meth:`Handshake.accept`, :meth:`Handshake.respond`,
:meth:`Handshake.reject` return the bytes to send).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl, urlsplit

import h11
from wsproto.extensions import PerMessageDeflate
from wsproto.handshake import server_extensions_handshake
from wsproto.utilities import generate_accept_token

from ..errors import WsraceError
from .deflate import BoundedPerMessageDeflate

WEBSOCKET_VERSION = b"13"
SERVER_NAME = b"wsrace"


class HttpError(WsraceError):
    """A request we answer with an HTTP error status and close."""

    def __init__(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message
        self.headers = headers or []


@dataclass
class HttpRequest:
    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    trailing: bytes = b""  # bytes received after the request (early frames)
    extensions: list[str] = field(default_factory=list)
    body: bytes = b""  # a plain HTTP request's body (Content-Length or chunked), at most max_body_bytes

    def header(self, name: str, default: str | None = None) -> str | None:
        """A header's value by case-insensitive name (repeated headers joined with ", ")."""
        return self.headers.get(name.lower(), default)

    def header_tokens(self, name: str) -> list[str]:
        return [t.lower() for t in comma_split(self.headers.get(name, ""))]

    @property
    def wants_websocket(self) -> bool:
        return "websocket" in self.header_tokens("upgrade")

    @property
    def subprotocols(self) -> list[str]:
        """The subprotocols the client offers (``Sec-WebSocket-Protocol``), in its order of preference."""
        return comma_split(self.headers.get("sec-websocket-protocol", ""))


def comma_split(value: str) -> list[str]:
    """The items of a comma-separated header value, stripped.

    Not wsproto's ``split_comma_header``: it decodes as ASCII and raises on
    the obs-text bytes (0x80-0xFF) HTTP allows in field values; here they stay
    (latin-1) and simply match no token.
    """
    return [item.strip() for item in value.split(",")]


# RFC 9112 section 3: request-line = method SP request-target SP HTTP-version; method = token.
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]*")
_TARGET = re.compile(rb"[\x21-\x7e]*")  # what h11 accepts: visible ASCII
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_VERSION_PREFIX = re.compile(rb"(H(T(T(P(/([0-9](\.([0-9]\r?)?)?)?)?)?)?)?)?")  # any start of "HTTP/1.1\r"
# Longer than any registered method (the longest, UPDATEREDIRECTREF, has 17 characters).
MAX_METHOD_CHARS = 24
_HEAD_END = re.compile(rb"\n\r?\n")  # the blank line that ends a head (h11 takes bare LF line endings too)


def check_request_line(head: bytes) -> bool:
    """Judge the start of a request as soon as its bytes arrive.

    h11 parses the request line only once the whole head (up to the blank line) is
    there, so a client that sends garbage would otherwise wait for the handshake
    timeout. Returns ``True`` once the request line is complete and acceptable,
    ``False`` while what came so far can still begin one; raises :class:`HttpError`
    (400, 501 or 505, with a sentence) as soon as it cannot. Only bytes and regular
    expressions on at most the request line: cheap to repeat on every read.
    """
    end = head.find(b"\n")
    complete = end >= 0
    line = head[:end].removesuffix(b"\r") if complete else head
    method, sp, rest = line.partition(b" ")
    # The token characters at the start decide first: past 24 of them it is a method too long, whatever follows,
    # so the answer never depends on how much of the line has arrived (found by make fuzz).
    if _TOKEN.match(line).end() > MAX_METHOD_CHARS:  # type: ignore[union-attr]
        raise HttpError(501, f"not an HTTP request: a method of over {MAX_METHOD_CHARS} characters")
    if not _TOKEN.fullmatch(method) or (sp and not method):
        raise HttpError(400, "not an HTTP request: the request line must start with a method token (like GET)")
    if not sp:
        if complete:
            raise HttpError(400, "not an HTTP request: the request line has no target and no HTTP version")
        return False
    target, sp, version = rest.partition(b" ")
    if not _TARGET.fullmatch(target) or (sp and not target):
        raise HttpError(400, "malformed request line: the target must be visible ASCII characters")
    if not sp:
        if complete:
            raise HttpError(400, "malformed request line: no HTTP version (HTTP/0.9 is not supported)")
        return False
    if not complete:
        if not _VERSION_PREFIX.fullmatch(version):
            raise HttpError(400, "malformed request line: it must end with an HTTP version like HTTP/1.1")
        return False
    match = _VERSION.fullmatch(version)
    if match is None:
        raise HttpError(400, "malformed request line: it must end with an HTTP version like HTTP/1.1")
    check_http_version(int(match[1]), int(match[2]))
    return True


def check_http_version(major: int, minor: int) -> None:
    if (major, minor) < (1, 1):
        raise HttpError(505, f"HTTP/{major}.{minor} is not supported: a WebSocket handshake needs HTTP/1.1 or later "
                             "(RFC 6455 section 4.1)")


class Handshake:
    """The HTTP phase of one connection, sans I/O: one h11 connection reads the request and writes the answer.

    The request line is checked as its bytes arrive (:func:`check_request_line`),
    so garbage is answered at once rather than at the handshake timeout. Exactly
    one of :meth:`accept`, :meth:`respond` or :meth:`reject` ends it.
    """

    def __init__(self, max_request_bytes: int = 16 * 1024, max_body_bytes: int = 1024 * 1024) -> None:
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_request_bytes)
        self._max = max_request_bytes
        self._max_body = max_body_bytes
        self._head: h11.Request | None = None
        self._body = bytearray()
        self._line: bytearray | None = bytearray()  # the request line so far; None once it is judged good
        self._head_so_far: bytearray | None = bytearray()  # the head until its end is seen (at most the limit + 3)
        self.request: HttpRequest | None = None  # set once complete

    def receive_data(self, data: bytes) -> HttpRequest | None:
        """Feed received bytes (``b""`` at EOF); the request once complete. Raises :class:`HttpError`."""
        if self._line is not None and data:
            self._line += data[: self._max]
            if check_request_line(bytes(self._line)):
                self._line = None
            elif len(self._line) > self._max:  # _check_head_size answers 431 for the over-long head
                self._line = None
        if self._head_so_far is not None and data:
            self._check_head_size(data)
        self._h11.receive_data(data)
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise HttpError(exc.error_status_hint, f"malformed HTTP request: {exc}") from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return None
            if isinstance(event, h11.ConnectionClosed):
                raise HttpError(400, "connection closed before a complete request")
            if isinstance(event, h11.Request):
                self._head = event
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > self._max_body:
                    raise HttpError(413, f"request body over {self._max_body} bytes")
            elif isinstance(event, h11.EndOfMessage) and self._head is not None:
                request = self._to_request(self._head, bytes(self._body))  # its head fits: _check_head_size
                self.request = request
                return request
            else:  # pragma: no cover - h11 yields Request, Data..., EndOfMessage
                raise HttpError(400, f"unexpected HTTP event {type(event).__name__}")

    def _check_head_size(self, data: bytes) -> None:
        """431 for a head over the limit, judged before h11 parses it, so what else is wrong with it never decides.

        h11 limits only an incomplete head: a long head with a malformed line got 431 when its first read passed
        the limit and 400 when it arrived whole (found by make fuzz).
        """
        assert self._head_so_far is not None
        seen = self._head_so_far
        start = max(0, len(seen) - 3)
        seen += data[: self._max + 3 - len(seen)]
        end = _HEAD_END.search(seen, start)
        if end is None:
            if len(seen) > self._max:
                raise HttpError(431, f"request head over {self._max} bytes")
            return
        if end.end() > self._max:
            raise HttpError(431, f"request head over {self._max} bytes")
        self._head_so_far = None

    def accept(self, deflate: bool = True, max_message_bytes: int = 16 * 1024 * 1024,
               subprotocol: str | None = None) -> tuple[bytes, PerMessageDeflate | None]:
        """Upgrade: the 101 reply and the negotiated extension. Raises :class:`HttpError` for a bad upgrade.

        ``subprotocol``: the one chosen from the client's offer (RFC 6455 4.2.2), if any.
        """
        assert self.request is not None, "accept() before the request is complete"
        key = check_upgrade(self.request)
        extension, ext_header = negotiate_deflate(self.request, deflate, max_message_bytes)
        headers = [
            (b"Upgrade", b"websocket"),
            (b"Connection", b"Upgrade"),
            (b"Sec-WebSocket-Accept", generate_accept_token(key)),
            (b"Server", SERVER_NAME),
        ]
        if ext_header:
            headers.append((b"Sec-WebSocket-Extensions", ext_header))
        if subprotocol is not None:
            headers.append((b"Sec-WebSocket-Protocol", subprotocol.encode("latin-1")))
        event = h11.InformationalResponse(status_code=101, headers=headers, reason=b"Switching Protocols")
        return self._h11.send(event) or b"", extension

    def respond(self, status: int, body: bytes, content_type: bytes = b"text/plain; charset=utf-8",
                headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
        """A complete HTTP/1.1 response (just its head for a HEAD request); the connection closes after it."""
        event = _response_head(status, len(body), content_type, headers)
        try:
            head = self._h11.send(event) or b""
        except h11.LocalProtocolError:  # the client broke HTTP mid-request: answer outside its exchange
            head = h11.Connection(h11.SERVER).send(event) or b""
        return head if self.request is not None and self.request.method == "HEAD" else head + body

    def reject(self, error: HttpError) -> bytes:
        """The error response for ``error`` (its status, a one-line text body, its headers)."""
        return self.respond(error.status, (error.message + "\n").encode("utf-8"), headers=error.headers)

    def _to_request(self, event: h11.Request, body: bytes) -> HttpRequest:
        headers: dict[str, str] = {}
        extensions: list[str] = []
        for raw_name, raw_value in event.headers:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            if name == "sec-websocket-extensions":
                extensions.extend(comma_split(value))
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        major, _, minor = event.http_version.partition(b".")
        check_http_version(int(major), int(minor))
        target = event.target.decode("latin-1")
        try:
            parts = urlsplit(target)
        except ValueError as exc:  # "Invalid IPv6 URL": an unbalanced [ or ] in the authority (found by make fuzz)
            raise HttpError(400, f"malformed request target: {exc}") from None
        return HttpRequest(
            method=event.method.decode("ascii"),
            target=target,
            path=parts.path or "/",
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers=headers,
            trailing=self._h11.trailing_data[0],
            extensions=extensions,
            body=body,
        )


def check_upgrade(request: HttpRequest) -> bytes:
    """Validate a WebSocket upgrade request (RFC 6455 section 4.2.1); return the key.

    Each failure maps to the status a client can act on: 405 for a method other
    than GET, 426 (with ``Upgrade`` and ``Sec-WebSocket-Version: 13``) for a
    plain HTTP request or a wrong version, 400 for a missing or bad key.
    """
    upgrade_headers = [(b"Upgrade", b"websocket"), (b"Sec-WebSocket-Version", WEBSOCKET_VERSION)]
    if request.method != "GET":
        raise HttpError(405, f"method {request.method} not allowed; a WebSocket handshake is a GET", [(b"Allow", b"GET")])
    if not request.wants_websocket or "upgrade" not in request.header_tokens("connection"):
        raise HttpError(426, "this is a WebSocket endpoint: send 'Upgrade: websocket' and 'Connection: Upgrade'", upgrade_headers)
    version = request.headers.get("sec-websocket-version")
    if version is None:
        raise HttpError(400, "missing Sec-WebSocket-Version header (this server speaks version 13)", upgrade_headers[1:])
    if version.strip().encode() != WEBSOCKET_VERSION:
        raise HttpError(426, f"unsupported WebSocket version {version!r}; this server speaks 13", upgrade_headers[1:])
    key = request.headers.get("sec-websocket-key")
    if key is None:
        raise HttpError(400, "missing Sec-WebSocket-Key header")
    try:
        if len(base64.b64decode(key.strip(), validate=True)) != 16:
            raise ValueError
    except (binascii.Error, ValueError):
        raise HttpError(400, "Sec-WebSocket-Key must be 16 random bytes, base64-encoded") from None
    return key.strip().encode("ascii")


def negotiate_deflate(
    request: HttpRequest, enabled: bool = True, max_message_bytes: int = 16 * 1024 * 1024
) -> tuple[PerMessageDeflate | None, bytes | None]:
    """Accept permessage-deflate (RFC 7692) when offered; return it and the header value.

    The extension inflates at most ``max_message_bytes`` per message (see :mod:`server.protocol.deflate`).
    """
    offers = [o for o in request.extensions if o.split(";", 1)[0].strip() == PerMessageDeflate.name]
    if not enabled or not offers:
        return None, None
    # RFC 7692 7.1.1.1: honour a client's request that we reset our context per message.
    no_takeover = any("server_no_context_takeover" in o for o in offers)
    extension = BoundedPerMessageDeflate(max_message_bytes, server_no_context_takeover=no_takeover)
    header = server_extensions_handshake(offers[:1], [extension])
    if header is None or not extension.enabled():
        return None, None
    return extension, header


_KNOWN_STATUSES = frozenset(HTTPStatus)


def http_response(status: int, body: bytes, content_type: bytes = b"text/plain; charset=utf-8",
                  headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """A complete HTTP/1.1 response sent without reading a request (h11 allows it: 408, 503, ...)."""
    return (h11.Connection(h11.SERVER).send(_response_head(status, len(body), content_type, headers)) or b"") + body


def error_response(error: HttpError) -> bytes:
    """:func:`http_response` for ``error`` (used before any request is read, e.g. when refusing at accept)."""
    return http_response(error.status, (error.message + "\n").encode("utf-8"), headers=error.headers)


def _response_head(status: int, length: int, content_type: bytes,
                   headers: list[tuple[bytes, bytes]] | None) -> h11.Response:
    all_headers = [
        (b"Content-Type", content_type),
        (b"Content-Length", str(length).encode()),
        (b"Connection", b"close"),
        (b"Server", SERVER_NAME),
        (b"Cache-Control", b"no-store"),
        *(headers or []),
    ]
    reason = HTTPStatus(status).phrase.encode() if status in _KNOWN_STATUSES else b""
    return h11.Response(status_code=status, headers=all_headers, reason=reason)
