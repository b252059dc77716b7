"""The server API under a name no project shadows: ``from wsrace import Server``.

wsrace's server package is importable as ``server`` — a name many projects
also give their own module. ``wsrace`` gives the same classes either way:

* where ``import server`` finds wsrace's package (the usual case), ``wsrace``
  *is* that package under a second name: ``wsrace.Server is server.Server``,
  and ``except server.ConnectionClosed`` catches what ``wsrace`` raises;
* where a ``server.py`` of yours comes first on ``sys.path`` (``from server
  import Server`` then fails with "cannot import name 'Server' from 'server'
  (/your/server.py)"), ``wsrace`` loads the package from its own location as
  ``wsrace.server``; your ``server`` stays yours.

``wsrace.wsgi`` and ``wsrace.flask`` follow whichever of the two it is.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what a type checker sees: the package's own names
    from server import *  # noqa: F403

_PACKAGE = Path(__file__).resolve().parent.parent / "server"


def _load() -> ModuleType:
    if _is_ours(sys.modules.get("server")) or ("server" not in sys.modules and _finds_ours("server")):
        return importlib.import_module("server")
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


def _is_ours(module: ModuleType | None) -> bool:
    return module is not None and Path(getattr(module, "__file__", "") or "").resolve() == _PACKAGE / "__init__.py"


def _finds_ours(name: str) -> bool:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None and Path(spec.origin).resolve() == _PACKAGE / "__init__.py"


def submodule(name: str) -> ModuleType:
    """``name`` (e.g. ``"wsgi.flask"``) of the server package ``wsrace`` uses — never a third copy."""
    return importlib.import_module(f"{server.__name__}.{name}")


server = _load()
_exported: list[str] = list(server.__all__)
globals().update({name: getattr(server, name) for name in _exported if name != "DemoApp"})  # DemoApp: on first use
__all__ = ["server", "submodule", *_exported]


def __getattr__(name: str) -> object:
    if name in _exported:
        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
