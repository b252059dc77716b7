"""A chat server with rooms on wsrace's public API — the README's API walk-through.

    python examples/chat.py --port 8000
    # ws://127.0.0.1:8000/chat?room=lobby&user=ada   (send {"text": "hi"})
    # http://127.0.0.1:8000/stats                     (JSON)

What it shows, and on which thread each part runs:

* ``ChatApp.route`` (IO thread: quick checks only) answers ``/stats`` with a
  JSON :class:`~server.Response`, refuses bad user names (400) and a name
  already taken in the room (409), and returns a :class:`Member` handler for
  ``/chat``. The Origin allow-list is ``Server(origins=...)``.
* ``Member.on_message`` (a worker thread; one connection's messages in order)
  relays the text to the room with ``Server.broadcast`` — encoded once, queued
  to every member; ``on_open``/``on_close`` (IO thread) announce joins and leaves.
* A ticker thread (the application's own) broadcasts the time to every room.
* ``Server.serve_forever`` handles SIGINT/SIGTERM: members get 1001.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from server import ConnectionHandle, HttpError, HttpRequest, Limits, Response, Server

USER = re.compile(r"[A-Za-z0-9_-]{1,32}")
MAX_TEXT = 4096


class Room:
    """Members of one room: replaced, never mutated, so any thread may read ``members``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: dict[str, ConnectionHandle] = {}
        self.relayed = 0


class ChatApp:
    """The router: ``/chat`` (WebSocket) and ``/stats`` (JSON)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.rooms: dict[str, Room] = {}
        self.lock = threading.Lock()  # guards rooms and each room's members
        self.stop = threading.Event()

    def route(self, request: HttpRequest) -> Member | Response:
        if request.path == "/stats":
            return Response.json(self.stats())
        if request.path != "/chat":
            raise HttpError(404, f"no route for {request.path}; try /chat?room=NAME&user=NAME or /stats")
        room, user = request.query.get("room", "lobby"), request.query.get("user", "")
        if not USER.fullmatch(user) or not USER.fullmatch(room):
            raise HttpError(400, "room and user must be 1-32 letters, digits, '_' or '-'")
        with self.lock:
            if user in self.rooms.get(room, Room(room)).members:
                raise HttpError(409, f"user {user!r} is already in room {room!r}")
        return Member(self, room, user)

    def join(self, room_name: str, user: str, conn: ConnectionHandle) -> Room:
        with self.lock:
            room = self.rooms.setdefault(room_name, Room(room_name))
            room.members = {**room.members, user: conn}
            return room

    def leave(self, room: Room, user: str) -> None:
        with self.lock:
            room.members = {k: v for k, v in room.members.items() if k != user}
            if not room.members:
                self.rooms.pop(room.name, None)

    def say(self, room: Room, event: dict[str, object]) -> None:
        """Any thread: one JSON text to everyone in the room."""
        self.server.broadcast(json.dumps(event), list(room.members.values()))

    def stats(self) -> dict[str, object]:
        with self.lock:
            rooms = {name: {"members": sorted(r.members), "relayed": r.relayed} for name, r in self.rooms.items()}
        return {"rooms": rooms, "server": self.server.stats.as_dict()}

    def tick(self, interval: float) -> None:
        while not self.stop.wait(interval):
            with self.lock:
                rooms = list(self.rooms.values())
            for room in rooms:
                self.say(room, {"type": "tick", "time": round(time.time(), 3)})

    def close(self) -> None:  # Server.shutdown calls this
        self.stop.set()


class Member:
    """One connection's handler: its room and user name."""

    def __init__(self, app: ChatApp, room: str, user: str) -> None:
        self.app, self.room_name, self.user = app, room, user
        self.room: Room | None = None

    def on_open(self, conn: ConnectionHandle) -> None:
        self.room = self.app.join(self.room_name, self.user, conn)
        self.app.say(self.room, {"type": "joined", "user": self.user, "members": sorted(self.room.members)})

    def on_message(self, conn: ConnectionHandle, message: str | bytes) -> None:
        assert self.room is not None
        try:
            text = json.loads(message)["text"]
            if not isinstance(text, str) or len(text) > MAX_TEXT:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            conn.send(json.dumps({"type": "error", "error": f'send {{"text": "..."}} with at most {MAX_TEXT} characters'}))
            return
        with self.app.lock:
            self.room.relayed += 1
        self.app.say(self.room, {"type": "message", "user": self.user, "text": text})

    def on_close(self, conn: ConnectionHandle) -> None:
        if self.room is not None:
            self.app.leave(self.room, self.user)
            self.app.say(self.room, {"type": "left", "user": self.user})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="A chat server with rooms on wsrace.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free one (default: %(default)s)")
    p.add_argument("--origin", action="append", default=[],
                   help="allowed Origin for browsers (repeatable); clients without one are always allowed")
    p.add_argument("--tick", type=float, default=1.0, help="seconds between ticks, 0 for none (default: %(default)s)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = Server(ChatApp, host=args.host, port=args.port, origins=[None, *args.origin], limits=Limits(ping_interval=20))
    app: ChatApp = server.router  # type: ignore[assignment]
    if args.tick:
        threading.Thread(target=app.tick, args=(args.tick,), name="chat-ticker", daemon=True).start()
    def ready(srv: Server) -> None:
        print(f"listening on {srv.url}", flush=True)
        logging.getLogger("chat").info("chat at %s/chat?room=NAME&user=NAME, stats at %sstats", srv.url, srv.page_url)

    clean = server.serve_forever(ready=ready)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
