"""End-to-end tests: a real server on 127.0.0.1 and real clients (websockets, raw sockets, Chromium,
Node's ``ws``, gunicorn and Werkzeug, redis-server), started by the tests themselves and bounded in time.
"""
