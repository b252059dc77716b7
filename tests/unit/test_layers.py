"""The layers of ``server/`` import one way only: down.

Bottom up: the shared vocabulary (``codes``, ``errors``, ``limits``,
``stats``, ``histogram``) → ``protocol/`` (sans I/O) and ``scaleout/`` → ``core/`` (the IO
thread and its sockets) → ``connections/`` → the server (``server.py``,
``registry``, ``admission``, ``topics``, ``observe/``) → what is built on it (``demo/``, ``client``,
``wsgi/``, ``cli``, the package's ``__init__``). A module may import from its
own layer and the layers below, never from above — type-only imports
included, so no circle hides behind ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.timeout(30)

PACKAGE = Path(ROOT) / "server"
LAYERS = {  # a module's layer: its subpackage, or its own name at the top
    "codes": 0, "errors": 0, "limits": 0, "stats": 0, "histogram": 0,
    "protocol": 1, "scaleout": 1,
    "core": 2,
    "connections": 3,
    "server": 4, "registry": 4, "admission": 4, "topics": 4, "observe": 4,
    "demo": 5, "wsgi": 5, "cli": 5, "client": 5, "__main__": 5, "__init__": 5,
}


def layer_of(module: str) -> int:
    """``module``: a dotted name under ``server`` ("server.core.loop"); the package itself is its __init__."""
    parts = module.split(".")[1:] or ["__init__"]
    return LAYERS[parts[0]]


def imports_of(path: Path, root: Path = Path(ROOT)) -> list[tuple[int, str]]:
    """Every ``server`` module ``path`` imports (line, dotted name), at any depth of the file."""
    package = list(path.relative_to(root).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "server":
                continue
            if node.module is None or target == "server":  # from . import x: x may be a module
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    where = root / sub.replace(".", "/")
                    is_module = where.with_suffix(".py").exists() or where.is_dir()
                    found.append((node.lineno, sub if is_module else target))
            else:
                found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "server"]
    return found


def upward_imports() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        mine = layer_of(here.removesuffix(".__init__") if here != "server.__init__" else "server")
        for line, target in imports_of(path):
            if layer_of(target) > mine:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} (layer {layer_of(target)} > {mine})")
    return bad


def test_every_module_has_a_layer() -> None:
    tops = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert tops <= set(LAYERS), f"give these a layer in LAYERS: {sorted(tops - set(LAYERS))}"


def test_no_module_imports_from_a_layer_above_it() -> None:
    assert upward_imports() == []


def test_the_check_sees_an_upward_import_even_for_type_checking(tmp_path: Path) -> None:
    """The rule can fail: a protocol module importing the connection layer, under TYPE_CHECKING, is found."""
    bad = tmp_path / "server" / "protocol" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..connections.handle import State\n")
    assert imports_of(bad, root=tmp_path) == [(3, "server.connections.handle")]
    assert layer_of("server.connections.handle") > layer_of("server.protocol.bad")
