"""One target under libFuzzer: ``python -m tests.fuzz.run TARGET CORPUS_DIR [libFuzzer flags]``.

The server's and the checker's modules are imported under atheris'
instrumentation, so libFuzzer steers by the branches they take. Run by
``python -m tests.fuzz`` (``make fuzz``), which seeds the corpus and reports.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["server", "repro", "wsproto", "tests.fuzz"]):
    from tests.fuzz.targets import TARGETS


def main() -> None:
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
