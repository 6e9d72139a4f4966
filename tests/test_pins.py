"""constraints.txt, the versions the test command installs, agrees with setup.cfg.

Users get ranges from setup.cfg; scripts/test installs exactly constraints.txt (pip -c),
so a dependency's new release cannot change what the test command tests. These tests
keep the two from drifting apart: every requirement the project declares is pinned, each
pin lies inside the declared range, and the environment running the tests is the pinned
one. `bash scripts/pin` refreshes the file.
"""

from __future__ import annotations

import configparser
import json
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, version = line.partition("==")
        assert version, f"constraints.txt:{number}: {line!r} is not an exact pin (name==version)"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def _declared() -> list[Requirement]:
    """Every requirement in setup.cfg, install_requires and every extra, for this platform."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in cfg["options.extras_require"].values():
        lines += extra.splitlines()
    reqs = [Requirement(line) for line in lines if line.strip()]
    return [r for r in reqs if r.marker is None or r.marker.evaluate()]


def _build_backend() -> list[Requirement]:
    """pyproject.toml's build requirements: pinned for the editable install's build only."""
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    return [Requirement(line) for line in build]


def test_every_declared_requirement_is_pinned_inside_its_range() -> None:
    pins = _pins()
    problems = []
    for req in _declared() + _build_backend():
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None:
            problems.append(f"{req} is not pinned")
        elif not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"{req} but constraints.txt pins {pinned}")
    assert problems == [], "run bash scripts/pin: " + "; ".join(problems)


def test_the_requirements_extras_are_pinned_too() -> None:
    """``redis[hiredis]`` installs hiredis, which must then be pinned as well."""
    pins = _pins()
    for req in _declared():
        for extra in req.extras:
            needed = metadata.requires(req.name) or []
            for line in needed:
                dep = Requirement(line)
                marker = dep.marker
                if marker is not None and marker.evaluate({"extra": extra}) and not marker.evaluate({"extra": ""}):
                    assert canonicalize_name(dep.name) in pins, f"{req} installs {dep.name}, which is not pinned"


def test_the_running_environment_is_the_pinned_one() -> None:
    """scripts/test installed every pin exactly: nothing newer slipped in."""
    wrong = {}
    build_only = {canonicalize_name(req.name) for req in _build_backend()}
    for name, version in _pins().items():
        if name in build_only:
            continue
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            continue  # pinned for another platform or a build environment only
        if installed != version:
            wrong[name] = f"{installed} installed, {version} pinned"
    assert wrong == {}


def test_the_node_client_is_pinned_exactly() -> None:
    package = json.loads((ROOT / "tests" / "node" / "package.json").read_text())
    loose = {name: spec for name, spec in package["dependencies"].items() if not spec[:1].isdigit()}
    assert loose == {}, "tests/node/package.json: give exact versions"
