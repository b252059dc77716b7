"""The sans-IO WebSocket session, with bytes alone: no sockets, no threads, no clock.

Client frames come from wsproto's client side; what the session writes is read
back with the small parser below, not with server code.
"""

from __future__ import annotations

import struct
import zlib

import pytest
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.extensions import PerMessageDeflate

from server import Limits
from server.protocol.frames import OutMessage
from server.protocol.handshake import Handshake
from server.protocol.session import (
    Closing,
    Deadline,
    MessageReceived,
    PingSent,
    PongReceived,
    PongTimeout,
    ProtocolError,
    Session,
    SessionState,
    ShutAfterFlush,
)

from ..helpers import upgrade_request

pytestmark = pytest.mark.timeout(10)
LIMITS = Limits(max_message_bytes=1000, ping_interval=20.0, ping_timeout=5.0, close_timeout=3.0)


def client() -> WsConnection:
    return WsConnection(ConnectionType.CLIENT)


def frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """Server frames as (fin+rsv bits, opcode, payload); server frames are never masked."""
    out, i = [], 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        assert not b1 & 0x80, "a server frame must not be masked"
        n, i = b1 & 0x7F, i + 2
        if n == 126:
            n, i = struct.unpack("!H", data[i : i + 2])[0], i + 2
        elif n == 127:
            n, i = struct.unpack("!Q", data[i : i + 8])[0], i + 8
        out.append((b0 & 0xF0, b0 & 0x0F, data[i : i + n]))
        i += n
    return out


def close_frame(data: bytes) -> tuple[int, str]:
    [(_, opcode, payload)] = frames(data)
    assert opcode == 0x8
    return struct.unpack("!H", payload[:2])[0], payload[2:].decode()


def test_messages_come_out_whole_and_in_order_and_are_counted_in_flight() -> None:
    s, c = Session(LIMITS), client()
    s.receive_data(c.send(TextMessage("hé", message_finished=False)) + c.send(TextMessage("llo")))
    s.receive_data(c.send(BytesMessage(b"\x00\x01")) + c.send(TextMessage("3")))
    assert s.events() == [MessageReceived("héllo"), MessageReceived(b"\x00\x01"), MessageReceived("3")]
    assert (s.inflight, s.inflight_bytes) == (3, 5 + 2 + 1)
    s.message_handled(5)
    assert (s.inflight, s.inflight_bytes) == (2, 3)
    assert s.data_to_send() == b""


def test_any_cut_of_the_bytes_gives_the_same_events() -> None:
    c = client()
    stream = b"".join([c.send(TextMessage("plain")), c.send(BytesMessage(b"\x00" * 300)), c.send(Ping(b"p")),
                       c.send(TextMessage("fr", message_finished=False)), c.send(TextMessage("ag")),
                       c.send(TextMessage("é" * 70)), c.send(CloseConnection(1000, "bye"))])
    whole = Session(LIMITS)
    whole.receive_data(stream)
    expected, expected_out = whole.events(), whole.data_to_send()
    assert frames(expected_out) == [(0x80, 0xA, b"p"), (0x80, 0x8, b"\x03\xe8bye")]
    assert [e for e in expected if isinstance(e, MessageReceived)] == [
        MessageReceived("plain"), MessageReceived(b"\x00" * 300), MessageReceived("frag"), MessageReceived("é" * 70)]
    for cut in range(len(stream) + 1):
        s = Session(LIMITS)
        s.receive_data(stream[:cut])
        s.receive_data(stream[cut:])
        assert s.events() == expected, cut
        assert s.data_to_send() == expected_out, cut


def test_invalid_utf8_fails_as_soon_as_it_arrives_not_when_the_frame_is_whole() -> None:
    frame = client().send(TextMessage("ok" * 50))
    header = 6  # 2 + mask: 100 bytes fit the 7-bit length
    masked_payload = bytearray(frame[header:])
    for i, byte in enumerate(b"\xff\xfe"):  # turn the first two payload bytes into invalid UTF-8
        masked_payload[i] = byte ^ frame[2 + i]
    s = Session(LIMITS)
    s.receive_data(frame[:header] + bytes(masked_payload[:10]))  # the rest of the frame has not arrived
    events = s.events()  # RFC 6455 8.1: fail fast on invalid text (Autobahn 6.4.*)
    assert [e.code for e in events if isinstance(e, ProtocolError)] == [1007], events
    assert close_frame(s.data_to_send())[0] == 1007


