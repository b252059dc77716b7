"""Unit tests, one module each (``test_outbox.py`` tests ``server/connections/outbox.py`` ...): no server, no client.

Socket-free where the module allows (the sans-IO session and handshake, the outbox and send
buffer with a scripted ``sendmsg``, the writer with a scripted loop and transport); the loop and
transport tests use one in-process socketpair. These are what ``make mutation`` runs first.
"""
