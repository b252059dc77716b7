"""server/demo/app.py without sockets: the /stream query parameters (StreamParams): defaults, bounds, bad values.

Every refusal is an HttpError 400 whose message names the parameter and what was wrong with it.
"""

from __future__ import annotations

import pytest

from server import HttpError
from server.demo.app import MAX_COUNT, MAX_PRODUCERS, MAX_TOTAL_BYTES, StreamParams
from server.demo.streamformat import MAX_SIZE, MIN_SIZE

pytestmark = pytest.mark.timeout(10)


def refused(query: dict[str, str]) -> str:
    with pytest.raises(HttpError) as info:
        StreamParams.parse(query)
    assert info.value.status == 400
    return info.value.message


def test_defaults() -> None:
    params = StreamParams.parse({})
    assert params == StreamParams()
    assert (params.producers, params.count, params.size, params.max_size) == (4, 100, 1024, 0)
    assert (params.big_every, params.big_size, params.big_max_size, params.pace) == (0, 65536, 0, True)


def test_an_empty_value_means_the_default() -> None:
    assert StreamParams.parse({"producers": "", "count": "", "size": "", "pace": ""}) == StreamParams()


# (query name, attribute, lowest, highest)
BOUNDS = [
    ("producers", "producers", 1, MAX_PRODUCERS),
    ("count", "count", 1, MAX_COUNT),
    ("size", "size", MIN_SIZE, MAX_SIZE),
    ("maxsize", "max_size", 0, MAX_SIZE),
    ("bigevery", "big_every", 0, MAX_COUNT),
    ("bigsize", "big_size", MIN_SIZE, MAX_SIZE),
    ("bigmaxsize", "big_max_size", 0, MAX_SIZE),
]


@pytest.mark.parametrize("name,attr,lo,hi", BOUNDS, ids=[b[0] for b in BOUNDS])
def test_each_bound_is_accepted_and_one_past_it_refused(name: str, attr: str, lo: int, hi: int) -> None:
    for value in (lo, hi):
        assert getattr(StreamParams.parse({name: str(value)}), attr) == value
    for value in (lo - 1, hi + 1):
        assert refused({name: str(value)}) == f"/stream parameter {name}={value} out of range {lo}..{hi}"


@pytest.mark.parametrize("raw,pace", [("0", False), ("1", True)])
def test_pace(raw: str, pace: bool) -> None:
    assert StreamParams.parse({"pace": raw}).pace is pace


def test_pace_is_0_or_1() -> None:
    assert refused({"pace": "2"}) == "/stream parameter pace=2 out of range 0..1"


@pytest.mark.parametrize("raw", ["abc", "1.5", "1e3", "0x10", "  "])
def test_a_value_that_is_not_an_integer(raw: str) -> None:
    assert refused({"count": raw}) == f"/stream parameter count={raw!r} is not an integer"


def test_unknown_parameters_are_named_with_the_known_ones() -> None:
    message = refused({"bogus": "1", "count": "5", "another": "x"})
    assert message.startswith("unknown /stream parameter(s): another, bogus; known: ")
    assert message.endswith("bigevery, bigmaxsize, bigsize, count, maxsize, pace, producers, size")


def test_max_size_below_size() -> None:
    assert refused({"size": "1000", "maxsize": "999"}) == "/stream maxsize=999 is below size=1000"
    assert StreamParams.parse({"size": "1000", "maxsize": "1000"}).max_size == 1000


def test_the_total_a_stream_may_send_is_bounded() -> None:
    worst = MAX_PRODUCERS * MAX_COUNT * 1024
    assert worst > MAX_TOTAL_BYTES
    message = refused({"producers": str(MAX_PRODUCERS), "count": str(MAX_COUNT)})
    assert message == f"/stream would send up to {worst} bytes; the limit is {MAX_TOTAL_BYTES}"


def test_the_total_counts_big_messages_only_when_they_are_on() -> None:
    query = {"count": "10000", "bigsize": str(MAX_SIZE)}  # 4 x 10,000 x 16 MiB if big messages were sent
    assert StreamParams.parse(query).big_size == MAX_SIZE  # bigevery=0: never sent, not counted
    assert "would send up to" in refused({**query, "bigevery": "5"})


def test_size_of_follows_the_parameters() -> None:
    plain = StreamParams(size=100)
    assert {plain.size_of(p, s) for p in range(4) for s in range(50)} == {100}
    ranged = StreamParams(size=100, max_size=200)
    assert all(100 <= ranged.size_of(p, s) <= 200 for p in range(4) for s in range(50))
    big = StreamParams(size=100, big_every=3, big_size=5000)
    assert [big.size_of(0, s) for s in range(6)] == [100, 100, 5000, 100, 100, 5000]  # every 3rd message is big
