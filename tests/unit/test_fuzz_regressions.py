"""Every fuzz target on its seeds and on every input ``make fuzz`` ever crashed on (``tests/fuzz/regressions/``).

A crash found by the fuzzer is copied there, named for what it showed, and
stays in the suite: the handshake's ``long-method-then-nul`` was a real bug (a
501 or a 400 depending on how the bytes arrived); the two session inputs
showed where the cross-cut rule was stricter than RFC 6455 (see
:func:`tests.fuzz.targets.session`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.corpus import seeds
from tests.fuzz.targets import TARGETS

pytestmark = pytest.mark.timeout(60)
REGRESSIONS = Path(__file__).resolve().parents[1] / "fuzz" / "regressions"


def cases() -> list[tuple[str, str, bytes]]:
    found = [(target, f"seed{i}", data) for target in TARGETS for i, data in enumerate(seeds(target))]
    for target in TARGETS:
        for path in sorted((REGRESSIONS / target).glob("*")):
            if not path.name.startswith("."):
                found.append((target, path.name, path.read_bytes()))
    return found


@pytest.mark.parametrize(("target", "name", "data"), cases(), ids=[f"{t}-{n}" for t, n, _ in cases()])
def test_target_holds(target: str, name: str, data: bytes) -> None:
    TARGETS[target](data)


def test_the_stored_crashes_are_there() -> None:
    assert (REGRESSIONS / "handshake" / "long-method-then-nul").exists()
    assert len(list((REGRESSIONS / "session").glob("*"))) >= 2
