"""First-hour stumbles on the command line: each answer is one line that says what to fix.

Every test runs ``python -m wsgate`` as a real subprocess, on loopback only.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import wsgate

ECHO = "endpoints:\n  - {path: /ws, handler: echo}\n"


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m wsgate ARGS`` in ``cwd``; raises if it is still running after 30 s."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("WSGATE_")}
    return subprocess.run([sys.executable, "-m", "wsgate", *args], cwd=cwd, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port that something else already listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


# --- 1. cannot listen -----------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_port_in_use_is_one_line_and_exit_2(write_config: Callable[..., Path], busy_port: int, loop: str) -> None:
    config = write_config(ECHO)
    result = run(["--config", str(config), "--port", str(busy_port), "--loop", loop], config.parent)
    assert result.returncode == 2, result
    assert result.stderr == (
        f"cannot listen on 127.0.0.1:{busy_port}: address already in use — is another wsgate running? use --port\n"
    )
    assert "listening" not in result.stdout


@pytest.mark.skipif(os.geteuid() == 0, reason="root may bind any port")
def test_low_port_without_privileges(write_config: Callable[..., Path]) -> None:
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        if int(f.read()) <= 80:
            pytest.skip("this machine lets anyone bind port 80")
    config = write_config(ECHO)
    result = run(["--config", str(config), "--port", "80"], config.parent)
    assert result.returncode == 2, result
    assert result.stderr == (
        "cannot listen on 127.0.0.1:80: permission denied — ports below 1024 need privileges; use --port\n"
    )


def test_listen_error_messages() -> None:
    from wsgate.cli import listen_error_message

    denied = OSError(errno.EACCES, "error while attempting to bind on address ('0.0.0.0', 80): permission denied")
    assert listen_error_message("0.0.0.0", 80, denied) == (
        "cannot listen on 0.0.0.0:80: permission denied — ports below 1024 need privileges; use --port"
    )
    in_use = OSError(errno.EADDRINUSE, "address already in use")
    assert listen_error_message("::1", 8080, in_use) == (
        "cannot listen on [::1]:8080: address already in use — is another wsgate running? use --port"
    )
    assert listen_error_message("10.9.9.9", 8080, OSError(errno.EADDRNOTAVAIL, "x")).startswith(
        "cannot listen on 10.9.9.9:8080: no such address on this machine"
    )


# --- 2. a Redis broker without the redis package ---------------------------------------------


@pytest.fixture
def no_redis(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import redis`` fails, as without ``pip install 'wsgate[redis]'``."""
    shim = tmp_path / "shim" / "redis"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('redis is not installed (test shim)')\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(shim.parent), os.environ.get("PYTHONPATH")]))}


@pytest.mark.parametrize("command", ["check", "serve"])
def test_redis_broker_without_the_redis_package(write_config: Callable[..., Path], no_redis: dict[str, str],
                                                command: str) -> None:
    config = write_config("server: {port: 0}\n" + ECHO + "broker: redis://127.0.0.1:6379/0\n")
    result = run([command, "--config", str(config)], config.parent, env=no_redis)
    assert result.returncode == 2, result
    assert result.stderr == (
        f"{config}:4:1: broker redis://127.0.0.1:6379/0: the redis package is not installed: "
        "pip install 'wsgate[redis]'\n"
    )
    assert "listening" not in result.stdout


def test_redis_password_is_not_printed(write_config: Callable[..., Path], no_redis: dict[str, str]) -> None:
    config = write_config("broker: 'redis://:s3cret@127.0.0.1:6379/0'\n" + ECHO)
    result = run(["check", "--config", str(config)], config.parent, env=no_redis)
    assert result.returncode == 2, result
    assert "s3cret" not in result.stderr
    assert "broker redis://:***@127.0.0.1:6379/0: the redis package is not installed" in result.stderr


# --- 3. config mistakes --------------------------------------------------------------------------


def test_missing_config_file_names_the_absolute_path(tmp_path: Path) -> None:
    result = run(["check"], tmp_path)
    assert result.returncode == 2, result
    assert str(tmp_path / "config.yaml") in result.stderr
    assert "--config PATH" in result.stderr
    assert "init" not in result.stderr  # there is no `wsgate init` to suggest
    assert len(result.stderr.splitlines()) == 1


def test_unknown_key_did_you_mean(write_config: Callable[..., Path]) -> None:
    config = write_config("policy:\n  heartbeat: {interval: 5s, timout: 2s}\n" + ECHO)
    result = run(["check", "--config", str(config)], config.parent)
    assert result.returncode == 2, result
    assert result.stderr == (
        f"{config}:2:29: policy.heartbeat.timout: unknown key; did you mean 'timeout'? "
        "allowed keys: interval, timeout\n"
    )


def test_handler_written_with_a_dot_did_you_mean(write_config: Callable[..., Path]) -> None:
    config = write_config("endpoints:\n  - {path: /shout, handler: handlers.shout.Shout}\n")
    handlers = config.parent / "handlers"
    handlers.mkdir()
    (handlers / "shout.py").write_text("from wsgate import Handler\n\n\nclass Shout(Handler):\n    pass\n")
    result = run(["check", "--config", str(config)], config.parent)
    assert result.returncode == 2, result
    assert f"{config}:2:20: endpoints[0].handler: unknown handler 'handlers.shout.Shout'; " \
           "did you mean 'handlers.shout:Shout'?" in result.stderr


def test_misspelt_handler_name_did_you_mean(write_config: Callable[..., Path]) -> None:
    config = write_config("endpoints:\n  - {path: /ws, handler: ehco}\n")
    result = run(["check", "--config", str(config)], config.parent)
    assert result.returncode == 2, result
    assert "endpoints[0].handler: unknown handler 'ehco'; did you mean 'echo'? known handlers: " in result.stderr


def test_duplicate_path_is_reported_with_the_other_mistakes(write_config: Callable[..., Path]) -> None:
    config = write_config(
        "server: {port: -1}\n"
        "endpoints:\n"
        "  - {path: /ws, handler: echo}\n"
        "  - {path: /ws, handler: echo}\n"
    )
    result = run(["check", "--config", str(config)], config.parent)
    assert result.returncode == 2, result
    assert result.stderr.splitlines() == [
        f"{config}:1:10: server.port: Input should be greater than or equal to 0",
        f"{config}:4:6: endpoints[1].path: duplicate path '/ws', already used by endpoints[0]",
    ]


# --- 4. check binds nothing ----------------------------------------------------------------------


def test_check_says_it_bound_nothing(write_config: Callable[..., Path]) -> None:
    config = write_config(ECHO + "  - {path: /chat, handler: chat}\n")
    result = run(["check", "--config", str(config)], config.parent)
    assert result.returncode == 0, result
    assert result.stdout.splitlines()[0] == f"{config} is valid: 2 endpoint(s); nothing was bound"


# --- 5. --version ----------------------------------------------------------------------------------


def test_version(tmp_path: Path) -> None:
    result = run(["--version"], tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"wsgate {wsgate.__version__}\n", "")
    assert wsgate.__version__ == "0.1.0"
