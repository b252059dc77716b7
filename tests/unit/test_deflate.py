"""server/protocol/deflate.py without sockets: wsproto connections fed bytes, the server side using BoundedPerMessageDeflate.

What the server sends is inflated by the repro's strict checker (its own zlib inflater), what it receives is
built by wsproto's client or by hand (tests.helpers.client_frame with zlib), so neither side is the code checked.
"""

from __future__ import annotations

import random
import zlib

import pytest
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason

from repro.checker import DeflateParams, WireChecker
from server.protocol.deflate import BoundedPerMessageDeflate

from ..helpers import client_frame

pytestmark = pytest.mark.timeout(10)

LIMIT = 64 * 1024


def negotiated(limit: int = LIMIT, no_takeover: bool = False) -> tuple[Connection, Connection, BoundedPerMessageDeflate]:
    """A client and a server wsproto connection past the handshake, permessage-deflate agreed between them."""
    client_ext = PerMessageDeflate(server_no_context_takeover=no_takeover)
    server_ext = BoundedPerMessageDeflate(limit, server_no_context_takeover=no_takeover)
    client_ext.finalize(server_ext.accept(client_ext.offer()))  # type: ignore[arg-type]
    assert client_ext.enabled() and server_ext.enabled()
    return Connection(ConnectionType.CLIENT, [client_ext]), Connection(ConnectionType.SERVER, [server_ext]), server_ext


def received(server: Connection, wire: bytes) -> list[Event]:
    """The server's events for ``wire``, data frames of one message joined into one event."""
    server.receive_data(wire)
    events: list[Event] = []
    parts: list[bytes | str] = []
    for event in server.events():
        if isinstance(event, (BytesMessage, TextMessage)):
            parts.append(bytes(event.data) if isinstance(event, BytesMessage) else event.data)
            if event.message_finished:
                if isinstance(event, TextMessage):
                    events.append(TextMessage(data="".join(p for p in parts if isinstance(p, str))))
                else:
                    events.append(BytesMessage(data=b"".join(p for p in parts if isinstance(p, bytes))))
                parts = []
        else:
            events.append(event)
    return events


def compressed(data: bytes, z: zlib._Compress | None = None, last: bool = True) -> bytes:
    """``data`` deflated as RFC 7692 7.2.1 says: raw deflate, sync flush, the 4-byte tail removed at the message's end.

    ``last=False``: a fragment of a longer message (same ``z``), flushed so it inflates on its own, tail kept.
    """
    z = z or zlib.compressobj(wbits=-15)
    out = z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4] if last else out


def close_code(events: list[Event]) -> int | None:
    closes = [e for e in events if isinstance(e, CloseConnection)]
    return closes[0].code if closes else None


MESSAGES: list[str | bytes] = [b"", "x", "é" * 1000, bytes(LIMIT), random.Random(3).randbytes(20000), b"abc" * 5000, "last"]


def test_client_to_server_round_trip_with_context_takeover() -> None:
    client, server, _ = negotiated()
    wire = b"".join(client.send(TextMessage(data=m) if isinstance(m, str) else BytesMessage(data=m)) for m in MESSAGES)
    assert [e.data for e in received(server, wire)] == MESSAGES  # type: ignore[attr-defined]


@pytest.mark.parametrize("no_takeover", [False, True], ids=["context-takeover", "server-no-context-takeover"])
def test_server_to_client_is_compressed_and_inflates_independently(no_takeover: bool) -> None:
    client, server, _ = negotiated(no_takeover=no_takeover)
    wire = b"".join(server.send(TextMessage(data=m) if isinstance(m, str) else BytesMessage(data=m)) for m in MESSAGES)
    assert len(wire) < sum(len(m) for m in MESSAGES) // 4, "the server's messages were not compressed"
    checker = WireChecker(deflate=DeflateParams(server_no_context_takeover=no_takeover))  # its own zlib inflater
    checker.feed(wire)
    summary = checker.summary()
    assert summary.anomalies == {}, {k: a.detail for k, a in summary.anomalies.items()}
    assert checker.messages == MESSAGES
    client.receive_data(wire)
    assert [e.data for e in client.events()] == MESSAGES  # type: ignore[attr-defined]


