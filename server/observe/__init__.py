"""Seeing inside a running server: metrics sampled on the IO thread, Prometheus exposition, the live feed.

:mod:`server.observe.metrics` samples what only the IO thread may read (queue
ages, per-connection queues, the loop's lag) once a second and builds the
:class:`~server.observe.metrics.Metrics` snapshot behind ``Server.metrics``;
:mod:`server.observe.prometheus` turns snapshots into Prometheus text (the
``prometheus_client`` extra, ``pip install 'wsrace[metrics]'``).
"""
