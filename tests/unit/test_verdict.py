"""repro/verdict.py: one verdict type for make repro and wsrace-check, ordered by severity."""

from __future__ import annotations

import json

from repro.verdict import Verdict


def test_the_worst_verdict_decides_and_none_is_clean() -> None:
    assert Verdict.worst([Verdict.INCOMPLETE, Verdict.CORRUPTED, Verdict.PROTOCOL_ERROR]) is Verdict.CORRUPTED
    assert Verdict.worst([Verdict.CLEAN, Verdict.INCOMPLETE]) is Verdict.INCOMPLETE
    assert Verdict.worst([Verdict.CORRUPTED, Verdict.TLS_ERROR, Verdict.CRASHED]) is Verdict.CRASHED
    assert Verdict.worst([]) is Verdict.CLEAN


def test_exit_codes_say_affected_or_could_not_tell() -> None:
    assert Verdict.CLEAN.exit_code == 0
    assert {v.exit_code for v in (Verdict.CORRUPTED, Verdict.PROTOCOL_ERROR, Verdict.TLS_ERROR)} == {1}
    assert {v.exit_code for v in (Verdict.INCOMPLETE, Verdict.ERROR, Verdict.HUNG)} == {2}


def test_a_verdict_prints_compares_and_serialises_as_its_value() -> None:
    assert f"{Verdict.PROTOCOL_ERROR:<16}|" == "PROTOCOL-ERROR  |"
    assert str(Verdict.CLEAN) == "CLEAN" and Verdict.CORRUPTED == "CORRUPTED"
    assert json.dumps({"verdict": Verdict.INCOMPLETE}) == '{"verdict": "INCOMPLETE"}'
    assert all(v.meaning for v in Verdict)
