"""The WebSocket and HTTP protocols without I/O (as wsproto, h11 and websockets' ``Protocol``).

Feed these classes bytes and deadlines; they return bytes, events and the next
deadlines, and never touch a socket, a thread or a clock:
:class:`~server.protocol.handshake.Handshake` (the HTTP request and the 101 or
an error answer), :class:`~server.protocol.session.Session` (one connection's
frames, messages, keepalive and close), :mod:`~server.protocol.frames`
(encoded outgoing messages), :mod:`~server.protocol.deflate` (bounded
permessage-deflate) and :mod:`~server.protocol.http` (plain HTTP answers).

Depends only on the shared vocabulary (``server.codes``, ``server.errors``,
``server.limits``). Tested with bytes alone (``tests/unit``).
"""