def test_a_ping_is_answered_with_its_payload() -> None:
    s, c = Session(LIMITS), client()
    s.receive_data(c.send(Ping(b"abc")))
    assert frames(s.data_to_send()) == [(0x80, 0xA, b"abc")]


def test_a_message_over_the_limit_fails_at_once_with_1009_when_nothing_is_in_flight() -> None:
    s, c = Session(LIMITS), client()
    s.receive_data(c.send(BytesMessage(bytes(1001))) + c.send(TextMessage("after")))
    events = s.events()
    assert events[0] == ProtocolError(1009, "message over 1000 bytes")
    assert Closing(1009, "message over 1000 bytes") in events and events[-1] == ShutAfterFlush()
    assert not any(isinstance(e, MessageReceived) for e in events), "nothing after the error is processed"
    assert close_frame(s.data_to_send()) == (1009, "message over 1000 bytes")
    assert s.state is SessionState.CLOSED and s.close_code == 1009


def test_a_failing_session_closes_once_its_handlers_are_done() -> None:
    s, c = Session(LIMITS), client()
    s.receive_data(c.send(TextMessage("first")))
    s.receive_data(b"\x83\x80\x00\x00\x00\x00")  # a masked frame with the reserved opcode 3
    assert [type(e) for e in s.events()] == [MessageReceived, ProtocolError]
    assert s.state is SessionState.FAILING and s.accepts_data, "the reply to 'first' may still go out"
    assert s.data_to_send() == b"", "the close waits for the handler"
    assert s.deadlines()[Deadline.FAIL] == LIMITS.close_timeout
    s.receive_data(c.send(TextMessage("ignored")))
    assert s.events() == []
    s.message_handled(5)
    assert close_frame(s.data_to_send())[0] == 1002
    assert s.events()[-1] == ShutAfterFlush() and s.deadlines()[Deadline.FAIL] is None


def test_a_failing_session_stops_waiting_at_the_fail_deadline() -> None:
    s, c = Session(LIMITS), client()
    s.receive_data(c.send(TextMessage("first")) + b"\x83\x80\x00\x00\x00\x00")
    s.events(), s.deadlines()
    s.deadline_passed(Deadline.FAIL)
    assert close_frame(s.data_to_send())[0] == 1002 and s.state is SessionState.CLOSED


def test_the_clients_close_is_echoed_and_ends_the_session() -> None:
    s, c = Session(LIMITS), client()
    s.receive_data(c.send(CloseConnection(code=4001, reason="bye")))
    assert close_frame(s.data_to_send()) == (4001, "bye")
    assert s.events() == [Closing(4001, "bye"), ShutAfterFlush()]
    deadlines = s.deadlines()
    assert deadlines[Deadline.CLOSE] == LIMITS.close_timeout and deadlines[Deadline.PING] is None
    assert not s.accepts_data and s.close_code == 4001


def test_our_close_waits_for_the_clients_reply() -> None:
    s, c = Session(LIMITS), client()
    s.deadlines()
    s.close(1000, "done")
    data = s.data_to_send()
    assert close_frame(data) == (1000, "done")
    assert s.state is SessionState.CLOSING and s.events() == [Closing(1000, "done")]
    assert s.deadlines() == {Deadline.PING: None, Deadline.CLOSE: LIMITS.close_timeout}
    s.receive_data(c.send(TextMessage("late")))  # the client's data no longer matters
    assert s.events() == []
    c.receive_data(data)
    [event] = list(c.events())
    assert isinstance(event, CloseConnection)
    s.receive_data(c.send(event.response()))
    assert s.events() == [ShutAfterFlush()] and s.state is SessionState.CLOSED
    assert s.data_to_send() == b"", "the closing handshake is complete: nothing more to say"
    s.close(1001)
    assert s.data_to_send() == b"" and s.close_code == 1000, "a second close changes nothing"


def test_a_protocol_error_while_closing_shuts_at_once() -> None:
    s = Session(LIMITS)
    s.close(1000)
    s.data_to_send(), s.events()
    s.receive_data(b"\x83\x80\x00\x00\x00\x00")
    events = s.events()
    assert [type(e) for e in events] == [ProtocolError, ShutAfterFlush]
    assert isinstance(events[0], ProtocolError) and events[0].code == 1002
    assert s.state is SessionState.CLOSED and s.data_to_send() == b""


