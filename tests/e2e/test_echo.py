"""/echo: pipelined messages answered by several workers at once, while the client pings."""

from __future__ import annotations

import os
import random
import threading
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext

import pytest
from websockets.sync.client import connect

from ..helpers import assert_same_messages, pinging

pytestmark = pytest.mark.timeout(120)


def _messages(n: int, seed: int) -> list[str | bytes]:
    rng = random.Random(seed)
    out: list[str | bytes] = []
    for i in range(n):
        size = rng.choice([0, 1, 125, 126, 65535, 65536, rng.randrange(1, 300_000)])
        if i % 2:
            out.append(os.urandom(size))
        else:
            out.append(("é" * (size // 2 + 1))[: size // 2])
    return out


WINDOW = 8 * 1024 * 1024  # bytes sent but not yet echoed


def _echo_run(url: str, messages: Sequence[str | bytes], ping_every: int, ping_thread: bool) -> Counter:
    """Pipeline ``messages`` with a send window, reading replies on another thread.

    The window matters: websockets' sync client holds its protocol lock while a
    send blocks, so a client that never stops sending can deadlock itself once
    the server pushes back (it stops reading a client whose replies pile up).
    """
    received: Counter = Counter()
    outstanding = [0]
    room = threading.Condition()
    with connect(url, max_size=None, compression=None) as ws:
        def reader() -> None:
            for _ in range(len(messages)):
                reply = ws.recv(timeout=60)
                received[reply] += 1
                with room:
                    outstanding[0] -= len(reply)
                    room.notify()

        r = threading.Thread(target=reader)
        r.start()
        with pinging(ws.ping, 0.0005) if ping_thread else nullcontext():
            for i, m in enumerate(messages):
                with room:
                    assert room.wait_for(lambda: outstanding[0] < WINDOW, 60), "replies stopped coming"
                    outstanding[0] += len(m)
                ws.send(m)
                if ping_every and i % ping_every == 0:
                    ws.ping(str(i))
            r.join(90)
        assert not r.is_alive(), f"only {sum(received.values())} of {len(messages)} replies arrived"
    return received


def test_pipelined_mixed_messages_with_pings(server) -> None:
    messages = _messages(500, seed=1)
    received = _echo_run(f"{server.url}/echo", messages, ping_every=3, ping_thread=False)
    # Several workers reply at once, so order across messages is not promised; content is.
    assert_same_messages(received, Counter(messages), ordered=False)


def test_lock_breaking_case_large_messages_while_client_pings_hard(server) -> None:
    """The case that breaks simple-websocket + lock: 256 KiB messages while the client pings every 0.5 ms."""
    messages = [os.urandom(256 * 1024) for _ in range(120)]
    received = _echo_run(f"{server.url}/echo", messages, ping_every=0, ping_thread=True)
    assert_same_messages(received, Counter(messages), ordered=False)
