"""Replies to messages received before a protocol error are written before the close frame.

Issue 11 item 3 (Autobahn 3.2-3.4, 4.1.3-4.1.5, 4.2.3-4.2.5, 5.15 NON-STRICT): a valid
message followed at once by a bad frame. RFC 6455 7.1.7 lets the server fail the
connection, but the echo of the valid message should come first. The server stops
reading at the error and sends its close frame once the handlers of earlier messages
are done (server/connections/connection.py ``_on_protocol_error``). Without that, the echo was still
on a worker when the connection failed, and it was lost (these tests failed, 5 of 5).
"""

from __future__ import annotations

import pytest

from ..helpers import client_frame, close_code_of, echo_works, read_server_frames, ws_handshake

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "bad,code",
    [
        (client_frame(0x1, b"rsv", rsv=0b010), 1002),  # Autobahn 3.2: reserved bit
        (client_frame(0x3, b""), 1002),  # 4.1.3: reserved non-control opcode
        (client_frame(0xB, b""), 1002),  # 4.2.3: reserved control opcode
        (client_frame(0x0, b"orphan continuation"), 1002),  # 5.15-like: continuation with no message
        (client_frame(0x1, b"\xff\xfe"), 1007),  # invalid UTF-8
    ],
    ids=["rsv2", "opcode3", "opcode11", "orphan-continuation", "bad-utf8"],
)
def test_echo_of_the_message_before_the_error_comes_before_the_close(server, bad: bytes, code: int) -> None:
    sock, rest = ws_handshake(server.port, "/echo")
    with sock:
        sock.sendall(client_frame(0x1, b"Hello, world!") + bad + client_frame(0x9, b""))
        frames, _ = read_server_frames(sock, rest)
    assert close_code_of(frames) == code, frames
    assert frames[0] == (0x1, b"Hello, world!"), f"the echo must come before the close frame: {frames}"
    assert echo_works(server.port)
