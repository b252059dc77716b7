"""/stream to third-party clients: every message once, CRC valid, order kept, close 1000."""

from __future__ import annotations

import pytest
import simple_websocket
from websockets.sync.client import connect

from ..helpers import StreamCheck

pytestmark = pytest.mark.timeout(180)

RUNS = [
    pytest.param(2000, 16, id="2000x16B"),
    pytest.param(200, 64 * 1024, id="200x64KiB"),
    pytest.param(20, 1024 * 1024, id="20x1MiB"),
]
PRODUCERS = 8


@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
@pytest.mark.parametrize("count,size", RUNS)
def test_stream_websockets_client(server, count: int, size: int, deflate: bool) -> None:
    url = f"{server.url}/stream?producers={PRODUCERS}&count={count}&size={size}"
    check = StreamCheck(PRODUCERS, count)
    with connect(url, compression="deflate" if deflate else None, max_size=None, open_timeout=10) as ws:
        negotiated = (ws.response.headers.get("Sec-WebSocket-Extensions") if ws.response else None) or ""
        assert ("permessage-deflate" in negotiated) == deflate
        for message in ws:  # ends when the server closes normally
            check.add(message)
        assert ws.close_code == 1000, (ws.close_code, ws.close_reason)
    check.assert_complete()


@pytest.mark.parametrize("count,size", RUNS)
def test_stream_simple_websocket_client(server, count: int, size: int) -> None:
    # simple_websocket.Client never offers permessage-deflate, so this runs plain only.
    url = f"{server.url}/stream?producers={PRODUCERS}&count={count}&size={size}"
    check = StreamCheck(PRODUCERS, count)
    ws = simple_websocket.Client.connect(url, receive_bytes=256 * 1024)
    try:
        while True:
            message = ws.receive(timeout=30)
            assert message is not None, f"no message for 30 s after {check.received}"
            check.add(message)
    except simple_websocket.ConnectionClosed as exc:
        assert exc.reason == 1000, (exc.reason, exc.message)
    check.assert_complete()
