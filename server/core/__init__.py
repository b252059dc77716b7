"""The IO core: one IO thread and the sockets it owns.

:class:`~server.core.loop.IOLoop` runs the thread (selectors, timers, and
``post()`` — the one way another thread hands it work);
:class:`~server.core.transport.SocketTransport` and
:class:`~server.core.tls.TlsTransport` are the only code that reads or writes
a connection's socket, each owning its :class:`~server.core.sendbuffer.SendBuffer`
(partial writes, TLS's pinned retry, the half-close);
:mod:`~server.core.affinity` checks that nothing else does.

Knows nothing of WebSocket beyond bytes; depends on ``server.protocol`` only
for the HTTP answer to a plain-HTTP request on a TLS port.
"""
