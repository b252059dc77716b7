"""The client's byte stream split at frame boundaries: plain data frames decoded here, every other frame to wsproto.

Nearly every frame a client sends in a request/response exchange is the
simplest kind RFC 6455 allows: one final text or binary frame, masked, no
reserved bits, not compressed, its length in the shortest form. wsproto parses
every frame through a buffer, a generator and a few objects per frame; for this
one kind :class:`FrameSplitter` does the same work in a handful of operations
(the header, the mask, a UTF-8 decode for text) and hands out the message.

Anything else — control frames, fragments, compressed frames, non-canonical
lengths, invalid UTF-8, text frames not yet whole (wsproto fails invalid text
as its bytes arrive), frames over :data:`PLAIN_MAX` — goes to wsproto
*whole and in order*, so wsproto still decides every error (the same close
code and reason) and every control frame. The splitter reads only frame
headers to find where each of those frames ends, so wsproto is always fed from
a frame boundary and its own state (a frame half parsed, a fragmented message)
is never bypassed: while a fragmented message is in progress every frame goes
to wsproto. A frame that cannot be plain goes to wsproto as soon as its first
two bytes say so, so a bad header fails exactly when it would without the
splitter (``tests/unit/test_session_properties.py`` holds the session's
decisions equal with and without it, for any stream cut anywhere).
"""

from __future__ import annotations

_TEXT_FIN = 0x81  # FIN, no RSV bits, opcode 1
_BINARY_FIN = 0x82  # FIN, no RSV bits, opcode 2
PLAIN_MAX = 1 << 20  # larger frames go to wsproto, which streams them instead of holding the whole frame
_INT_XOR_BELOW = 2048  # unmasking: one big-int XOR below this many bytes, four byte-translates above


def _xor_table(key: int) -> bytes:
    return bytes(b ^ key for b in range(256))


_XOR_TABLES = [_xor_table(key) for key in range(256)]


def unmask_python(payload: bytes | bytearray | memoryview, mask: bytes | bytearray | memoryview) -> bytes:
    """``payload`` XOR the repeated 4-byte ``mask`` (RFC 6455 5.3), in pure Python (~100 us per 64 KiB)."""
    n = len(payload)
    if n < _INT_XOR_BELOW:
        key = (bytes(mask) * ((n >> 2) + 1))[:n]
        return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")
    data = bytearray(payload)
    for i in range(4):
        data[i::4] = data[i::4].translate(_XOR_TABLES[mask[i]])
    return bytes(data)


try:  # websockets' C function when websockets is installed (the `speedups` extra): ~3 us per 64 KiB
    from websockets.speedups import apply_mask as _apply_mask_c
except ImportError:  # pragma: no cover - depends on what is installed
    _apply_mask_c = None  # type: ignore[assignment]