def test_a_message_that_inflates_to_exactly_the_limit_is_accepted() -> None:
    _, server, _ = negotiated()
    events = received(server, client_frame(0x2, compressed(bytes(LIMIT)), rsv=0b100))
    assert close_code(events) is None and [len(e.data) for e in events] == [LIMIT]  # type: ignore[attr-defined]


def test_one_byte_over_the_limit_takes_the_1009_path() -> None:
    _, server, _ = negotiated()
    events = received(server, client_frame(0x2, compressed(bytes(LIMIT + 1)), rsv=0b100))
    assert close_code(events) == CloseReason.MESSAGE_TOO_BIG == 1009
    assert not any(isinstance(e, BytesMessage) for e in events), "the oversized message was delivered"


def test_a_bomb_is_stopped_while_inflating_not_after() -> None:
    bomb = compressed(bytes(32 * 1024 * 1024))  # ~32 KiB on the wire, 32 MiB inflated
    assert len(bomb) < 64 * 1024
    _, server, ext = negotiated()
    assert close_code(received(server, client_frame(0x2, bomb, rsv=0b100))) == 1009
    assert ext.inflated <= LIMIT + 1, f"inflated {ext.inflated} bytes for a {LIMIT}-byte limit"


def test_the_limit_counts_the_whole_message_across_its_frames() -> None:
    z = zlib.compressobj(wbits=-15)
    third = LIMIT // 3 + 1  # each frame inflates to a third of the limit; the three together pass it
    wire = client_frame(0x2, compressed(bytes(third), z, last=False), fin=False, rsv=0b100)
    wire += client_frame(0x0, compressed(bytes(third), z, last=False), fin=False)
    wire += client_frame(0x0, compressed(bytes(third), z))
    _, server, _ = negotiated()
    assert close_code(received(server, wire)) == 1009


def test_the_count_starts_again_with_each_message() -> None:
    client, server, _ = negotiated()
    big = random.Random(5).randbytes(LIMIT * 3 // 4)  # each under the limit, the two together over it
    wire = client.send(BytesMessage(data=big)) + client.send(BytesMessage(data=big[::-1]))
    events = received(server, wire)
    assert close_code(events) is None and [e.data for e in events] == [big, big[::-1]]  # type: ignore[attr-defined]


def test_a_stream_that_does_not_inflate_is_1007() -> None:
    _, server, _ = negotiated()
    events = received(server, client_frame(0x2, b"\xff\xff\xff\xff not deflate", rsv=0b100))
    assert close_code(events) == CloseReason.INVALID_FRAME_PAYLOAD_DATA == 1007


def test_an_uncompressed_message_passes_through_unbounded_by_the_extension() -> None:
    """RSV1 clear: nothing to inflate; the connection's own max_message_bytes check applies (not this class's)."""
    _, server, ext = negotiated(limit=100)
    events = received(server, client_frame(0x2, bytes(1000)))
    assert [len(e.data) for e in events] == [1000] and ext.inflated == 0  # type: ignore[attr-defined]


def test_a_ping_between_the_fragments_of_a_compressed_message() -> None:
    """wsproto 1.x alone fails this (python-hyper/wsproto#205): the rest would arrive as raw deflate bytes."""
    z = zlib.compressobj(wbits=-15)
    wire = client_frame(0x2, compressed(b"a" * 5000, z, last=False), fin=False, rsv=0b100)
    wire += client_frame(0x9, b"ping")  # RFC 6455 5.4: control frames may come between fragments
    wire += client_frame(0x0, compressed(b"b" * 5000, z))
    _, server, _ = negotiated()
    events = received(server, wire)
    assert [type(e) for e in events] == [Ping, BytesMessage]
    assert events[1].data == b"a" * 5000 + b"b" * 5000  # type: ignore[attr-defined]
