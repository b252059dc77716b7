"""Reproduce the cross-thread WebSocket write bug and check a server's wire output.

- :mod:`repro.checker` — strict RFC 6455/7692 checker of server-to-client bytes
- :mod:`repro.guard` — the write guard: catches a socket write from the wrong thread
- :mod:`repro.disciplines` — the same routes with direct, locked, simple-websocket and queued writes
- :mod:`repro.cli` — ``python -m repro``
"""