def unmask(payload: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    """``payload`` XOR the repeated 4-byte ``mask``: websockets' C function if installed, else :func:`unmask_python`."""
    if _apply_mask_c is not None:
        return _apply_mask_c(payload, mask)
    return unmask_python(payload, mask)


# What split() returns: for a plain frame, the message (str or bytes); for anything else, bytes for wsproto.
PLAIN = 0
WSPROTO = 1
Piece = tuple[int, "str | bytes"]


def _header(data: bytes | bytearray, pos: int, end: int) -> tuple[int, int, bool] | None:
    """(header size with the mask, payload length, length in its shortest form) of the frame at ``pos``.

    None while the length itself is not all there; the mask may still be missing when this returns.
    """
    if end - pos < 2:
        return None
    second = data[pos + 1]
    length, size, canonical = second & 0x7F, 2, True
    if length == 126:
        if end - pos < 4:
            return None
        length, size = int.from_bytes(data[pos + 2:pos + 4], "big"), 4
        canonical = length >= 126
    elif length == 127:
        if end - pos < 10:
            return None
        length, size = int.from_bytes(data[pos + 2:pos + 10], "big"), 10
        canonical = 65536 <= length < 1 << 63
    return (size + 4 if second & 0x80 else size), length, canonical


class FrameSplitter:
    """Finds frame boundaries in the client's bytes; decodes plain data frames, passes the rest to wsproto.

    ``plain_max``: the largest plain frame decoded here (the message limit, at
    most :data:`PLAIN_MAX`); a larger one goes to wsproto, which enforces the
    limit while it streams the frame in. A frame that cannot be plain goes to
    wsproto as soon as that is known, before its header is complete, so
    wsproto fails a bad header as early as it would alone.
    """

    def __init__(self, plain_max: int = PLAIN_MAX) -> None:
        self._plain_max = min(plain_max, PLAIN_MAX)
        self._buffer = bytearray()  # an incomplete frame (or header), not yet given to anyone
        self._head = b""  # the start of a header already given to wsproto, until its frame's length is known
        self._owed = 0  # bytes of the current frame still to pass to wsproto (its start went there)
        self._fragmented = False  # a fragmented data message is in progress: wsproto assembles it

    def split(self, data: bytes) -> list[Piece]:
        """The pieces in ``data`` (with what was held back before), in stream order."""
        pieces: list[Piece] = []
        if self._head:  # wsproto has the start of a header: pass bytes until its frame ends
            head = self._head + data[:14]
            header = _header(head, 0, len(head))
            if header is None or header[0] > len(head):
                self._head = head
                pieces.append((WSPROTO, data))
                return pieces
            self._owed = header[0] + header[1] - len(self._head)
            self._head = b""
        if self._owed:
            take = min(self._owed, len(data))
            pieces.append((WSPROTO, data[:take]))
            self._owed -= take
            data = data[take:]
        buffer: bytes | bytearray = data
        if self._buffer:  # a frame arriving in pieces grows in place, not copied again per piece
            self._buffer += data
            buffer, self._buffer = self._buffer, bytearray()
        pos = self._parse(buffer, pieces)
        if pos < len(buffer):
            self._buffer = buffer if pos == 0 and type(buffer) is bytearray else bytearray(buffer[pos:])
        return pieces

    def _parse(self, data: bytes | bytearray, pieces: list[Piece]) -> int:
        """Append the pieces of ``data`` from its start (a frame boundary); return where the unfinished rest starts."""
        pos, end = 0, len(data)
        while end - pos >= 2:  # one byte tells wsproto nothing either
            first, second = data[pos], data[pos + 1]
            candidate = (first == _BINARY_FIN or first == _TEXT_FIN) and second & 0x80 and not self._fragmented
            header = (6, second & 0x7F, True) if candidate and second & 0x7F < 126 else _header(data, pos, end)
            if header is None:
                if candidate:
                    break  # wait for the length
                size, length = 15, 0  # more than any header: what is here goes to wsproto now
            else:
                size, length, canonical = header
                if candidate and canonical and length <= self._plain_max:
                    start, stop = pos + size, pos + size + length
                    if start > end or (stop > end and first == _BINARY_FIN):
                        break  # wait for the mask, or the rest of a binary frame
                    if stop <= end:
                        payload = unmask(data[start:stop], data[start - 4:start]) if length else b""
                        if first == _BINARY_FIN:
                            pieces.append((PLAIN, payload))
                            pos = stop
                            continue
                        try:
                            pieces.append((PLAIN, payload.decode("utf-8")))
                            pos = stop
                            continue
                        except UnicodeDecodeError:
                            pass  # wsproto fails the connection with its own 1007
                    # else text not whole yet: wsproto validates its UTF-8 as the bytes arrive, so invalid
                    # text fails the connection at once (RFC 6455 8.1; Autobahn 6.4.*), not when it is whole.
            # Not a plain frame: wsproto gets it, from its first byte to its last.
            opcode = first & 0x0F
            if opcode in (1, 2) and not first & 0x80:
                self._fragmented = True
            elif opcode == 0 and first & 0x80:
                self._fragmented = False
            if pos + size > end:  # its header is not all here: wsproto judges it as the bytes come
                self._head = bytes(data[pos:end])
                pieces.append((WSPROTO, self._head))
                return end
            stop = pos + size + length
            if stop > end:
                pieces.append((WSPROTO, bytes(data[pos:end])))
                self._owed = stop - end
                return end
            pieces.append((WSPROTO, bytes(data[pos:stop])))
            pos = stop
        return pos
