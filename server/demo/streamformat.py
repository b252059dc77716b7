"""The self-verifying message format of ``/stream``.

Every message is binary and starts with a 16-byte big-endian header::

    offset  size  field
    0       4     producer id (0 .. producers-1)
    4       4     sequence number within that producer (0, 1, 2, ...)
    8       4     total message length in bytes, header included
    12      4     CRC-32 (zlib.crc32) of bytes [0:12] followed by bytes [16:]

followed by ``length - 16`` filler bytes, byte ``i`` being
``(producer * 31 + seq * 7 + i) & 0xFF``. The filler covers every byte value,
so a torn frame shows up as a bad CRC, and bytes with the top bit set are
what a client misreads as the MASK bit when it parses payload as a header.
"""

from __future__ import annotations

import functools
import struct
import zlib

HEADER = struct.Struct("!IIII")
HEADER_SIZE = HEADER.size
MIN_SIZE = HEADER_SIZE

MAX_SIZE = 16 * 1024 * 1024


@functools.lru_cache(maxsize=1)
def _pattern() -> bytes:
    # 256 + 16 MiB covers any slice start and the largest body; built on first use
    # so importing the server does not cost 16 MiB of RSS.
    return bytes(range(256)) * ((MAX_SIZE // 256) + 2)


def filler_start(producer: int, seq: int) -> int:
    return (producer * 31 + seq * 7) & 0xFF


def message_size(producer: int, seq: int, size: int, max_size: int) -> int:
    """Deterministic size between ``size`` and ``max_size`` for one message."""
    if max_size <= size:
        return size
    # A cheap integer hash so sizes spread over the whole range.
    h = (producer * 2654435761 + seq * 40503) & 0xFFFFFFFF
    return size + h % (max_size - size + 1)


def encode(producer: int, seq: int, size: int) -> bytes:
    """Build one message of ``size`` bytes (``MIN_SIZE <= size <= MAX_SIZE``)."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"message size {size} outside {MIN_SIZE}..{MAX_SIZE}")
    start = filler_start(producer, seq)
    body = _pattern()[start : start + size - HEADER_SIZE]
    head = struct.pack("!III", producer, seq, size)
    crc = zlib.crc32(body, zlib.crc32(head))
    return head + struct.pack("!I", crc) + body


def decode(message: bytes) -> tuple[int, int]:
    """Return ``(producer, seq)`` of a valid message; raise ``ValueError`` otherwise."""
    if len(message) < HEADER_SIZE:
        raise ValueError(f"message of {len(message)} bytes is shorter than the {HEADER_SIZE}-byte header")
    producer, seq, length, crc = HEADER.unpack_from(message)
    if length != len(message):
        raise ValueError(f"length field says {length} bytes, message has {len(message)}")
    view = memoryview(message)
    actual = zlib.crc32(view[HEADER_SIZE:], zlib.crc32(view[:12]))
    if actual != crc:
        raise ValueError(f"CRC mismatch: header says {crc:08x}, payload gives {actual:08x}")
    return producer, seq
