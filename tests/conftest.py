"""Shared fixtures: every test runs with the write-affinity check on."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator

import pytest
from hypothesis import settings

from server.core import affinity

from .helpers import running_server
from .instance import Instance
from .redis_server import RedisServer
from .tls import TLSFiles, make_tls_files

# Property tests draw the same examples every run unless asked (pytest --hypothesis-profile=explore).
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False, max_examples=3000)
settings.load_profile("repeatable")

# On in every test. Only `make mutation` turns it off (WSRACE_CHECK_AFFINITY=0), to show
# the clients' own checks catch a mutant even without it.
AFFINITY = os.environ.get("WSRACE_CHECK_AFFINITY", "1") != "0"
affinity.set_enabled(AFFINITY)


@pytest.fixture(autouse=True)
def _affinity_on() -> Iterator[None]:
    affinity.set_enabled(AFFINITY)
    yield


@pytest.fixture
def server():
    with running_server() as srv:
        yield srv


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A throwaway CA and a server certificate for 127.0.0.1, localhost and ::1, one set per session (tests/tls.py):
    ``.cert``, ``.key``, ``.ca`` paths; ``.server_context()``, ``.client_context()``."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(autouse=True)
def _no_unhandled_thread_errors(caplog) -> Iterator[None]:
    """Fail a test if a thread died of an exception or the IO loop logged one."""
    errors: list[str] = []
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        errors.append(f"{args.thread.name if args.thread else '?'}: {args.exc_type.__name__}: {args.exc_value}")
        previous(args)

    threading.excepthook = hook
    caplog.set_level(logging.WARNING)
    yield
    threading.excepthook = previous
    loop_errors = [r.getMessage() for r in caplog.records if r.name == "server.core.loop" and r.levelno >= logging.ERROR]
    assert not errors, f"unhandled exceptions in threads: {errors}"
    assert not loop_errors, f"IO-loop callbacks raised: {loop_errors}"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """Debian's ``redis-server`` on a free port with its own temp dir, stopped by PID afterwards."""
    srv = RedisServer().start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def instances() -> Iterator[list[Instance]]:
    """``python -m server`` instances a test starts (append them): killed afterwards if still running."""
    started: list[Instance] = []
    yield started
    for inst in started:
        inst.close()
