"""Seed inputs for each target: valid traffic of every kind, as the suite and Autobahn's groups send it.

Every seed is ``header + stream`` in the layout of :func:`tests.fuzz.targets.split`
(options, no cuts), so the fuzzer starts from inputs that reach deep into the
parsers and mutates from there.
"""

from __future__ import annotations

from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.extensions import PerMessageDeflate

from server.protocol.frames import OutMessage

from ..helpers import upgrade_request

CLIENT_EVENTS: list[list[object]] = [
    [TextMessage("hello")],
    [BytesMessage(b"\x00\xff" * 100)],
    [TextMessage("h\u00e9llo \u2603 \U0001f600")],
    [BytesMessage(b"x" * 126)],
    [BytesMessage(b"y" * 65536)],  # over the targets' 4 KiB limit: 1009
    [BytesMessage(b"a" * 50, message_finished=False), Ping(b"between"), BytesMessage(b"b" * 50)],
    [TextMessage("part ", message_finished=False), TextMessage("two")],
    [Ping(b"ping"), Pong(b"pong")],
    [TextMessage("bye"), CloseConnection(1000, "done")],
    [CloseConnection(1001, "going away")],
]


def stream(side: ConnectionType, events: list[object], deflate: bool) -> bytes:
    """What wsproto's ``side`` (a client: masked frames; a server: not) sends for ``events``."""
    extensions = [PerMessageDeflate()] if deflate else []
    sender = WsConnection(side, extensions)  # type: ignore[arg-type]
    if deflate:
        extensions[0].finalize("permessage-deflate")
    return b"".join(sender.send(event) for event in events)  # type: ignore[arg-type]


def seeds(target: str) -> list[bytes]:
    """The seed inputs of ``target``."""
    if target == "handshake":
        requests = [
            upgrade_request("/echo"), upgrade_request("/stream?producers=2&count=10"),
            upgrade_request("/echo", extra="Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"),
            upgrade_request("/chat", extra="Sec-WebSocket-Protocol: chat, superchat\r\nOrigin: http://x\r\n"),
            upgrade_request("/echo", version="8"), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", b"GET / HTTP/1.0\r\n\r\n",
            upgrade_request("/echo") + stream(ConnectionType.CLIENT, [TextMessage("right behind")], False),
        ]
        return [b"\x00\x00" + r for r in requests]
    if target == "session":
        return [bytes([deflate, 0]) + stream(ConnectionType.CLIENT, events, bool(deflate))
                for events in CLIENT_EVENTS for deflate in (0, 1)]
    if target == "checker":
        plain = [b"\x00\x00" + OutMessage(b"m" * n, text).frame[0] for n, text in ((5, True), (200, False))]
        return plain + [bytes([deflate, 0]) + stream(ConnectionType.SERVER, events, bool(deflate))
                        for events in CLIENT_EVENTS for deflate in (0, 1)]
    raise ValueError(f"unknown target {target!r}")
