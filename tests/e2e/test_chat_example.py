"""examples/chat.py end to end: run as a user runs it, real clients, stopped by PID with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from ..helpers import ROOT

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def chat() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "examples", "chat.py"), "--port", "0", "--tick", "0.2",
                             "--origin", "https://chat.example"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("listening on ws://127.0.0.1:"), line
        yield line.split()[2]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, proc.stderr.read() if proc.stderr else ""


def events(ws: ClientConnection, kind: str, n: int) -> list[dict]:
    """The next ``n`` events of ``kind`` (ticks and others are skipped)."""
    out: list[dict] = []
    while len(out) < n:
        event = json.loads(ws.recv(timeout=10))
        if event["type"] == kind:
            out.append(event)
    return out


def test_rooms_relay_in_order_and_only_within_the_room(chat: str) -> None:
    with connect(f"{chat}/chat?room=a&user=ada") as ada, connect(f"{chat}/chat?room=a&user=bob") as bob, \
            connect(f"{chat}/chat?room=b&user=cy") as cy:
        assert events(ada, "joined", 2)[-1]["members"] == ["ada", "bob"]
        sent = [f"line {i}" for i in range(300)]

        def talk() -> None:
            for text in sent:
                ada.send(json.dumps({"text": text}))

        t = threading.Thread(target=talk)
        t.start()
        got = [e["text"] for e in events(bob, "message", 300)]
        t.join()
        assert got == sent, "one member's messages must reach the room in the order sent"
        assert events(cy, "tick", 1)  # the ticker reaches every room
        cy.send(json.dumps({"text": "only b"}))
        assert events(cy, "message", 1)[0]["text"] == "only b"
        ada.send("not json")
        assert "error" in events(ada, "error", 1)[0]
        stats = json.load(urllib.request.urlopen("http" + chat[2:] + "/stats", timeout=5))
        assert stats["rooms"]["a"] == {"members": ["ada", "bob"], "relayed": 300}
        assert stats["rooms"]["b"]["members"] == ["cy"]
    # Leaving is announced and rooms are dropped once empty.
    with connect(f"{chat}/chat?room=c&user=dee") as dee:
        with connect(f"{chat}/chat?room=c&user=eve"):
            pass
        assert events(dee, "left", 1)[0]["user"] == "eve"


@pytest.mark.parametrize("url,headers,status", [
    ("/chat?room=a&user=", None, 400),
    ("/chat?room=a&user=no%20spaces", None, 400),
    ("/chat?room=a&user=ada", {"Origin": "https://evil.example"}, 403),
    ("/nowhere", None, 404),
])
def test_bad_requests_get_clear_statuses(chat: str, url: str, headers: dict | None, status: int) -> None:
    with pytest.raises(InvalidStatus) as info:
        connect(chat + url, additional_headers=headers, open_timeout=5)
    assert info.value.response.status_code == status


def test_allowed_origin_and_duplicate_user(chat: str) -> None:
    with connect(f"{chat}/chat?room=a&user=ada", additional_headers={"Origin": "https://chat.example"}):
        with pytest.raises(InvalidStatus) as info:
            connect(f"{chat}/chat?room=a&user=ada", open_timeout=5)
        assert info.value.response.status_code == 409
