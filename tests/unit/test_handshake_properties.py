"""Property tests (hypothesis) for the HTTP phase (server/protocol/handshake.py): any bytes, cut anywhere.

A valid upgrade request gives the same request however its bytes arrive; any
other bytes end in one of the documented answers (an :class:`HttpError` with a
4xx/5xx status a client can act on) — never another exception — and the same
answer however they are cut.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.protocol.handshake import Handshake, HttpError, HttpRequest, check_upgrade

from ..helpers import reads

pytestmark = pytest.mark.timeout(120)
# The same examples every run (tests/conftest.py's "repeatable" profile), so the suite never flakes on a newly
# drawn case; `--hypothesis-profile=explore` draws new ones: keep what it finds as an @example.
HTTP_STATUSES = {400, 413, 414, 431, 501, 505}  # what receive_data may answer
UPGRADE_STATUSES = {400, 405, 426}  # what check_upgrade may answer
TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.~", min_size=1, max_size=12)
MAX_REQUEST = 2048


@st.composite
def upgrade_requests(draw: st.DrawFn) -> bytes:
    path = "/" + "/".join(draw(st.lists(TOKEN, max_size=3)))
    if draw(st.booleans()):
        path += "?" + "&".join(f"{k}={v}" for k, v in draw(st.lists(st.tuples(TOKEN, TOKEN), max_size=3)))
    headers = [("Host", "127.0.0.1"), ("Upgrade", draw(st.sampled_from(["websocket", "WebSocket"]))),
               ("Connection", draw(st.sampled_from(["Upgrade", "keep-alive, Upgrade"]))),
               ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]
    headers += [(f"X-{name}", value) for name, value in draw(st.lists(st.tuples(TOKEN, TOKEN), max_size=4))]
    order = draw(st.permutations(headers))
    head = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in order) + "\r\n"
    return head.encode() + draw(st.binary(max_size=20))  # frames the client sent right behind its request


def outcome(stream: bytes, cuts: list[int]) -> tuple[str, object]:
    """Feed ``stream`` in the pieces ``cuts`` makes, then EOF: ('request', ...), ('error', status) or ('waiting', None)."""
    handshake = Handshake(max_request_bytes=MAX_REQUEST)
    fed = 0
    try:
        for read in reads(stream, cuts):
            fed += len(read)
            request = handshake.receive_data(read)
            if request is not None:  # what follows goes to the session: trailing is what came with it
                return "request", summary(request, stream[fed:])
        handshake.receive_data(b"")  # EOF: a request cut short is an error, not a wait
    except HttpError as exc:
        assert exc.status in HTTP_STATUSES, exc
        return "error", exc.status
    return "waiting", None


def summary(request: HttpRequest, unread: bytes) -> tuple[object, ...]:
    try:
        upgrade: object = check_upgrade(request)
    except HttpError as exc:
        assert exc.status in UPGRADE_STATUSES, exc
        upgrade = exc.status
    return (request.method, request.path, request.query, sorted(request.headers.items()), request.trailing + unread,
            upgrade)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(upgrade_requests(), st.lists(st.integers(0, 1 << 16), max_size=6))
def test_a_valid_request_is_the_same_request_however_it_arrives(stream: bytes, cuts: list[int]) -> None:
    kind, request = outcome(stream, cuts)
    assert (kind, request) == outcome(stream, [])
    assert kind == "request" and request[-1] == b"dGhlIHNhbXBsZSBub25jZQ==", request  # type: ignore[index]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.lists(st.integers(0, 1 << 16), max_size=4))
def test_any_bytes_get_a_documented_answer(stream: bytes, cuts: list[int]) -> None:
    assert outcome(stream, cuts)[0] in {"request", "error"}  # after EOF nothing is left waiting


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(upgrade_requests(), st.data())
def test_a_mutated_request_gets_a_documented_answer_whatever_the_cuts(stream: bytes, data: st.DataObject) -> None:
    mutated = bytearray(stream)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(mutated) - 1))
        mutated[i] = data.draw(st.integers(0, 255))
    cuts = data.draw(st.lists(st.integers(0, 1 << 16), max_size=4))
    result = outcome(bytes(mutated), cuts)
    assert result[0] in {"request", "error"}
    assert result == outcome(bytes(mutated), []), "the answer must not depend on how the bytes arrived"


@pytest.mark.parametrize("cuts", [[], [16], [30, 47]])
def test_an_over_long_method_is_501_whatever_follows_it_and_however_it_arrives(cuts: list[int]) -> None:
    """Found by the fuzzer (``make fuzz``, target handshake): 47 token characters then a NUL answered 501 when the
    first read held only the token characters (a method too long) and 400 when it held the NUL too."""
    assert outcome(b"&" * 47 + b"\x00GET /" + b"&" * 26, cuts) == ("error", 501)


@pytest.mark.parametrize("target", [b"//e[", b"http://[::1/x", b"//x]"])
def test_a_target_urlsplit_refuses_is_400_not_500(target: bytes) -> None:
    """Found by the fuzzer (``make fuzz``, target handshake): ``GET //e[`` made urlsplit raise "Invalid IPv6 URL",
    which the server answered 500 with a traceback in its log: bad input, so a 400 that says what was wrong."""
    assert outcome(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n", []) == ("error", 400)


@pytest.mark.parametrize("cuts", [[], [1000], [2100]])
def test_a_head_over_the_limit_is_431_whatever_else_is_wrong_with_it(cuts: list[int]) -> None:
    """Found by the fuzzer (``make fuzz``, target handshake): a 2,300-byte head with a malformed header line got 431
    when its first read passed the limit (h11 saw an incomplete head) and 400 when it arrived whole (h11 parsed it)."""
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Fill: " + b"a" * 2200 + b"\r\nbad header line\r\n\r\n"
    assert outcome(head, cuts) == ("error", 431)
