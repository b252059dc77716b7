"""The fuzz targets: any bytes in, an ``AssertionError`` (or any other exception) when a rule is broken.

The first bytes of an input are a small header the fuzzer mutates too:
byte 0 chooses options (deflate, context takeover), byte 1 how many cuts,
then two bytes per cut; the rest is the stream. So one input is one stream
cut into reads in one way, and every rule is checked against the same
stream fed in one piece.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from wsproto.extensions import PerMessageDeflate

from repro.checker import CLASSES, DeflateParams, WireChecker
from server import Limits
from server.protocol.deflate import BoundedPerMessageDeflate
from server.protocol.handshake import Handshake, HttpError, check_upgrade
from server.protocol.session import Closing, MessageReceived, PingSent, PongReceived, ProtocolError, Session, ShutAfterFlush

from ..helpers import reads

MAX_CUTS = 8
LIMITS = Limits(max_message_bytes=4096, ping_interval=None)
HTTP_STATUSES = {400, 413, 414, 431, 501, 505}  # what Handshake.receive_data may answer
UPGRADE_STATUSES = {400, 405, 426}  # what check_upgrade may answer
CLOSE_CODES = {1002, 1007, 1009}  # what a client's bytes may make the session close with


def split(data: bytes) -> tuple[int, list[int], bytes]:
    """(option bits, cut positions, stream) from an input."""
    if len(data) < 2:
        return 0, [], data
    options, n = data[0], data[1] % (MAX_CUTS + 1)
    cuts = [struct.unpack_from("!H", data, 2 + 2 * i)[0] for i in range(n) if 2 + 2 * i + 2 <= len(data)]
    return options, cuts, data[2 + 2 * len(cuts):]


def handshake(data: bytes) -> None:
    """Any bytes: a request, or an HTTP error with a documented status; the same however they arrive."""
    _, cuts, stream = split(data)

    def outcome(pieces: list[int]) -> tuple[object, ...]:
        hs = Handshake(max_request_bytes=2048)
        fed = 0
        try:
            for read in reads(stream, pieces):
                fed += len(read)
                request = hs.receive_data(read)
                if request is not None:
                    try:
                        upgrade: object = check_upgrade(request)
                    except HttpError as exc:
                        assert exc.status in UPGRADE_STATUSES, exc
                        upgrade = exc.status
                    return ("request", request.method, request.target, sorted(request.headers.items()),
                            request.trailing + stream[fed:], upgrade)
            hs.receive_data(b"")
        except HttpError as exc:
            assert exc.status in HTTP_STATUSES, exc
            return ("error", exc.status)
        return ("waiting",)

    got = outcome(cuts)
    assert got[0] != "waiting", "after EOF a handshake must have answered"
    assert got == outcome([]), (got, outcome([]))


def _session(options: int, plain_frames: bool) -> Session:
    if not options & 1:
        return Session(LIMITS, plain_frames=plain_frames)
    client = PerMessageDeflate(client_no_context_takeover=bool(options & 2), server_no_context_takeover=bool(options & 4))
    server = BoundedPerMessageDeflate(LIMITS.max_message_bytes)
    assert isinstance(server.accept(client.offer()), str)  # type: ignore[arg-type]
    return Session(LIMITS, server, plain_frames=plain_frames)


def session(data: bytes) -> None:
    """A client's bytes (deflate on or off): documented events only, bounded messages, the same with and
    without the fast path for plain frames, however the bytes arrive."""
    options, cuts, stream = split(data)

    def run(pieces: list[int], plain_frames: bool) -> tuple[tuple[object, ...], bytes, str]:
        s = _session(options, plain_frames)
        events: list[object] = []
        out = b""
        for read in reads(stream, pieces):
            s.receive_data(read)
            for event in s.events():
                assert isinstance(event, (MessageReceived, Closing, ProtocolError, ShutAfterFlush, PingSent,
                                          PongReceived)), event
                if isinstance(event, MessageReceived):
                    size = len(event.message.encode() if isinstance(event.message, str) else event.message)
                    assert size <= LIMITS.max_message_bytes, size
                if isinstance(event, ProtocolError):
                    assert event.code in CLOSE_CODES, event
                events.append(event)
            out += s.data_to_send()
        return tuple(events), out, s.state.value

    fast = run(cuts, plain_frames=True)
    assert fast == run(cuts, plain_frames=False), "the fast path decided differently from wsproto"
    # Across cuts the decisions must match, but not every word of them: a close reason may differ (wsproto's
    # UTF-8 error names a byte offset within the piece it was decoding), and with deflate, of two errors in a
    # stream the first one found may differ (wsproto inflates what has arrived: an error inside a compressed
    # payload shows when its bytes do). So: the same messages, the same end, the same close code without deflate.
    whole = run([], plain_frames=True)
    assert decisions(fast, options & 1) == decisions(whole, options & 1), "another cut was judged differently"


def decisions(result: tuple[tuple[object, ...], bytes, str], deflate: int) -> tuple[object, ...]:
    events, _, state = result
    messages = [e.message for e in events if isinstance(e, MessageReceived)]
    codes = [e.code for e in events if isinstance(e, ProtocolError)]
    return messages, state, bool(codes) if deflate else codes


def checker(data: bytes) -> None:
    """Any server-to-client bytes: the strict checker reports only documented anomaly classes, however cut."""
    options, cuts, stream = split(data)
    deflate = DeflateParams() if options & 1 else None

    def verdict(pieces: list[int]) -> tuple[object, ...]:
        wire = WireChecker(deflate=deflate)
        for read in reads(stream, pieces):
            wire.feed(read)
        s = wire.summary()
        assert set(s.anomalies) <= set(CLASSES), s.anomalies
        return (s.received_messages, s.valid_messages, sorted((a.cls, a.offset) for a in s.anomalies.values()),
                s.close_code, s.close_reason, s.bytes_checked, s.pings, s.pongs, wire.messages)

    assert verdict(cuts) == verdict([])


TARGETS: dict[str, Callable[[bytes], None]] = {"handshake": handshake, "session": session, "checker": checker}
