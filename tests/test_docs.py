"""Every fenced Python sample in README.md and docs/*.md runs, and its asserts hold.

The blocks of one file are executed in order as one module, so a later block can use
a class an earlier one defined. After each block, the ``test_*`` and ``main`` functions
it defined are called (awaited when async), with the ``wsgate_gateway`` and
``tmp_path`` fixtures when they ask for them. A block preceded by the line
``<!-- no-test -->`` (or ``<!-- no-test: why -->``) is skipped; blocks in other languages are never run.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import wsgate

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
HANDLERS_MD = ROOT / "docs" / "handlers.md"
PYTHON_LANGS = {"python", "py", "python3"}
NO_TEST = "<!-- no-test -->"
SAMPLE_TIMEOUT = 15.0
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\s]*)[^`]*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block: its language, first code line (1-based) and code."""

    lang: str
    line: int
    code: str
    skipped: bool


def code_blocks(text: str) -> Iterator[Block]:
    """The fenced blocks of a Markdown text, in order (CommonMark backtick and tilde fences)."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, indent = m["fence"], len(m["indent"])
        previous = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
        start = i + 1
        end = start
        while end < len(lines) and not re.match(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", lines[end]):
            end += 1
        # Inside a list item the fence is indented; so is its content, by as much.
        body = "\n".join(_unindent(line, indent) for line in lines[start:end])
        yield Block(m["info"].lower(), start + 1, body, previous.startswith(NO_TEST.removesuffix(" -->")))
        i = end + 1


def _unindent(line: str, indent: int) -> str:
    stripped = len(line) - len(line.lstrip(" \t"))
    return line[min(indent, stripped):]


def python_blocks(path: Path) -> list[Block]:
    return [b for b in code_blocks(path.read_text(encoding="utf-8")) if b.lang in PYTHON_LANGS]


def _compile(block: Block, path: Path) -> types.CodeType:
    """Compile a block so that tracebacks show the Markdown file's own line numbers and
    failed asserts explain themselves, as in test files."""
    source = "\n" * (block.line - 1) + block.code
    tree = ast.parse(source, str(path))
    try:
        from _pytest.assertion.rewrite import rewrite_asserts
    except ImportError:  # pragma: no cover - plain asserts still work, with less detail
        pass
    else:
        rewrite_asserts(tree, source.encode(), str(path))
    return compile(tree, str(path), "exec")


def _fixtures_for(func: Callable[..., Any], available: dict[str, Any]) -> dict[str, Any]:
    kwargs = {}
    for name in inspect.signature(func).parameters:
        if name not in available:
            raise AssertionError(
                f"the sample function {func.__name__}() asks for {name!r}; tests/test_docs.py "
                f"provides only {', '.join(sorted(available))}"
            )
        kwargs[name] = available[name]
    return kwargs


async def run_samples(path: Path, fixtures: dict[str, Any]) -> list[str]:
    """Execute the Python blocks of ``path``; return the names of the sample tests run."""
    name = "wsgate_doc_" + re.sub(r"\W", "_", path.stem)
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module  # pydantic and dataclasses look their module up here
    ran: list[str] = []
    try:
        for block in python_blocks(path):
            if block.skipped:
                continue
            before = dict(vars(module))
            exec(_compile(block, path), vars(module))
            for attr, value in list(vars(module).items()):
                if before.get(attr) is value or not _is_sample_test(attr, value, name):
                    continue
                kwargs = _fixtures_for(value, fixtures)
                where = f"{path.name}:{value.__code__.co_firstlineno} {attr}()"
                try:
                    async with asyncio.timeout(SAMPLE_TIMEOUT):
                        result = value(**kwargs)
                        if inspect.isawaitable(result):
                            await result
                except TimeoutError:
                    raise AssertionError(f"{where} did not finish within {SAMPLE_TIMEOUT}s") from None
                ran.append(attr)
    finally:
        sys.modules.pop(name, None)
    return ran


def _is_sample_test(attr: str, value: object, module: str) -> bool:
    return (
        (attr.startswith("test_") or attr == "main")
        and inspect.isfunction(value)
        and value.__module__ == module
    )


# The samples of docs/handlers.md that must exist and run: the guide shows behaviour, it
# does not only define classes.
HANDLERS_MD_TESTS = {
    "test_shout", "test_lifecycle", "test_greeter", "test_greeter_options_are_checked",
    "test_sizes_refuses_text", "test_tiny_defaults", "test_whoami", "test_room", "test_board",
    "test_clock", "test_fragile", "test_firehose", "test_any_client", "test_shout_with_the_fixture",
}


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
async def test_python_samples_run(path: Path, wsgate_gateway: Any, tmp_path: Path) -> None:
    ran = await run_samples(path, {"wsgate_gateway": wsgate_gateway, "tmp_path": tmp_path})
    if path == HANDLERS_MD:
        missing = sorted(HANDLERS_MD_TESTS - set(ran))
        assert not missing, f"samples of docs/handlers.md that did not run: {missing}"


def test_readme_has_a_python_sample() -> None:
    blocks = [b for b in python_blocks(ROOT / "README.md") if not b.skipped]
    assert blocks, "README.md has no ```python block for tests/test_docs.py to run"


def test_handlers_md_covers_the_whole_api() -> None:
    """Every hook, class attribute, Connection and Context member is named in the guide."""
    text = HANDLERS_MD.read_text(encoding="utf-8")
    names = {
        "startup", "shutdown", "on_connect", "on_message", "on_disconnect", "Options", "accepts",
        "policy_defaults", "ConnectionClosed", "run_gateway", "wsgate_gateway", "wsgate.handlers",
    }
    names |= {n for n in vars(wsgate.Context) if not n.startswith("_")}
    names |= {n for n in wsgate.Connection.__slots__ if not n.startswith("_")}
    names |= {n for n in vars(wsgate.Connection) if not n.startswith("_")}
    missing = sorted(n for n in names if f"`{n}" not in text and f"{n}(" not in text)
    assert not missing, f"docs/handlers.md does not mention: {missing}"
    for code in (1001, 1002, 1003, 1007, 1008, 1009, 1011, 1012):
        assert f"| {code} |" in text, f"the close code table lacks {code}"


# --- the extractor itself ------------------------------------------------------------

SAMPLE_MD = """\
Intro.

