"""A strict RFC 6455 / RFC 7692 checker for the server-to-client byte stream.

It parses frames itself — deliberately not with wsproto — so it does not share
the code it checks. Feed it the raw bytes that follow the 101 response; it
validates every frame and, for ``/stream``, every message's integrity.

Every anomaly has a class (see :data:`CLASSES`), a count, and its first
occurrence with the byte offset in the stream and a hex dump around it.
Framing anomalies end parsing (the stream is out of sync after them, as a
browser would fail the connection); integrity anomalies do not.
"""

from __future__ import annotations

import codecs
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

# class -> (fatal?, what it means)
CLASSES: dict[str, tuple[bool, str]] = {
    "masked-frame": (True, "a server frame has the MASK bit set (RFC 6455 5.1)"),
    "reserved-bits": (True, "RSV bits set that no extension negotiated (5.2, RFC 7692 6)"),
    "unknown-opcode": (True, "opcode 3-7 or 11-15 (5.2)"),
    "non-minimal-length": (True, "payload length not in its shortest form, or 64-bit length with the top bit set (5.2)"),
    "implausible-length": (True, "frame length beyond the checker's limit: payload bytes read as a header"),
    "control-too-long": (True, "control frame payload over 125 bytes (5.5)"),
    "control-fragmented": (True, "control frame without FIN (5.5)"),
    "unexpected-continuation": (True, "continuation frame with no message in progress (5.4)"),
    "expected-continuation": (True, "new data frame while a fragmented message is in progress (5.4)"),
    "invalid-utf8": (True, "text message that is not valid UTF-8 (8.1)"),
    "bad-close": (True, "close frame with an invalid code, a 1-byte payload or a non-UTF-8 reason (5.5.1, 7.4)"),
    "deflate-error": (True, "permessage-deflate payload that does not inflate (RFC 7692 7.2.2)"),
    "mixed-payload": (False, "message whose CRC or length does not match its header: bytes of two messages mixed"),
    "duplicate": (False, "a producer's message arrived twice"),
    "out-of-order": (False, "a producer's message arrived after a later one"),
    "loss": (False, "a producer's message never arrived"),
    "echo-mismatch": (False, "an echo reply that is not byte-identical to any message sent: bytes of two messages mixed"),
    "echo-duplicate": (False, "an echo reply arrived twice"),
}
FRAMING = {name for name, (fatal, _) in CLASSES.items() if fatal}

VALID_CLOSE_CODES = set(range(1000, 1004)) | set(range(1007, 1015)) | set(range(3000, 5000))
_DATA_OPCODES = {0x1, 0x2}
_CONTROL_OPCODES = {0x8, 0x9, 0xA}
_DEFLATE_TAIL = b"\x00\x00\xff\xff"

# verify(opcode, message) -> None when the message is right, else (class, index of the first bad byte
# in the message or -1, detail). Used by ``wsrace-check --mode echo`` (repro/check.py).
MessageVerifier = Callable[[int, bytes], "tuple[str, int, str] | None"]


def hexdump(data: bytes, start_offset: int, mark: int | None = None, width: int = 16) -> str:
    """Hex dump with decimal stream offsets; the byte at offset ``mark`` is bracketed."""
    lines = []
    for row in range(0, len(data), width):
        chunk = data[row : row + width]
        first = start_offset + row
        cells = " ".join(f"[{b:02x}]" if first + i == mark else f"{b:02x}" for i, b in enumerate(chunk))
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{first:>10}  {cells:<{width * 3 + 2}} |{text}|")
    return "\n".join(lines)


@dataclass
class Anomaly:
    cls: str
    count: int = 0
    offset: int = -1
    detail: str = ""
    dump: str = ""


@dataclass
class StreamSpec:
    """What a ``/stream`` run should deliver: ``producers`` x ``count`` messages."""

    producers: int
    count: int


@dataclass
class DeflateParams:
    """What the handshake negotiated for the server's direction."""

    server_no_context_takeover: bool = False
    server_max_window_bits: int = 15


