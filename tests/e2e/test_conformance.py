"""The conformance driver (tests/conformance.py): case selection, verdicts, allow-list, exit status."""

from __future__ import annotations

import pytest

from .. import conformance
from ..conformance import CaseResult, SetupError, parse_cases, summarize

pytestmark = pytest.mark.timeout(120)


def case(case_id: str, behavior: str = "OK", close: str = "OK", ms: int = 5) -> CaseResult:
    return CaseResult(case_id, behavior, close, ms, 1000)


def test_case_selection() -> None:
    assert parse_cases("1-3,12.1.*,9.7.1") == ["1.*", "2.*", "3.*", "12.1.*", "9.7.1"]
    assert parse_cases("7") == ["7.*"]
    for bad in ["", "3-1", "x", "1.1.1;rm"]:
        with pytest.raises(SetupError):
            parse_cases(bad)


@pytest.mark.parametrize(
    "behavior,close,verdict",
    [
        ("OK", "OK", "OK"),
        ("OK", "INFORMATIONAL", "OK"),
        ("INFORMATIONAL", "OK", "INFORMATIONAL"),
        ("NON-STRICT", "OK", "NON-STRICT"),
        ("OK", "UNCLEAN", "UNCLEAN"),
        ("UNIMPLEMENTED", "OK", "UNIMPLEMENTED"),
        ("FAILED", "OK", "FAILED"),
        ("ERROR", "OK", "FAILED"),
        ("OK", "WRONG CODE", "FAILED"),
        ("NON-STRICT", "FAILED BY CLIENT", "FAILED"),
    ],
)
def test_verdict_is_the_worse_of_message_and_close(behavior: str, close: str, verdict: str) -> None:
    assert case("1.1.1", behavior, close).verdict == verdict


def test_allow_list_decides_which_non_strict_cases_fail_the_run() -> None:
    allow = {"3.2": "known", "4.1.3": "known"}
    results = [case("1.1.1"), case("3.2", "NON-STRICT"), case("3.3", "NON-STRICT"), case("4.1.3"),
               case("7.1.6", "INFORMATIONAL"), case("12.1.1", ms=9000)]
    lines, problems = summarize(results, allow)
    text = "\n".join(lines)
    assert problems == ["3.3: NON-STRICT and not on the allow-list (behavior NON-STRICT, close OK)"]
    assert "3.2      NON-STRICT     allowed: known" in text
    assert "4.1.3    OK             allow-list entry no longer needed (known)" in text
    assert "slowest cases: 12.1.1 9.0s" in text
    total = next(line for line in lines if line.startswith("total")).split()
    assert total[1:8] == ["6", "3", "2", "0", "1", "0", "0"]  # cases, OK, NON-STRICT, UNCLEAN, INFO, UNIMPL, FAILED


def test_a_failed_case_fails_the_run_even_if_allow_listed() -> None:
    _, problems = summarize([case("3.2", "FAILED")], {"3.2": "known"})
    assert problems and "FAILED" in problems[0]


def test_allow_list_entries_are_real_case_ids_with_reasons() -> None:
    for case_id, reason in conformance.ALLOW_LIST.items():
        assert parse_cases(case_id) == [case_id] and "." in case_id
        assert reason.strip()


@pytest.mark.skipif(conformance.kosoku_path() is None, reason="kosoku is not installed (make install puts it in .venv)")
def test_end_to_end_on_a_few_groups(tmp_path, capsys) -> None:
    """The driver starts the server, runs kosoku and reads its report (groups 1 and 2: about a second)."""
    assert conformance.main(["--cases", "1,2", "--outdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 Framing" in out and "2 Pings/Pongs" in out and "no FAILED case" in out
    assert (tmp_path / "index.html").exists()
