"""The server API under a name no project shadows: ``from wsrace import Server``.

wsrace's server package is importable as ``server`` — a name many projects
also give their own module. When a ``server.py`` of yours comes first on
``sys.path``, ``from server import Server`` fails with "cannot import name
'Server' from 'server' (/your/server.py)". ``wsrace`` loads the same package
from its own location (as ``wsrace.server``), whatever ``sys.path`` holds.
Use one of the two names in a program, not both: each loads its own copy.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent / "server"


def _load() -> object:
    name = f"{__name__}.server"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _PACKAGE / "__init__.py", submodule_search_locations=[str(_PACKAGE)])
    if spec is None or spec.loader is None:
        raise ImportError(f"wsrace's server package is missing from {_PACKAGE}; reinstall wsrace")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


server = _load()
_exported: list[str] = list(server.__all__)  # type: ignore[attr-defined]
globals().update({name: getattr(server, name) for name in _exported})
__all__ = ["server", *_exported]
