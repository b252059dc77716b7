"""One connection: the IO-thread machine, the face other threads get, the way messages go out and come in.

:class:`~server.connections.connection.Connection` (IO thread only) wires a
transport, the HTTP phase and a :class:`~server.protocol.session.Session` to
the loop and decides when each runs. :class:`~server.connections.handle.ConnectionHandle`
is what handlers and every other thread get: ``send()``, ``close()``, the one
:class:`~server.connections.handle.State` field and the close outcome.
Out: :class:`~server.connections.outbox.Outbox` (the producers' queue and its
flow control, bounded server-wide by :class:`~server.connections.backlog.Backlog`)
and :class:`~server.connections.writer.Writer` (outbox → send buffer → socket).
In: :class:`~server.connections.dispatch.Dispatcher` runs the route's
:class:`~server.connections.handler.Handler` on the pool, in order through a
:class:`~server.connections.strand.Strand`, or inline.

Depends on ``server.core`` and ``server.protocol``; nothing here knows of a
listener, the other connections or a broker.
"""