```python
x = 1
```

<!-- no-test -->
```python
raise SystemExit("skipped")
```

```yaml
endpoints: []
```

- a list item with a block:

  ~~~py
  def f():
      return 2
  ~~~

````python
s = '''```'''
````

```
plain = True
```
"""


def test_code_blocks_finds_python_blocks_with_their_lines() -> None:
    blocks = list(code_blocks(SAMPLE_MD))
    assert [(b.lang, b.line, b.skipped) for b in blocks] == [
        ("python", 4, False), ("python", 9, True), ("yaml", 13, False), ("py", 19, False),
        ("python", 24, False), ("", 28, False),
    ]
    assert blocks[3].code == "def f():\n    return 2"
    assert blocks[4].code == "s = '''```'''"


async def test_run_samples_runs_tests_in_order_and_reports_failures(tmp_path: Path) -> None:
    fake = tmp_path / "fake.md"
    fake.write_text(
        "```python\nseen = []\n\nasync def test_first():\n    seen.append(1)\n```\n\n"
        "```python\ndef test_second():\n    assert seen == [1]\n    seen.append(2)\n\n"
        "def helper():\n    raise AssertionError('helpers are not run')\n```\n\n"
        "<!-- no-test -->\n```python\ndef test_skipped():\n    raise AssertionError('skipped')\n```\n"
        "```python\ndef test_fails():\n    assert seen == [1, 2], 'the sample assert'\n    seen.append(3)\n"
        "    assert seen == [1, 2], 'the sample assert'\n```\n"
    )
    with pytest.raises(AssertionError, match="the sample assert") as info:
        await run_samples(fake, {})
    # The traceback points at the failing line of the Markdown file itself.
    failing = fake.read_text().splitlines().index("    assert seen == [1, 2], 'the sample assert'", 25) + 1
    assert (fake, failing) in {(Path(e.path), e.lineno + 1) for e in info.traceback}


async def test_run_samples_refuses_unknown_fixtures(tmp_path: Path) -> None:
    fake = tmp_path / "fixtures.md"
    fake.write_text("```python\nasync def test_needs(capsys):\n    pass\n```\n")
    with pytest.raises(AssertionError, match="asks for 'capsys'"):
        await run_samples(fake, {"tmp_path": tmp_path})
