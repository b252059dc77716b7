"""server/protocol/frames.py without sockets: frame headers of every length class, text and binary, the buffers a
connection writes, and OutMessage.of's per-thread cache.

Headers are compared with bytes written out by hand from RFC 6455 5.2, and whole frames are parsed by the
repro's strict checker (its own parser, which also rejects non-minimal lengths), never by server code.
"""

from __future__ import annotations

import threading

import pytest

from repro.checker import WireChecker
from server.protocol.frames import OP_BINARY, OP_TEXT, OutMessage, frame_header

pytestmark = pytest.mark.timeout(10)


def checked(wire: bytes) -> list[bytes | str]:
    """The messages in ``wire`` as the strict checker reads them; it must find no anomaly and no leftover bytes."""
    checker = WireChecker()
    checker.feed(wire)
    summary = checker.summary()
    assert summary.anomalies == {}, {name: a.detail for name, a in summary.anomalies.items()}
    assert summary.bytes_checked == len(wire), f"{len(wire) - summary.bytes_checked} bytes left over: a frame is incomplete"
    return checker.messages


# (payload length, the binary frame's header per RFC 6455 5.2: FIN + opcode 2, then the length in its shortest form)
LENGTH_CLASSES = [
    pytest.param(0, b"\x82\x00", id="0"),
    pytest.param(125, b"\x82\x7d", id="125-last-7-bit"),
    pytest.param(126, b"\x82\x7e\x00\x7e", id="126-first-16-bit"),
    pytest.param(65535, b"\x82\x7e\xff\xff", id="65535-last-16-bit"),
    pytest.param(65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00", id="65536-first-64-bit"),
]


@pytest.mark.parametrize("length,header", LENGTH_CLASSES)
def test_binary_frame_of_every_length_class(length: int, header: bytes) -> None:
    payload = bytes(i & 0xFF for i in range(length))
    out = OutMessage(payload, text=False)
    assert out.header == header == frame_header(OP_BINARY, length)
    assert out.size == len(header) + length
    assert b"".join(out.frame) == header + payload
    assert checked(b"".join(out.frame)) == [payload]


@pytest.mark.parametrize("length,header", LENGTH_CLASSES)
def test_text_frame_of_every_length_class(length: int, header: bytes) -> None:
    text = ("é" * length)[: length // 2] + "a" * (length % 2)  # 2-byte characters: the length counts bytes, not characters
    out = OutMessage.of(text)
    assert out.text and out.payload == text.encode("utf-8") and len(out.payload) == length
    assert out.header == bytes((0x81,)) + header[1:] == frame_header(OP_TEXT, length)
    assert checked(b"".join(out.frame)) == [text]


def test_a_stream_of_frames_of_every_class_parses_back_in_order() -> None:
    messages: list[str | bytes] = [b"", "x", bytes(125), "é" * 63, bytes(126), bytes(65535), "z" * 65536, bytes(70000)]
    wire = b"".join(b"".join(OutMessage.of(m).frame) for m in messages)
    assert checked(wire) == messages


@pytest.mark.parametrize("length,buffers", [(0, 1), (16 * 1024, 1), (16 * 1024 + 1, 2), (65536, 2)])
def test_small_frames_are_one_buffer_and_large_payloads_are_never_copied(length: int, buffers: int) -> None:
    payload = bytes(length)
    out = OutMessage(payload, text=False)
    assert len(out.frame) == buffers
    if buffers == 2:
        assert out.frame[0] is out.header and out.frame[1] is payload  # queued as is: no copy per message or client
    # What an outbox reads (server.connections.outbox.Frame's attributes): the message is its own frame.
    assert out.buffers is out.frame and out.length == out.reserved == out.size == sum(map(len, out.frame))


def test_of_encodes_str_as_text_and_bytes_as_binary() -> None:
    assert OutMessage.of("ab").text and OutMessage.of("ab").header == b"\x81\x02"
    binary = OutMessage.of(b"ab")
    assert not binary.text and binary.header == b"\x82\x02" and binary.payload == b"ab"


def test_of_returns_an_outmessage_as_is() -> None:
    out = OutMessage(b"ready", text=False)
    assert OutMessage.of(out) is out


@pytest.mark.parametrize("bad", [42, None, 1.5, ["list"]])
def test_of_refuses_what_is_not_a_message(bad: object) -> None:
    with pytest.raises(TypeError, match=f"str or bytes, not {type(bad).__name__}"):
        OutMessage.of(bad)  # type: ignore[arg-type]


def test_of_remembers_the_last_object_this_thread_encoded() -> None:
    a = "a message" * 100
    b = b"another one" * 100
    first = OutMessage.of(a)
    assert OutMessage.of(a) is first  # for conn in clients: conn.send(msg) encodes once
    other = OutMessage.of(b)
    assert other is not first and other.payload == b and not other.text
    again = OutMessage.of(a)  # only the last one is remembered: encoded anew, and right
    assert again is not first and again.payload == a.encode() and again.text


def test_of_keys_the_cache_by_identity_not_by_kind_or_content() -> None:
    text = "same bytes"
    assert OutMessage.of(text).text
    binary = OutMessage.of(text.encode())  # equal content, other type: must not reuse the text frame
    assert not binary.text and binary.header[0] == 0x82


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_of_copies_a_mutable_buffer_and_never_remembers_it(kind: type) -> None:
    data = bytearray(b"abc" * 10)
    buffer = data if kind is bytearray else memoryview(data)
    first = OutMessage.of(buffer)
    data[0:3] = b"xyz"  # the caller reuses its buffer
    second = OutMessage.of(buffer)
    assert first.payload == b"abc" * 10, "the queued message changed after send() returned"
    assert second.payload == b"xyz" + b"abc" * 9, "a changed buffer was answered from the cache"
    assert type(first.payload) is bytes and not first.text


def test_the_cache_is_per_thread() -> None:
    message = "broadcast" * 50
    mine = OutMessage.of(message)
    theirs: list[OutMessage] = []
    thread = threading.Thread(target=lambda: theirs.extend([OutMessage.of(message), OutMessage.of(b"their last")]))
    thread.start()
    thread.join(5)
    assert not thread.is_alive()
    assert theirs[0] is not mine and theirs[0].payload == mine.payload  # its own encoding, same bytes
    assert OutMessage.of(message) is mine  # the other thread's last message did not replace this thread's
