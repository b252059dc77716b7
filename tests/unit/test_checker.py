"""The strict wire checker: one crafted byte stream per anomaly class, and valid streams that pass."""

from __future__ import annotations

import functools
import struct
import zlib

import pytest

from repro.checker import CLASSES, DeflateParams, StreamSpec, WireChecker
from server.demo import streamformat

from ..helpers import client_frame

pytestmark = pytest.mark.timeout(30)


frame = functools.partial(client_frame, masked=False)  # server frames: unmasked


def close(code: int, reason: bytes = b"") -> bytes:
    return frame(0x8, struct.pack("!H", code) + reason)


def compress(data: bytes, comp) -> bytes:
    out = comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def check(stream: bytes, deflate: DeflateParams | None = None, spec: StreamSpec | None = None, chunk: int = 7) -> WireChecker:
    checker = WireChecker(deflate=deflate, stream=spec)
    for i in range(0, len(stream), chunk):  # small chunks: parsing must not depend on read boundaries
        checker.feed(stream[i : i + chunk])
    return checker


PREFIX = frame(0x1, b"hello") + frame(0x2, b"\x00\x01")  # 7 + 4 = 11 bytes of valid frames
AT = len(PREFIX)

FRAMING_CASES = {
    "masked-frame": frame(0x2, b"abc", masked=True, key=bytes(4)),  # zero key: payload unchanged
    "reserved-bits": frame(0x2, b"abc", rsv=0b100),
    "unknown-opcode": frame(0x3, b"abc"),
    "non-minimal-length": frame(0x2, b"abc", length_form="16"),
    "implausible-length": bytes((0x82, 127)) + struct.pack("!Q", 2**40),
    "control-too-long": frame(0x9, b"x" * 126),
    "control-fragmented": frame(0x9, b"x", fin=False),
    "unexpected-continuation": frame(0x0, b"abc"),
    "expected-continuation": frame(0x1, b"ab", fin=False) + frame(0x1, b"cd"),
    "invalid-utf8": frame(0x1, b"\xc3\x28"),
    "bad-close": close(1005),
}


@pytest.mark.parametrize("cls", sorted(FRAMING_CASES))
def test_each_framing_anomaly_is_classified_at_its_offset(cls: str) -> None:
    checker = check(PREFIX + FRAMING_CASES[cls] + frame(0x1, b"never parsed"))
    assert list(checker.anomalies) == [cls]
    anomaly = checker.anomalies[cls]
    expected_offset = AT + (4 if cls == "expected-continuation" else 0)
    assert anomaly.offset == expected_offset, anomaly
    assert anomaly.count == 1
    assert f"[{(PREFIX + FRAMING_CASES[cls])[expected_offset]:02x}]" in anomaly.dump
    assert checker.failed
    assert checker.received == 2  # the valid frames before it were counted, nothing after


def test_deflate_error_is_classified() -> None:
    bad = frame(0x2, b"\xff\xff\xff\xff not deflate", rsv=0b100)
    checker = check(PREFIX + bad, deflate=DeflateParams())
    assert list(checker.anomalies) == ["deflate-error"]
    assert checker.anomalies["deflate-error"].offset == AT


def test_rsv1_without_negotiated_deflate_is_reserved_bits() -> None:
    comp = zlib.compressobj(wbits=-15)
    checker = check(frame(0x2, compress(b"x" * 100, comp), rsv=0b100))
    assert list(checker.anomalies) == ["reserved-bits"]


@pytest.mark.parametrize(
    "bad", [b"\x03", struct.pack("!H", 999), struct.pack("!H", 1000) + b"\xff"], ids=["1-byte", "code-999", "bad-utf8"]
)
def test_bad_close_payloads(bad: bytes) -> None:
    checker = check(frame(0x8, bad))
    assert list(checker.anomalies) == ["bad-close"]


def _stream_messages(order: list[tuple[int, int]], size: int = 64) -> bytes:
    return b"".join(frame(0x2, streamformat.encode(p, s, size)) for p, s in order)


def test_mixed_payload_points_at_the_foreign_bytes() -> None:
    good = streamformat.encode(0, 0, 200)
    torn = good[:100] + b"\x8a\x00" + good[102:]  # a pong's bytes inside the payload
    stream = frame(0x2, torn) + _stream_messages([(0, 1)]) + close(1000)
    checker = check(stream, spec=StreamSpec(1, 2))
    summary = checker.summary()
    assert set(summary.anomalies) == {"mixed-payload", "loss"}
    mixed = summary.anomalies["mixed-payload"]
    assert mixed.offset == 4 + 100  # 4-byte frame header, then message byte 100
    assert "[8a]" in mixed.dump
    assert summary.anomalies["loss"].count == 1


