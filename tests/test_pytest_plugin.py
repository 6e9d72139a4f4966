"""wsgate's pytest plugin is loaded by every project in the environment: outside a wsgate
project, pytest runs exactly as it does without it.

Each foreign project below is a folder with its own pytest.ini, run by pytest in a
subprocess twice: as installed, and with ``-p no:wsgate``. Apart from the list of
plugins in the header and the run time, the outputs must be the same.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

TIMEOUT = 60

# Its config.yaml and handlers/ are not wsgate's: such names are common.
NOT_WSGATE = {
    "config.yaml": "database:\n  url: sqlite:///app.db\nendpoints_file: routes.yaml\n",
    "handlers/__init__.py": "",
    "handlers/jobs.py": "def run() -> None:\n    pass\n",
}

MARKS_PROBE = """
def pytest_collection_modifyitems(items):
    for item in items:
        print("MARKS", item.nodeid, sorted({m.name for m in item.iter_markers()}))


def pytest_report_header(config):
    return "LOOP SCOPE " + repr(config.getini("asyncio_default_fixture_loop_scope"))
"""

STRICT = {
    **NOT_WSGATE,
    "pytest.ini": "[pytest]\nasyncio_mode = strict\n",
    "conftest.py": MARKS_PROBE,
    "test_strict.py": """\
import asyncio

import pytest
import pytest_asyncio


@pytest_asyncio.fixture
async def ready():
    await asyncio.sleep(0)
    return True


@pytest.mark.asyncio
async def test_marked(ready):
    assert ready


async def test_unmarked():
    pass


def test_sync():
    pass
""",
}

ANYIO = {
    **NOT_WSGATE,
    "pytest.ini": "[pytest]\nmarkers =\n    slow: tests that take long\n",
    "conftest.py": MARKS_PROBE,
    "test_anyio.py": """\
import anyio
import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def test_sleeps():
    await anyio.sleep(0)


class TestGroup:
    async def test_in_a_class(self):
        await anyio.sleep(0)
""",
    "test_plain.py": "async def test_forgot_the_mark():\n    pass\n",
}


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def _pytest(root: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-s", "-p", "no:cacheprovider", *args],
        cwd=root, capture_output=True, text=True, timeout=TIMEOUT,
    )
    output = f"exit status {proc.returncode}\n{proc.stdout}{proc.stderr}"
    output = re.sub(r"^plugins: .*\n", "", output, flags=re.MULTILINE)
    return re.sub(r" in [0-9.]+s\b", " in Ns", output)


def _outcomes(output: str) -> list[str]:
    return [line.split(" - ")[0] for line in output.splitlines() if line.startswith(("PASSED", "FAILED"))]


def _with_and_without(root: Path) -> tuple[str, str]:
    return _pytest(root), _pytest(root, "-p", "no:wsgate")


@pytest.mark.parametrize(("files", "expected"), [
    (STRICT, ["PASSED test_strict.py::test_marked", "PASSED test_strict.py::test_sync",
              "FAILED test_strict.py::test_unmarked"]),
    (ANYIO, ["PASSED test_anyio.py::test_sleeps", "PASSED test_anyio.py::TestGroup::test_in_a_class",
             "FAILED test_plain.py::test_forgot_the_mark"]),
], ids=["pytest-asyncio-strict", "anyio"])
async def test_a_foreign_project_runs_as_without_wsgate(tmp_path: Path, files: dict[str, str],
                                                        expected: list[str]) -> None:
    _write(tmp_path, files)
    installed, without = await asyncio.to_thread(_with_and_without, tmp_path)
    assert installed == without
    assert _outcomes(without) == expected, without
    assert "LOOP SCOPE None" in without  # no setting appears that the project did not make


async def test_a_foreign_project_with_wsgate_fixtures_only_gets_them_marked(tmp_path: Path) -> None:
    """Outside a wsgate project, an unmarked test that asks for ``wsgate_gateway`` is
    marked for asyncio; its unmarked neighbour is left to the project's own setup."""
    _write(tmp_path, {
        **NOT_WSGATE,
        "pytest.ini": "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n",
        "conftest.py": MARKS_PROBE,
        "test_gw.py": """\
import pytest


async def test_echo(wsgate_gateway):
    gw = await wsgate_gateway({"/echo": "echo"})
    async with gw.connect("/echo") as ws:
        await ws.send_str("hi")
        assert await ws.receive_str() == "hi"


@pytest.mark.usefixtures("wsgate_gateway")
async def test_uses_it():
    pass


async def test_unmarked():
    pass
""",
    })
    output = await asyncio.to_thread(_pytest, tmp_path)
    assert "MARKS test_gw.py::test_echo ['asyncio']" in output, output
    assert "MARKS test_gw.py::test_uses_it ['asyncio', 'usefixtures']" in output, output
    assert "MARKS test_gw.py::test_unmarked []" in output, output
    assert _outcomes(output) == [
        "PASSED test_gw.py::test_echo", "PASSED test_gw.py::test_uses_it", "FAILED test_gw.py::test_unmarked",
    ], output


@pytest.mark.parametrize("marker", ["config.yaml", "handlers"])
async def test_a_wsgate_project_needs_no_configuration(tmp_path: Path, marker: str) -> None:
    """A folder with wsgate's config.yaml, or a handlers/ folder of wsgate handlers: unmarked
    async tests run, and handlers/ is importable from tests/, under plain ``pytest``."""
    if marker == "config.yaml":
        _write(tmp_path, {"config.yaml": "endpoints:\n  - {path: /echo, handler: echo}\n"})
    _write(tmp_path, {
        "handlers/shout.py": "from wsgate import Handler\n\n\nclass Shout(Handler):\n    pass\n",
        "tests/test_project.py": """\
import asyncio

from handlers.shout import Shout


async def test_runs_in_a_loop():
    await asyncio.sleep(0)
    assert Shout.accepts == "any"
""",
    })
    if marker == "config.yaml":  # the handlers folder alone would make it a wsgate project
        (tmp_path / "handlers" / "shout.py").write_text("class Shout:\n    accepts = 'any'\n")
    for args in ([], ["tests"]):
        output = await asyncio.to_thread(_pytest, tmp_path, "-W", "error", *args)
        assert output.startswith("exit status 0"), output
        assert re.search(r"^PASSED (tests/)?test_project.py::test_runs_in_a_loop$", output, re.MULTILINE), output
