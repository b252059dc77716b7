"""pytest plugin (entry point ``pytest11``): the ``wsrace_check`` fixture.

A regression test for the cross-thread write bug in three lines, with your
server running at ``url``::

    def test_websocket_frames_are_not_torn(wsrace_check):
        result = wsrace_check("ws://127.0.0.1:5000/echo")
        assert result.clean, result.report()

``wsrace_check(url, **knobs)`` runs :func:`repro.check.check` (knobs are
:class:`repro.check_session.CheckOptions` fields, e.g. ``runs=3``,
``time_limit=20``, ``mode="drain"``, ``headers=[("Cookie", "session=...")]``)
and returns a :class:`repro.check.CheckResult`: ``.clean``, ``.anomalies``,
``.report()`` (the verdict table and the first anomaly's hex dump) and
``.assert_clean()``, which raises an ``AssertionError`` carrying that report.
A connection or handshake failure is a result too (verdict ``ERROR``, not
clean), so the assertion says what went wrong.

Importing this module is cheap: the checker is imported when the fixture is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from .check import CheckResult


class WsraceCheck(Protocol):
    def __call__(self, url: str, **knobs: Any) -> CheckResult: ...


@pytest.fixture
def wsrace_check() -> WsraceCheck:
    """``wsrace_check(url, **knobs)`` -> ``CheckResult``; see :mod:`repro.pytest_plugin`."""
    from .check import check

    def run(url: str, **knobs: Any) -> CheckResult:
        return check(url, **knobs)

    return run