@dataclass
class Summary:
    received_messages: int
    valid_messages: int
    expected_messages: int | None
    anomalies: dict[str, Anomaly]
    close_code: int | None
    close_reason: str
    bytes_checked: int
    pings: int
    pongs: int

    @property
    def corrupted(self) -> bool:
        return any(cls != "loss" for cls in self.anomalies)

    def first(self) -> Anomaly | None:
        return min(self.anomalies.values(), key=lambda a: a.offset, default=None)


class WireChecker:
    """Feed it server-to-client bytes; it validates frames and messages.

    No I/O: call :meth:`feed` with bytes as they arrive, then :meth:`summary`.
    """

    def __init__(
        self,
        deflate: DeflateParams | None = None,
        stream: StreamSpec | None = None,
        max_frame: int = 64 * 1024 * 1024,
        verify: MessageVerifier | None = None,
    ) -> None:
        self.deflate = deflate
        self.stream = stream
        self.verify = verify
        self.max_frame = max_frame
        self.anomalies: dict[str, Anomaly] = {}
        self.failed = False  # framing lost: nothing after it can be trusted
        self.close_code: int | None = None
        self.close_reason = ""
        self.messages: list[bytes | str] = []  # kept only when keep_messages
        self.keep_messages = stream is None and verify is None
        self.received = 0
        self.valid = 0
        self.pings = 0
        self.pongs = 0
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self._history = b""  # bytes just before _buf, for dumps
        # message in progress
        self._msg_opcode: int | None = None
        self._msg_parts: list[bytes] = []
        self._msg_offset = 0
        self._msg_compressed = False
        self._msg_single = True
        self._head_len = 0
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._inflater = None if deflate is None else self._new_inflater()
        # stream integrity
        self._next_seq: dict[int, int] = {}
        self._missing: dict[int, set[int]] = {}
        self.closed = False

    # -- public ------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self.failed or self.closed:
            return
        self._buf += data
        while not self.failed and not self.closed and self._parse_one():
            pass

    @property
    def done(self) -> bool:
        return self.failed or self.closed

    def summary(self) -> Summary:
        anomalies = dict(self.anomalies)
        expected = None
        if self.stream is not None:
            expected = self.stream.producers * self.stream.count
            lost = 0
            for p in range(self.stream.producers):
                lost += len(self._missing.get(p, ())) + max(0, self.stream.count - self._next_seq.get(p, 0))
            if lost:
                a = anomalies.setdefault("loss", Anomaly("loss"))
                a.count = lost
                if a.offset < 0:
                    a.offset = self._base
                    a.detail = f"{lost} message(s) never arrived"
        return Summary(
            received_messages=self.received,
            valid_messages=self.valid,
            expected_messages=expected,
            anomalies=anomalies,
            close_code=self.close_code,
            close_reason=self.close_reason,
            bytes_checked=self._base,
            pings=self.pings,
            pongs=self.pongs,
        )

    # -- framing -----------------------------------------------------------

    def _parse_one(self) -> bool:
        buf = self._buf
        if len(buf) < 2:
            return False
        b0, b1 = buf[0], buf[1]
        fin, rsv, opcode = b0 & 0x80, (b0 >> 4) & 0x7, b0 & 0x0F
        masked, n = b1 & 0x80, b1 & 0x7F
        head = 2
        if n == 126:
            if len(buf) < 4:
                return False
            n = struct.unpack_from("!H", buf, 2)[0]
            head = 4
            if n < 126:
                return self._fatal("non-minimal-length", 0, f"16-bit length field holds {n} (< 126)")
        elif n == 127:
            if len(buf) < 10:
                return False
            n = struct.unpack_from("!Q", buf, 2)[0]
            head = 10
            if n >> 63:
                return self._fatal("non-minimal-length", 0, f"64-bit length {n:#x} has its top bit set")
            if n < 65536:
                return self._fatal("non-minimal-length", 0, f"64-bit length field holds {n} (< 65536)")
        # Header checks that need no payload come first: a torn stream shows here.
        if masked:
            return self._fatal("masked-frame", 0, f"byte 1 is {b1:#04x}: MASK bit set (opcode {opcode}, length {n})")
        if opcode not in _DATA_OPCODES and opcode not in _CONTROL_OPCODES and opcode != 0:
            return self._fatal("unknown-opcode", 0, f"opcode {opcode} in byte 0 = {b0:#04x}")
        allowed_rsv = 0x4 if (self.deflate is not None and opcode in _DATA_OPCODES) else 0
        if rsv & ~allowed_rsv:
            return self._fatal("reserved-bits", 0, f"byte 0 is {b0:#04x}: RSV bits {rsv:03b} on opcode {opcode}")
        if opcode >= 0x8:
            if n > 125:
                return self._fatal("control-too-long", 0, f"opcode {opcode} with {n}-byte payload")
            if not fin:
                return self._fatal("control-fragmented", 0, f"opcode {opcode} without FIN")
        elif opcode == 0 and self._msg_opcode is None:
            return self._fatal("unexpected-continuation", 0, "continuation frame with no message in progress")
        elif opcode != 0 and self._msg_opcode is not None:
            return self._fatal("expected-continuation", 0, f"opcode {opcode} while a fragmented message is open")
        if n > self.max_frame:
            return self._fatal("implausible-length", 0, f"frame claims {n} bytes (limit {self.max_frame})")
        if len(buf) < head + n:
            return False
        payload = bytes(buf[head : head + n])
        offset = self._base
        self._head_len = head
        self._frame(fin, rsv, opcode, payload, offset)
        self._advance(head + n)
        return True

    def _advance(self, n: int) -> None:
        consumed = bytes(self._buf[:n])
        self._history = (self._history + consumed)[-64:]
        del self._buf[:n]
        self._base += n

    def _frame(self, fin: int, rsv: int, opcode: int, payload: bytes, offset: int) -> None:
        if opcode == 0x9:
            self.pings += 1
            return
        if opcode == 0xA:
            self.pongs += 1
            return
        if opcode == 0x8:
            self._close_frame(payload, offset)
            return
        if opcode != 0:  # first frame of a message
            self._msg_opcode = opcode
            self._msg_offset = offset
            self._msg_parts = []
            self._msg_compressed = bool(rsv & 0x4)
            self._msg_single = bool(fin)
            self._utf8.reset()
        self._msg_parts.append(payload)
        if not self._msg_compressed and self._msg_opcode == 0x1:
            try:
                self._utf8.decode(payload, final=bool(fin))
            except UnicodeDecodeError as exc:
                self._fatal("invalid-utf8", offset - self._base, f"text message: {exc.reason}")
                return
        if fin:
            self._message_complete()

    def _message_complete(self) -> None:
        opcode, offset = self._msg_opcode, self._msg_offset
        data = b"".join(self._msg_parts)
        self._msg_opcode, self._msg_parts = None, []
        if self._msg_compressed:
            assert self._inflater is not None and self.deflate is not None
            try:
                data = self._inflater.decompress(data + _DEFLATE_TAIL)
            except zlib.error as exc:
                self._fatal("deflate-error", offset - self._base, f"inflate failed: {exc}")
                return
            if self.deflate.server_no_context_takeover:
                self._inflater = self._new_inflater()
            if opcode == 0x1:
                try:
                    data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    self._fatal("invalid-utf8", offset - self._base, f"text message: {exc.reason}")
                    return
        self.received += 1
        if self.stream is not None and opcode == 0x2:
            self._check_stream_message(data, offset)
        elif self.verify is not None:
            self._verify_message(opcode or 0, data, offset)
        else:
            self.valid += 1
        if self.keep_messages:
            self.messages.append(data.decode("utf-8") if opcode == 0x1 else data)

    def _new_inflater(self) -> zlib._Decompress:
        assert self.deflate is not None
        return zlib.decompressobj(-self.deflate.server_max_window_bits)

    def _close_frame(self, payload: bytes, offset: int) -> None:
        self.closed = True
        if len(payload) == 0:
            self.close_code = 1005
            return
        if len(payload) == 1:
            self._fatal("bad-close", offset - self._base, "1-byte close payload")
            return
        code = struct.unpack_from("!H", payload)[0]
        self.close_code = code
        try:
            self.close_reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            self._fatal("bad-close", offset - self._base, "close reason is not UTF-8")
            return
        if code not in VALID_CLOSE_CODES:
            self._fatal("bad-close", offset - self._base, f"close code {code} may not be sent")

    # -- message integrity (the /stream format) ------------------------------

    def _check_stream_message(self, data: bytes, offset: int) -> None:
        assert self.stream is not None
        if len(data) < 16:
            self._note("mixed-payload", offset, f"{len(data)}-byte message is shorter than the 16-byte header")
            return
        producer, seq, length, crc = struct.unpack_from("!IIII", data)
        if length != len(data):
            self._note("mixed-payload", offset, f"length field says {length}, message has {len(data)} bytes")
            return
        if zlib.crc32(data[16:], zlib.crc32(data[:12])) != crc:
            where = self._first_foreign_byte(data, producer, seq)
            if where is not None and self._msg_single and not self._msg_compressed:
                at = offset + self._head_len + where
                self._note("mixed-payload", at, f"CRC mismatch in producer {producer} seq {seq}: "
                           f"foreign bytes from message byte {where} (stream offset {at})")
            else:
                self._note("mixed-payload", offset, f"CRC mismatch in producer {producer} seq {seq}")
            return
        if producer >= self.stream.producers:
            self._note("mixed-payload", offset, f"producer id {producer} out of range")
            return
        expected = self._next_seq.get(producer, 0)
        missing = self._missing.setdefault(producer, set())
        if seq == expected:
            self._next_seq[producer] = seq + 1
        elif seq > expected:
            missing.update(range(expected, seq))
            self._next_seq[producer] = seq + 1
        elif seq in missing:
            missing.discard(seq)
            self._note("out-of-order", offset, f"producer {producer} seq {seq} after seq {expected - 1}")
            return
        else:
            self._note("duplicate", offset, f"producer {producer} seq {seq} again")
            return
        self.valid += 1

    def _verify_message(self, opcode: int, data: bytes, offset: int) -> None:
        assert self.verify is not None
        problem = self.verify(opcode, data)
        if problem is None:
            self.valid += 1
            return
        cls, where, detail = problem
        if where >= 0 and self._msg_single and not self._msg_compressed:
            at = offset + self._head_len + where
            detail += f" (stream offset {at})"
        else:
            at = offset
        self._note(cls, at, detail)

    @staticmethod
    def _first_foreign_byte(data: bytes, producer: int, seq: int) -> int | None:
        """Where the payload stops following its own filler pattern (see the /stream format)."""
        start = (producer * 31 + seq * 7 + 0) & 0xFF
        step = 4096
        for chunk in range(16, len(data), step):
            body = data[chunk : chunk + step]
            expected = bytes((start + chunk - 16 + i) & 0xFF for i in range(len(body)))
            if body != expected:
                for i, (a, b) in enumerate(zip(body, expected, strict=True)):
                    if a != b:
                        return chunk + i
        return None

    # -- recording -----------------------------------------------------------

    def _dump(self, offset: int) -> str:
        rel = offset - self._base
        before = self._history[-32:] if rel <= 0 else bytes(self._buf[max(0, rel - 32) : rel])
        start = offset - len(before)
        after = bytes(self._buf[max(0, rel) : max(0, rel) + 48])
        return hexdump(before + after, start, mark=offset)

    def _note(self, cls: str, offset: int, detail: str) -> None:
        a = self.anomalies.get(cls)
        if a is None:
            a = self.anomalies[cls] = Anomaly(cls, 0, offset, detail, self._dump(offset) if offset >= self._base else "")
        a.count += 1

    def _fatal(self, cls: str, rel: int, detail: str) -> bool:
        self._note(cls, self._base + rel, f"at stream offset {self._base + rel}: {detail}")
        self.failed = True
        return False
