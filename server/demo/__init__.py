"""The demo application of ``python -m server``: its routes, its page and the ``/stream`` message format.

Not imported by ``import server``: ``server.DemoApp`` loads it on first use.
Built only on the public API (``server.Server``, ``ConnectionHandle``), like
any application.
"""
