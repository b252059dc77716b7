"""server/demo/streamformat.py without sockets: the /stream message layout, its bounds, and what decode() rejects.

Layouts are checked against the format's description (struct and zlib here, not the module's own helpers).
The /stream query parameters (server.demo.app.StreamParams) are tested in test_app.py, beside their module.
"""

from __future__ import annotations

import struct
import zlib

import pytest

from server.demo.streamformat import MAX_SIZE, MIN_SIZE, decode, encode, filler_start, message_size

pytestmark = pytest.mark.timeout(10)


def filler(producer: int, seq: int, n: int) -> bytes:
    """Byte i of the body is (producer * 31 + seq * 7 + i) & 0xFF, as the module docstring says."""
    return bytes((producer * 31 + seq * 7 + i) & 0xFF for i in range(n))


@pytest.mark.parametrize("producer,seq,size", [(0, 0, MIN_SIZE), (3, 17, 17), (63, 999_999, 300), (7, 1, 70_000)])
def test_encode_writes_the_documented_layout(producer: int, seq: int, size: int) -> None:
    message = encode(producer, seq, size)
    assert len(message) == size
    got_producer, got_seq, length, crc = struct.unpack("!IIII", message[:16])
    assert (got_producer, got_seq, length) == (producer, seq, size)
    assert message[16:] == filler(producer, seq, size - 16)
    assert crc == zlib.crc32(message[:12] + message[16:])
    assert filler_start(producer, seq) == (producer * 31 + seq * 7) & 0xFF


def test_encode_bounds() -> None:
    assert len(encode(1, 2, MIN_SIZE)) == MIN_SIZE == 16  # a header and nothing else
    with pytest.raises(ValueError, match=f"message size 15 outside {MIN_SIZE}..{MAX_SIZE}"):
        encode(0, 0, MIN_SIZE - 1)
    with pytest.raises(ValueError, match=f"message size {MAX_SIZE + 1} outside {MIN_SIZE}..{MAX_SIZE}"):
        encode(0, 0, MAX_SIZE + 1)


def test_the_largest_message_has_every_filler_byte_right() -> None:
    message = encode(5, 9, MAX_SIZE)
    start = filler_start(5, 9)
    pattern = bytes((start + i) & 0xFF for i in range(256))
    body = memoryview(message)[16:]
    assert len(message) == MAX_SIZE
    assert all(body[i : i + 256] == pattern[: len(body[i : i + 256])] for i in range(0, len(body), 256 * 1024))
    assert bytes(body[-256:]) == bytes((start + len(body) - 256 + i) & 0xFF for i in range(256))
    assert decode(message) == (5, 9)


def test_decode_round_trip() -> None:
    for producer, seq, size in [(0, 0, 16), (2, 5, 1000), (63, 123456, 65536)]:
        assert decode(encode(producer, seq, size)) == (producer, seq)


def test_decode_rejects_a_message_shorter_than_the_header() -> None:
    with pytest.raises(ValueError, match="message of 15 bytes is shorter than the 16-byte header"):
        decode(encode(0, 0, 100)[:15])


def test_decode_rejects_a_wrong_length_field() -> None:
    message = encode(1, 1, 100)
    with pytest.raises(ValueError, match="length field says 100 bytes, message has 99"):
        decode(message[:99])
    with pytest.raises(ValueError, match="length field says 100 bytes, message has 101"):
        decode(message + b"\0")


def test_decode_rejects_any_single_changed_byte() -> None:
    message = encode(2, 3, 600)
    for i in list(range(16)) + list(range(16, 600, 7)):
        if 8 <= i < 12:
            continue  # the length field: caught as a length mismatch (above)
        torn = bytearray(message)
        torn[i] ^= 0x80  # the top bit: what a torn frame's header byte looks like
        with pytest.raises(ValueError, match="CRC mismatch"):
            decode(bytes(torn))


def test_decode_rejects_two_messages_spliced_together() -> None:
    """The bug's signature: the tail of one message's frame replaced by another message's bytes."""
    a, b = encode(0, 0, 1000), encode(1, 0, 1000)
    with pytest.raises(ValueError, match="CRC mismatch"):
        decode(a[:500] + b[500:])


def test_message_size_is_fixed_without_a_range() -> None:
    assert message_size(3, 4, 1000, 0) == 1000
    assert message_size(3, 4, 1000, 1000) == 1000
    assert message_size(3, 4, 1000, 999) == 1000  # max_size below size: size


def test_message_size_spreads_over_the_whole_range_deterministically() -> None:
    sizes = [message_size(p, s, 100, 200) for p in range(4) for s in range(500)]
    assert min(sizes) >= 100 and max(sizes) <= 200
    assert len(set(sizes)) > 90, "sizes do not spread over the range"
    assert sizes == [message_size(p, s, 100, 200) for p in range(4) for s in range(500)]

