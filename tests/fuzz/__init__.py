"""Fuzz targets (atheris, as websockets runs in OSS-Fuzz): ``make fuzz``.

Each target in :mod:`tests.fuzz.targets` takes any bytes and checks what the
property tests check — the documented answers only, and the same answer
however the bytes are cut (or, for the session, with and without its fast
path) — raising ``AssertionError`` otherwise. :mod:`tests.fuzz.run` drives one
target under libFuzzer with coverage feedback; every stored crash in
``tests/fuzz/regressions/`` is replayed by ``make test``.
"""
