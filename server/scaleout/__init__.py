"""Beyond one process: the broker that carries topics between processes, and the process supervisor.

:mod:`~server.scaleout.broker` — ``memory://`` (this process) and
``redis://`` (Redis Streams, every process and host on it);
:mod:`~server.scaleout.supervisor` — ``--processes N`` children sharing one
port (``SO_REUSEPORT``), restarted when they die. Depends only on the shared
vocabulary; :mod:`server.topics` connects a broker to a server's connections.
"""
