"""Server.adopt: serving a socket another server accepted and read the HTTP request from (the seam under WSGI support).

The test plays that other server: it accepts on its own listener and reads the
request head (and whatever came right behind it), then hands socket and bytes
to a listener-less ``Server(port=None)``. From then on only the IO thread may
touch the socket (the write-affinity check is on in ``make test``).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from server import Server

from ..helpers import client_frame, read_server_frames, upgrade_request

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def hub() -> Iterator[Server]:
    from server.demo.app import DemoApp

    srv = Server(DemoApp, host="127.0.0.1", port=None).start()
    try:
        yield srv
    finally:
        assert srv.shutdown(timeout=10)


def _accepted_pair() -> tuple[socket.socket, socket.socket]:
    """(client, the accepted server side), over 127.0.0.1."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=10)
        ours, _ = listener.accept()
    return client, ours


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    return data


def test_a_server_without_a_listener_starts_and_stops(hub: Server) -> None:
    assert hub.port == 0 and hub.open_connections() == []


def test_an_adopted_socket_is_served_from_its_already_read_request(hub: Server) -> None:
    client, ours = _accepted_pair()
    with client:
        # The client's first frame right behind its request: the other server read both.
        client.sendall(upgrade_request("/echo") + client_frame(0x1, b"first"))
        read = _read_head(ours)
        conn = hub.adopt(ours, read).result(10)
        reply = _read_head(client)
        assert reply.startswith(b"HTTP/1.1 101"), reply[:80]
        client.sendall(client_frame(0x1, b"second"))
        echoes, _ = read_server_frames(client, reply.split(b"\r\n\r\n", 1)[1], max_frames=2)
        client.sendall(client_frame(0x8, (1000).to_bytes(2, "big")))
        closing, _ = read_server_frames(client)
    assert echoes == [(0x1, b"first"), (0x1, b"second")]
    assert closing[-1][0] == 0x8 and closing[-1][1][:2] == (1000).to_bytes(2, "big")
    assert conn.wait_closed(5) and conn.close_code == 1000
    assert hub.stats.accepted == 1 and hub.stats.opened == 1


def test_a_bad_adopted_request_gets_our_http_error(hub: Server) -> None:
    client, ours = _accepted_pair()
    with client:
        client.sendall(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        conn = hub.adopt(ours, _read_head(ours)).result(10)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    assert conn.wait_closed(5)


def test_adopting_a_socket_whose_client_is_gone_fails_the_future(hub: Server) -> None:
    client, ours = _accepted_pair()
    client.close()
    ours.shutdown(socket.SHUT_RDWR)  # not connected any more: getpeername() fails
    future = hub.adopt(ours, b"")
    with pytest.raises(OSError):
        future.result(10)