def test_close_without_waiting_shuts_after_the_close_frame() -> None:
    s = Session(LIMITS)
    s.close(1011, "keepalive ping timeout", wait_for_reply=False)
    assert close_frame(s.data_to_send()) == (1011, "keepalive ping timeout")
    assert s.events() == [Closing(1011, "keepalive ping timeout"), ShutAfterFlush()]


def test_keepalive_pings_and_expects_a_pong() -> None:
    s, c = Session(LIMITS), client()
    assert s.deadlines() == {Deadline.PING: LIMITS.ping_interval}
    s.deadline_passed(Deadline.PING)
    [(_, opcode, payload)] = frames(data := s.data_to_send())
    assert opcode == 0x9 and payload == struct.pack("!I", 1)
    assert s.events() == [PingSent()]
    assert s.deadlines() == {Deadline.PONG: LIMITS.ping_timeout, Deadline.PING: LIMITS.ping_interval}
    c.receive_data(data)
    [ping] = list(c.events())
    assert isinstance(ping, Ping)
    s.receive_data(c.send(ping.response()))
    assert s.events() == [PongReceived()] and s.deadlines() == {Deadline.PONG: None}
    s.deadline_passed(Deadline.PING)
    s.deadline_passed(Deadline.PONG)  # no answer this time
    assert s.events() == [PingSent(), PongTimeout()]


def test_an_unsolicited_pong_is_harmless() -> None:
    s, c = Session(LIMITS), client()
    s.receive_data(c.send(Pong(b"x")))
    assert s.events() == [PongReceived()] and s.data_to_send() == b""


def test_no_keepalive_without_an_interval() -> None:
    s = Session(Limits(ping_interval=None))
    assert s.deadlines() == {}


def _deflate_pair() -> tuple[Session, WsConnection]:
    """Negotiated the way a real connection negotiates: through the handshake, and the client's own extension."""
    handshake = Handshake()
    handshake.receive_data(upgrade_request("/", extra="Sec-WebSocket-Extensions: permessage-deflate\r\n"))
    reply, extension = handshake.accept(deflate=True, max_message_bytes=1000)
    assert extension is not None
    [agreed] = [line.split(b": ", 1)[1] for line in reply.split(b"\r\n") if line.startswith(b"Sec-WebSocket-Extensions")]
    theirs = PerMessageDeflate()
    theirs.finalize(agreed.decode())
    return Session(LIMITS, extension), WsConnection(ConnectionType.CLIENT, [theirs])


def test_deflate_compresses_in_order_and_inflates_within_the_limit() -> None:
    s, c = _deflate_pair()
    data = s.encode(OutMessage.of("hello hello hello hello"))
    [(bits, opcode, payload)] = frames(data)
    assert bits & 0x40 and opcode == 0x1, "RSV1 marks a compressed message"
    assert zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff") == b"hello hello hello hello"
    s.receive_data(c.send(TextMessage("x" * 900)))
    assert s.events() == [MessageReceived("x" * 900)]


def test_deflate_refuses_a_message_that_inflates_past_the_limit() -> None:
    s, c = _deflate_pair()
    s.receive_data(c.send(BytesMessage(bytes(50_000))))  # a few dozen bytes on the wire
    [error, *_] = s.events()
    assert error == ProtocolError(1009, "message inflates to over 1000 bytes")
    assert close_frame(s.data_to_send())[0] == 1009


def test_who_closed_first_is_recorded() -> None:
    """``closed_by``: what the metrics count closes by (client, server, or none without a closing handshake)."""
    by_client = Session(LIMITS)
    c = client()
    assert by_client.closed_by == "none"
    by_client.receive_data(c.send(CloseConnection(code=1000)))
    assert by_client.closed_by == "client"
    by_server = Session(LIMITS)
    by_server.close(1001, "going away")
    reply = client()
    reply.receive_data(by_server.data_to_send())
    by_server.receive_data(reply.send(next(iter(reply.events())).response()))  # type: ignore[attr-defined]
    assert by_server.closed_by == "server"
    broken = Session(LIMITS)
    broken.receive_data(b"\x83\x80\x00\x00\x00\x00")  # reserved opcode 3: the server fails the connection
    assert broken.closed_by == "server"
