"""permessage-deflate with a cap on inflated size (a decompression-bomb guard).

wsproto's ``PerMessageDeflate`` inflates whatever a frame holds: 64 KiB of
compressed zeros become 64 MiB before any message-size check can run. This
subclass inflates with ``max_length`` and fails the connection with 1009 as
soon as a message would grow past the limit.

It also leaves control frames out of the per-message state: RFC 6455 5.4 lets
a ping come between the fragments of a message, and wsproto's extension
(1.x, python-hyper/wsproto#205) resets the message's compression state on
it, so the rest of the message would arrive as raw deflate bytes.
"""

from __future__ import annotations

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits


class BoundedPerMessageDeflate(PerMessageDeflate):
    def __init__(self, max_message_bytes: int, server_no_context_takeover: bool = False) -> None:
        super().__init__(server_no_context_takeover=server_no_context_takeover)
        self.max_message_bytes = max_message_bytes
        self._inflated = 0  # bytes inflated so far for the message in progress
        self._in_control = False  # the frame being read is a control frame (between fragments, or not)

    @property
    def inflated(self) -> int:
        """Bytes inflated so far for the message in progress: what ``max_message_bytes`` bounds."""
        return self._inflated

    def frame_inbound_header(self, proto: FrameDecoder | FrameProtocol, opcode: Opcode, rsv: RsvBits,
                             payload_length: int) -> CloseReason | RsvBits:
        self._in_control = opcode.iscontrol()
        if self._in_control:  # never compressed, and no business with the message it may interrupt
            return CloseReason.PROTOCOL_ERROR if rsv.rsv1 else RsvBits(True, False, False)
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(self, proto: FrameDecoder | FrameProtocol, data: bytes) -> bytes | CloseReason:
        if self._in_control:
            return data
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        assert self._decompressor is not None
        room = self.max_message_bytes - self._inflated
        try:
            out = self._decompressor.decompress(bytes(data), room + 1)
        except Exception:  # zlib.error
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self._inflated > self.max_message_bytes or self._decompressor.unconsumed_tail:
            return CloseReason.MESSAGE_TOO_BIG
        return out

    def frame_inbound_complete(self, proto: FrameDecoder | FrameProtocol, fin: bool) -> bytes | CloseReason | None:
        if self._in_control:
            self._in_control = False
            return None
        result = super().frame_inbound_complete(proto, fin)
        if fin:
            self._inflated = 0
        return result