def test_duplicate_out_of_order_and_loss() -> None:
    order = [(0, 0), (0, 2), (0, 1), (0, 1), (1, 0)]
    checker = check(_stream_messages(order) + close(1000), spec=StreamSpec(2, 3))
    summary = checker.summary()
    assert summary.anomalies["out-of-order"].count == 1
    assert summary.anomalies["duplicate"].count == 1
    assert summary.anomalies["loss"].count == 2  # producer 1 seq 1 and 2
    assert summary.anomalies["out-of-order"].offset == 2 * (2 + 64)
    assert summary.anomalies["duplicate"].offset == 3 * (2 + 64)


def test_echo_verifier_locates_foreign_bytes_and_duplicates() -> None:
    from repro.check_session import BINARY, TEXT, EchoVerifier, message_body

    plan = [(TEXT, 3000), (BINARY, 70000), (BINARY, 200)]
    bodies = [message_body(7, i, op, size) for i, (op, size) in enumerate(plan)]
    assert bodies[0].decode("utf-8") and len(bodies[0]) == 3000 and len(bodies[1]) == 70000
    torn = bytearray(bodies[1])
    torn[5000:5006] = frame(0xA, b"\x00\x00\x00\x01")  # a pong written into the middle of a reply, length unchanged
    first = frame(0x2, bodies[2]) + frame(0x1, bodies[0])  # replies may come in any order
    stream = first + frame(0x2, bytes(torn)) + frame(0x2, bodies[2]) + frame(0x2, b"not a reply at all")
    checker = WireChecker(verify=EchoVerifier(7, plan))
    for i in range(0, len(stream), 4096):
        checker.feed(stream[i : i + 4096])
    summary = checker.summary()
    assert summary.valid_messages == 2 and summary.received_messages == 5
    mismatch = summary.anomalies["echo-mismatch"]
    assert mismatch.count == 2
    assert mismatch.offset == len(first) + 10 + 5000  # 64-bit length header, then the first foreign byte
    assert "message 1" in mismatch.detail and "[8a] 04 00 00 00 01" in mismatch.dump
    assert summary.anomalies["echo-duplicate"].count == 1
    assert summary.corrupted


def test_every_class_is_covered_by_a_test() -> None:
    covered = set(FRAMING_CASES) | {"deflate-error", "mixed-payload", "duplicate", "out-of-order", "loss", "echo-mismatch",
                                    "echo-duplicate"}
    assert covered == set(CLASSES)


# -- valid streams report nothing ------------------------------------------------


def test_fragmented_messages_with_control_frames_between_fragments() -> None:
    text = "héllo wörld ✓".encode()
    stream = (
        frame(0x1, text[:2], fin=False)  # splits the 2-byte "é"
        + frame(0x9, b"ping")
        + frame(0x0, text[2:7], fin=False)
        + frame(0xA, b"")
        + frame(0x0, text[7:])
        + frame(0x2, b"", fin=False)
        + frame(0x0, b"")
        + frame(0x1, b"")  # empty text message
        + frame(0x2, b"")  # empty binary message
        + frame(0x2, b"x" * 70000)  # 64-bit length form
        + frame(0x2, b"y" * 300)  # 16-bit length form
        + close(1000, b"bye")
    )
    checker = check(stream)
    assert checker.anomalies == {}
    assert checker.messages == ["héllo wörld ✓", b"", "", b"", b"x" * 70000, b"y" * 300]
    assert checker.close_code == 1000 and checker.close_reason == "bye"
    assert checker.pings == 1 and checker.pongs == 1


@pytest.mark.parametrize("takeover", [True, False], ids=["context-takeover", "no-context-takeover"])
def test_compressed_messages(takeover: bool) -> None:
    comp = zlib.compressobj(wbits=-15)
    stream = b""
    messages = [b"abc" * 1000, b"abc" * 1000, "texte compressé".encode(), b""]
    for i, m in enumerate(messages):
        if not takeover:
            comp = zlib.compressobj(wbits=-15)
        payload = compress(m, comp)
        if i == 0:  # fragmented compressed message: RSV1 on the first frame only
            stream += frame(0x2, payload[:5], fin=False, rsv=0b100) + frame(0x0, payload[5:])
        else:
            stream += frame(0x1 if i == 2 else 0x2, payload, rsv=0b100)
    stream += frame(0x2, b"uncompressed") + close(1001)
    checker = check(stream, deflate=DeflateParams(server_no_context_takeover=not takeover))
    assert checker.anomalies == {}
    assert checker.messages == [b"abc" * 1000, b"abc" * 1000, "texte compressé", b"", b"uncompressed"]


def test_complete_stream_run_is_clean() -> None:
    order = [(p, s) for s in range(5) for p in range(3)]
    checker = check(_stream_messages(order, size=300) + close(1000), spec=StreamSpec(3, 5))
    summary = checker.summary()
    assert summary.anomalies == {} and not summary.corrupted
    assert summary.valid_messages == 15
