"""The installed wheel serves the page however it was installed, and ships its built-ins
inside ``wsgate`` (no top-level ``handlers`` package to collide with a user's folder).

Two installs of a freshly built wheel, each started from an empty directory far from
this checkout: ``pip install --user`` under a private ``PYTHONUSERBASE`` with the system
interpreter, and a plain virtualenv. The dependencies come from this test run's own
environment (added by path, so its editable wsgate is not among them), which keeps the
test off the network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parent.parent
SITE_PACKAGES = sysconfig.get_paths()["purelib"]
CONFIG = """\
server: {host: 127.0.0.1, port: 0}
endpoints:
  - {path: /ws, handler: echo}
  - {path: /chat, handler: chat}
"""

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
                   check=True, timeout=240)
    (built,) = out.glob("wsgate-*.whl")
    return built


def test_the_wheel_holds_the_page_and_no_generic_top_level_name(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("wsgate-")}
    assert tops == {"wsgate"}
    for required in ("wsgate/web/templates/index.html", "wsgate/web/static/app.js", "wsgate/web/static/style.css",
                     "wsgate/builtins/echo.py", "wsgate/builtins/chat.py", "wsgate/py.typed",
                     "wsgate/project/config.yaml", "wsgate/project/handlers/example.py",
                     "wsgate/project/tests/test_example.py", "wsgate/auth/jwt.py"):
        assert required in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "[pytest11]\nwsgate = wsgate.pytest_plugin" in zipfile.ZipFile(wheel).read(entry_points).decode()


def _base_python() -> str:
    """The interpreter this environment was made from (a venv's pip refuses --user)."""
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return str(base if base.exists() else Path(sys.base_prefix) / "bin" / "python3")


def _install_user(wheel: Path, tmp: Path) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONNOUSERSITE"} | {"PYTHONUSERBASE": str(tmp / "userbase")}
    subprocess.run([_base_python(), "-m", "pip", "install", "-q", "--user", "--no-deps", "--no-warn-script-location",
                    str(wheel)], check=True, env=env, timeout=120)
    # Dependencies by path, after the user site: the editable wsgate there is not on it.
    return [_base_python()], {**env, "PYTHONPATH": SITE_PACKAGES}


def _install_venv(wheel: Path, tmp: Path) -> tuple[list[str], dict[str, str]]:
    venv = tmp / "venv"
    subprocess.run([_base_python(), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True, timeout=120)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "deps.pth").write_text(SITE_PACKAGES + "\n")
    return [str(python)], dict(os.environ)


@pytest.mark.parametrize("install", [_install_user, _install_venv], ids=["pip-install-user", "venv"])
def test_an_installed_wheel_serves_the_page_and_the_builtins(
    install: Callable[[Path, Path], tuple[list[str], dict[str, str]]], wheel: Path, tmp_path: Path,
) -> None:
    python, env = install(wheel, tmp_path)
    probe = "import wsgate, wsgate.builtins.chat as c; print(wsgate.__file__, c.__file__)"
    where = subprocess.run([*python, "-c", probe], check=True, capture_output=True, text=True, env=env,
                           cwd=tmp_path).stdout
    assert str(ROOT) not in where, f"imported the checkout, not the install: {where}"
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.yaml").write_text(CONFIG)
    proc = subprocess.Popen([*python, "-m", "wsgate"], cwd=project, env={**env, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "wsgate listening on " in line, line
        url = line.split()[3].rstrip("/")
        status, page = _get(url + "/")
        assert status == 200
        assert 'value="/chat"' in page
        for name, size in (("app.js", 1000), ("style.css", 1000)):
            status, body = _get(f"{url}/static/{name}")
            assert status == 200
            assert len(body) > size
        assert _get(url + "/static/../config.yaml")[0] == 404
        with connect(url.replace("http", "ws") + "/ws", open_timeout=10) as ws:
            ws.send("installed")
            assert ws.recv(timeout=10) == "installed"
        with connect(url.replace("http", "ws") + "/chat?name=ivy", open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["name"] == "ivy"
    finally:
        proc.terminate()
        proc.wait(10)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
