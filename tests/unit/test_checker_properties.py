"""Property tests (hypothesis) for the strict wire checker's own parser (repro/checker.py).

The checker judges what servers send, so it must be exact however the bytes
arrive: a valid server stream (built by wsproto's server side, with and
without permessage-deflate), cut anywhere, is read as the very messages sent
with no anomaly; any other bytes end in documented anomaly classes, never an
exception, and in the same verdict however they are cut.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.extensions import Extension, PerMessageDeflate

from repro.checker import CLASSES, DeflateParams, WireChecker

from ..helpers import reads

pytestmark = pytest.mark.timeout(120)
# The same examples every run (tests/conftest.py's "repeatable" profile); --hypothesis-profile=explore draws new ones.
CUTS = st.lists(st.integers(0, 1 << 20), max_size=6)


@st.composite
def server_streams(draw: st.DrawFn) -> tuple[bytes, list[str | bytes], bool]:
    """(bytes a server sends, the data messages in them, deflate negotiated)."""
    deflate = draw(st.booleans())
    extensions: list[Extension] = []
    if deflate:
        ext = PerMessageDeflate()
        ext.finalize(str(ext.offer()))  # as a server that accepted the default offer
        extensions.append(ext)
    server = WsConnection(ConnectionType.SERVER, extensions)
    out, messages = b"", list[str | bytes]()
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["text", "binary", "fragmented", "ping", "pong"]))
        if kind == "text":
            text = draw(st.text(max_size=300))
            out += server.send(TextMessage(text))
            messages.append(text)
        elif kind == "binary":
            data = draw(st.binary(max_size=300)) * draw(st.sampled_from([1, 1, 300]))
            out += server.send(BytesMessage(data))
            messages.append(data)
        elif kind == "fragmented":
            a, b = draw(st.binary(max_size=100)), draw(st.binary(max_size=100))
            out += server.send(BytesMessage(a, message_finished=False))
            if draw(st.booleans()):
                out += server.send(Ping(b"between"))
            out += server.send(BytesMessage(b))
            messages.append(a + b)
        elif kind == "ping":
            out += server.send(Ping(draw(st.binary(max_size=125))))
        else:
            out += server.send(Pong(draw(st.binary(max_size=125))))
    if draw(st.booleans()):
        out += server.send(CloseConnection(1000, "bye"))
    return out, messages, deflate


def check(stream: bytes, cuts: list[int], deflate: bool) -> tuple[WireChecker, tuple[object, ...]]:
    checker = WireChecker(deflate=DeflateParams() if deflate else None)
    for read in reads(stream, cuts):
        checker.feed(read)
    s = checker.summary()
    assert set(s.anomalies) <= set(CLASSES), s.anomalies
    verdict = (s.received_messages, s.valid_messages, sorted((a.cls, a.offset) for a in s.anomalies.values()),
               s.close_code, s.close_reason, s.bytes_checked, s.pings, s.pongs, checker.messages)
    return checker, verdict


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(server_streams(), CUTS)
def test_a_valid_stream_cut_anywhere_is_read_as_sent(case: tuple[bytes, list[str | bytes], bool], cuts: list[int]) -> None:
    stream, messages, deflate = case
    checker, verdict = check(stream, cuts, deflate)
    assert not checker.anomalies and not checker.failed
    assert checker.messages == messages
    assert verdict == check(stream, [], deflate)[1]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(server_streams(), st.data())
def test_mutated_streams_get_documented_anomalies_the_same_however_cut(
        case: tuple[bytes, list[str | bytes], bool], data: st.DataObject) -> None:
    stream, _, deflate = case
    mutated = bytearray(stream + data.draw(st.binary(max_size=30)))
    if not mutated:
        return
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(mutated) - 1))
        mutated[i] = data.draw(st.integers(0, 255))
    assert check(bytes(mutated), data.draw(CUTS), deflate)[1] == check(bytes(mutated), [], deflate)[1]
