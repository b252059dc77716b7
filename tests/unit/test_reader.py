"""The frame splitter (server/protocol/reader.py) with bytes alone.

Client frames are built by wsproto's client side (or by hand for the ones no
client library makes); the splitter must hand out the messages of plain frames
and pass every other frame to wsproto whole, in order, however the bytes are
cut into reads.
"""

from __future__ import annotations

import os
import random
import struct

import pytest
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, Ping, TextMessage
from wsproto.frame_protocol import XorMaskerSimple

from server.protocol.reader import PLAIN, WSPROTO, FrameSplitter, unmask, unmask_python

pytestmark = pytest.mark.timeout(20)


def client_frames(*events: object) -> list[bytes]:
    ws = WsConnection(ConnectionType.CLIENT)
    return [ws.send(event) for event in events]  # type: ignore[arg-type]


def masked(first: int, payload: bytes, length_bytes: bytes | None = None) -> bytes:
    """A masked frame by hand: ``length_bytes`` overrides the length field (for non-canonical forms)."""
    mask = os.urandom(4)
    if length_bytes is None:
        n = len(payload)
        length_bytes = bytes((0x80 | n,)) if n < 126 else (bytes((0x80 | 126,)) + struct.pack("!H", n) if n < 65536
                                                          else bytes((0x80 | 127,)) + struct.pack("!Q", n))
    return bytes((first,)) + length_bytes + mask + unmask(payload, mask)


def split_all(splitter: FrameSplitter, chunks: list[bytes]) -> list[tuple[int, str | bytes]]:
    out: list[tuple[int, str | bytes]] = []
    for chunk in chunks:
        out.extend(splitter.split(chunk))
    return out


def merged(pieces: list[tuple[int, str | bytes]]) -> list[tuple[int, str | bytes]]:
    """Adjacent wsproto pieces joined: how many reads a passed-through frame took does not matter."""
    out: list[tuple[int, str | bytes]] = []
    for kind, piece in pieces:
        if kind == WSPROTO and out and out[-1][0] == WSPROTO:
            out[-1] = (WSPROTO, out[-1][1] + piece)  # type: ignore[operator]
        else:
            out.append((kind, piece))
    return out


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 2047, 2048, 2049, 65535, 65536, 70001])
def test_unmask_matches_wsproto(size: int) -> None:
    payload, mask = os.urandom(size), os.urandom(4)
    expected = bytes(XorMaskerSimple(mask).process(bytearray(payload)))
    assert unmask_python(payload, mask) == expected  # the pure-Python fallback
    assert unmask(payload, mask) == expected  # websockets' C function where installed (the test extra has it)


def test_plain_frames_are_decoded_here() -> None:
    stream = b"".join(client_frames(TextMessage("héllo"), BytesMessage(b"\x00\x01"), BytesMessage(b""),
                                    BytesMessage(os.urandom(300)), TextMessage("x" * 70000)))
    pieces = FrameSplitter().split(stream)
    assert [kind for kind, _ in pieces] == [PLAIN] * 5
    assert pieces[0][1] == "héllo" and pieces[1][1] == b"\x00\x01" and pieces[2][1] == b""
    assert pieces[4][1] == "x" * 70000


def test_every_cut_of_the_stream_gives_the_same_pieces() -> None:
    rng = random.Random(7)
    stream = b"".join([
        *client_frames(BytesMessage(b"a" * 200), Ping(b"p"), BytesMessage(b"b" * 130, message_finished=False),
                       BytesMessage(b"c" * 5), BytesMessage(b"d")),
        masked(0x82, b"e" * 10, bytes((0x80 | 126,)) + struct.pack("!H", 10)),  # non-canonical length
    ])
    whole = merged(FrameSplitter().split(stream))
    assert [kind for kind, _ in whole] == [PLAIN, WSPROTO, PLAIN, WSPROTO]  # the fragments and the ping together
    for cut in range(len(stream) + 1):
        assert merged(split_all(FrameSplitter(), [stream[:cut], stream[cut:]])) == whole, cut
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(stream)), 6))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert merged(split_all(FrameSplitter(), chunks)) == whole


def test_wsproto_gets_every_other_frame_whole_and_in_order() -> None:
    ping, first, rest = client_frames(Ping(b"hi"), TextMessage("frag", message_finished=False), TextMessage("ment"))
    unmasked = b"\x82\x03abc"
    rsv = masked(0xC2, b"compressed?")
    bad_utf8 = masked(0x81, b"\xff\xfe")
    too_long = masked(0x82, b"z" * 11)
    stream = ping + first + masked(0x82, b"inside") + rest + unmasked + rsv + bad_utf8 + too_long
    pieces = merged(FrameSplitter(plain_max=10).split(stream))
    assert pieces == [(WSPROTO, stream)]  # every one of them is wsproto's to judge
    # ... and a plain frame after them is decoded here again.
    splitter = FrameSplitter(plain_max=10)
    tail = masked(0x82, b"ok")
    assert merged(splitter.split(ping + first + rest + tail)) == [(WSPROTO, ping + first + rest), (PLAIN, b"ok")]


def test_text_not_yet_whole_goes_to_wsproto_which_checks_its_utf8_as_it_arrives() -> None:
    text, after = client_frames(TextMessage("é" * 100), BytesMessage(b"after"))
    splitter = FrameSplitter()
    pieces = split_all(splitter, [text[:50], text[50:] + after])
    assert merged(pieces) == [(WSPROTO, text), (PLAIN, b"after")]
    assert FrameSplitter().split(text) == [(PLAIN, "é" * 100)]  # whole: decoded here


def test_a_frame_passed_through_across_reads_keeps_its_bytes_for_wsproto() -> None:
    big = masked(0x82, os.urandom(3000))
    after = masked(0x82, b"after")
    splitter = FrameSplitter(plain_max=1000)
    pieces = split_all(splitter, [big[:100], big[100:2000], big[2000:] + after])
    assert merged(pieces) == [(WSPROTO, big), (PLAIN, b"after")]
    assert all(len(piece) for _, piece in pieces)


def test_an_incomplete_header_is_held_back() -> None:
    frame = masked(0x82, b"y" * 70000)  # 14-byte header
    splitter = FrameSplitter()
    for i in range(14):
        assert splitter.split(frame[i:i + 1]) == []
    assert splitter.split(frame[14:-1]) == []
    assert splitter.split(frame[-1:]) == [(PLAIN, b"y" * 70000)]
