"""gunicorn settings for the tests (``-c python:tests.gunicorn_conf``): wsrace's SIGTERM hook, as the README shows."""

from wsrace.wsgi import post_worker_init  # noqa: F401  (a gunicorn server hook, found by name)
