"""Immutable outgoing messages, encoded once and shareable between connections.

A server data frame without extensions is a pure function of its payload
(servers never mask), so it can be built on the producer's thread and the same
bytes queued to any number of connections, as Beast's chat-multi example
queues one ``shared_ptr<std::string const>``. wsproto's ``FrameProtocol`` is
per-connection state, so this one stateless header builder is written here.

Connections that negotiated permessage-deflate need their own compressor
(context takeover), so for them the IO thread compresses ``payload`` with the
connection's wsproto state, in queue order.
"""

from __future__ import annotations

import struct
import threading

OP_TEXT = 0x1
OP_BINARY = 0x2

_JOIN_BELOW = 16 * 1024
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")
_last = threading.local()  # per thread: the last str/bytes encoded, and its OutMessage


def frame_header(opcode: int, length: int) -> bytes:
    """Header of one final, unmasked, uncompressed frame with ``length`` payload bytes."""
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return _LEN16.pack(first, 126, length)
    return _LEN64.pack(first, 127, length)


class OutMessage:
    """One message ready to be queued: its payload and its plain frame header.

    Build it once with :meth:`of`; it is never mutated afterwards, so it may be
    shared by every connection it is sent to.
    """

    __slots__ = ("buffers", "frame", "header", "length", "payload", "reserved", "size", "text")

    def __init__(self, payload: bytes, text: bool) -> None:
        self.payload = payload
        self.text = text
        self.header = frame_header(OP_TEXT if text else OP_BINARY, len(payload))
        self.size = len(self.header) + len(payload)
        # The buffers a connection writes. Small frames are joined once here, so a
        # batch of them is one iovec each; large payloads are never copied.
        self.frame: tuple[bytes, ...] = (self.header + payload,) if len(payload) <= _JOIN_BELOW else (self.header, payload)
        # An outbox queues the message itself as its frame (server.connections.outbox.Frame's attributes): no copy per client.
        self.buffers = self.frame
        self.length = self.reserved = self.size

    @classmethod
    def of(cls, message: str | bytes | bytearray | memoryview | OutMessage) -> OutMessage:
        """The message, encoded. An OutMessage is returned as is.

        The loop ``for conn in clients: conn.send(msg)`` encodes ``msg`` once:
        each thread remembers the last ``str``/``bytes`` object it encoded
        (immutable, so the same object means the same frame).
        """
        if type(message) is OutMessage:
            return message
        try:
            last = _last.pair
            if last[0] is message:
                return last[1]  # type: ignore[no-any-return]
        except AttributeError:  # this thread's first message
            pass
        if isinstance(message, str):
            out = cls(message.encode("utf-8"), True)
        elif isinstance(message, bytes):
            out = cls(message, False)
        elif isinstance(message, (bytearray, memoryview)):
            return cls(bytes(message), False)  # mutable: copied, never remembered
        else:
            raise TypeError(f"a WebSocket message is str or bytes, not {type(message).__name__}")
        _last.pair = (message, out)
        return out
