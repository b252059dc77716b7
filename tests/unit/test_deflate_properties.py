"""Property tests (hypothesis): permessage-deflate round-trips for any messages and any negotiated parameters.

The server side is the real path: a :class:`Session` with the
:class:`BoundedPerMessageDeflate` the handshake would give it. What a client
(wsproto's own permessage-deflate) sends, cut into reads anywhere, comes out
as the same messages; what the session encodes is read back by the repro's
strict checker (its own zlib inflater), as the same messages with no anomaly —
with and without context takeover, for every window size.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, TextMessage
from wsproto.extensions import PerMessageDeflate

from repro.checker import DeflateParams, WireChecker
from server import Limits
from server.protocol.deflate import BoundedPerMessageDeflate
from server.protocol.frames import OutMessage
from server.protocol.session import MessageReceived, Session

from ..helpers import reads

pytestmark = pytest.mark.timeout(120)
# The same examples every run (tests/conftest.py's "repeatable" profile); --hypothesis-profile=explore draws new ones.
LIMITS = Limits(max_message_bytes=1 << 20, ping_interval=None)
WINDOW = st.one_of(st.none(), st.integers(9, 15))
MESSAGES = st.lists(st.one_of(st.text(max_size=200), st.binary(max_size=200),
                              st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=8), st.integers(1, 5000))),
                    max_size=8)


@st.composite
def negotiated(draw: st.DrawFn) -> tuple[WsConnection, BoundedPerMessageDeflate]:
    """A client offering random parameters and the server extension that accepted them."""
    client_ext = PerMessageDeflate(client_no_context_takeover=draw(st.booleans()),
                                   client_max_window_bits=draw(WINDOW),
                                   server_no_context_takeover=draw(st.booleans()),
                                   server_max_window_bits=draw(WINDOW))
    server_ext = BoundedPerMessageDeflate(LIMITS.max_message_bytes)
    agreed = server_ext.accept(client_ext.offer())  # type: ignore[arg-type]
    assert isinstance(agreed, str)
    client_ext.finalize(agreed)
    return WsConnection(ConnectionType.CLIENT, [client_ext]), server_ext


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(negotiated(), MESSAGES, st.lists(st.integers(0, 1 << 20), max_size=5))
def test_what_a_client_compresses_comes_out_as_sent_however_it_arrives(
        pair: tuple[WsConnection, BoundedPerMessageDeflate], messages: list[str | bytes], cuts: list[int]) -> None:
    client, server_ext = pair
    session = Session(LIMITS, server_ext)
    stream = b"".join(client.send(TextMessage(m) if isinstance(m, str) else BytesMessage(m)) for m in messages)
    for read in reads(stream, cuts):
        session.receive_data(read)
    assert session.events() == [MessageReceived(m) for m in messages]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(negotiated(), MESSAGES)
def test_what_the_server_compresses_is_read_back_as_sent(
        pair: tuple[WsConnection, BoundedPerMessageDeflate], messages: list[str | bytes]) -> None:
    _, server_ext = pair
    session = Session(LIMITS, server_ext)
    wire = b"".join(session.encode(OutMessage.of(m)) for m in messages)
    checker = WireChecker(deflate=DeflateParams(bool(server_ext.server_no_context_takeover),
                                                server_ext.server_max_window_bits or 15))
    checker.feed(wire)
    assert not checker.anomalies and checker.messages == messages
