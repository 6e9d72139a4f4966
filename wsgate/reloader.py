"""``wsgate serve --reload``: restart the server when a file of the project changes.

For development. SIGHUP re-reads config.yaml, but Python imports a module once, so an
edited handler file keeps running its old code until the process restarts; this
restarts it. Open connections are closed with 1012 "service restart", which clients
take as "reconnect". A server that fails to start (a config being edited) is
restarted by the next change.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

__all__ = ["WATCHED_SUFFIXES", "run_with_reload"]

log = logging.getLogger("wsgate")

WATCHED_SUFFIXES = (".py", ".yaml", ".yml")
STOP_GRACE = 30.0  # seconds a child may drain before it is killed


def run_with_reload(command: Sequence[str], directory: Path) -> int:
    """Run ``command`` until SIGTERM/SIGINT; start it again after each change in ``directory``."""
    try:
        import watchfiles
    except ImportError:
        print("--reload needs the watchfiles package: pip install 'wsgate[reload]'")
        return 2

    class ProjectFiles(watchfiles.DefaultFilter):
        def __call__(self, change: watchfiles.Change, path: str) -> bool:
            return path.endswith(WATCHED_SUFFIXES) and super().__call__(change, path)

    stop = threading.Event()
    # Its own session: a terminal's Ctrl-C reaches only this process, which passes it on
    # once (a second SIGINT would make the server exit without draining).
    child = subprocess.Popen(command, start_new_session=True)

    def forward(signum: int, _frame: object) -> None:
        stop.set()
        if child.poll() is None:
            child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    print(f"wsgate reloader: watching {directory} for changes to {', '.join(WATCHED_SUFFIXES)} files", flush=True)
    for changes in watchfiles.watch(directory, watch_filter=ProjectFiles(), stop_event=stop,
                                    debounce=300, raise_interrupt=False):
        names = ", ".join(sorted({Path(path).name for _, path in changes}))
        print(f"wsgate reloader: {names} changed; restarting", flush=True)
        _stop(child, signal.SIGUSR1)
        child = subprocess.Popen(command, start_new_session=True)
    return _stop(child, None)


def _stop(child: subprocess.Popen[bytes], signum: int | None) -> int:
    if signum is not None and child.poll() is None:
        child.send_signal(signum)
    try:
        return child.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait()
