"""``wsrace`` and ``server`` give the same classes; ``wsrace`` still works where a project's server.py shadows ``server``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

PROGRAM = """
try:
    from server import Server
    print("server: ours")
except ImportError as exc:
    print("server: shadowed:", exc)
from wsrace import DemoApp, Limits, Server
srv = Server(DemoApp, port=0, limits=Limits(ping_interval=None)).start()
print("wsrace:", srv.url)
assert srv.shutdown()
import wsrace.flask, wsrace.wsgi
print("flask:", wsrace.flask.Sock.__module__, wsrace.wsgi.ConnectionClosed is wsrace.flask.ConnectionClosed)
"""


def test_wsrace_works_where_a_users_server_py_shadows_server(tmp_path: Path) -> None:
    (tmp_path / "server.py").write_text("MINE = True\n")
    (tmp_path / "app.py").write_text(PROGRAM)
    out = subprocess.run([sys.executable, "app.py"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "server: shadowed: cannot import name 'Server'" in out.stdout
    assert "wsrace: ws://127.0.0.1:" in out.stdout
    assert "flask: wsrace.server.wsgi.flask True" in out.stdout  # the Flask layer follows wsrace's copy


def test_both_names_give_the_same_classes() -> None:
    """One package under two names: what one raises, the other's ``except`` catches."""
    import server
    import server.wsgi
    import wsrace
    import wsrace.wsgi
    from server import ConnectionClosed, Server

    assert wsrace.server is server
    assert wsrace.Server is Server and wsrace.ConnectionClosed is ConnectionClosed
    assert wsrace.wsgi.accept is server.wsgi.accept
    assert "wsrace.server" not in sys.modules  # no second copy was loaded
    with pytest.raises(ConnectionClosed):
        raise wsrace.ConnectionClosed(1000)



def test_importing_the_api_does_not_import_the_demo_app() -> None:
    program = "import sys, server, wsrace; print(sorted(m for m in sys.modules if m.endswith('.app')))"
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]
