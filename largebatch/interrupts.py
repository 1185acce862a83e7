"""SIGINT, SIGTERM and SIGHUP all stop a `largebatch` command the same way: as a KeyboardInterrupt in the main
thread, so every `finally` runs (the local Ray head is stopped by PID, MLflow runs are closed). A second signal
while that clean-up runs exits at once; the head then still stops, since it dies with its parent.

`ray.init()` installs a C++ handler for SIGTERM (it logs "SIGTERM received" and aborts the driver, skipping
every clean-up), so the Ray connection code calls `reinstall()` right after it.

Tune's own SIGINT handler is turned off (TUNE_DISABLE_SIGINT_HANDLER): it ends `Tuner.fit()` quietly as if the
study had finished, which would mark an interrupted study complete.
"""
from __future__ import annotations

import os
import signal
from typing import Optional

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_received: Optional[int] = None
_installed = False


def _handler(signum: int, frame) -> None:
    global _received
    if _received is not None:
        os._exit(128 + signum)
    _received = signum
    raise KeyboardInterrupt


def install() -> dict:
    """Call from the main thread, before Ray or Tune start. Returns the handlers it replaced, for restore()."""
    global _installed
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    previous = {sig: signal.signal(sig, _handler) for sig in HANDLED}
    _installed = True
    return previous


def restore(previous: dict) -> None:
    """Put back what install() replaced (the CLI is also called in-process, by tests and notebooks)."""
    global _installed, _received
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    _installed, _received = False, None


def reinstall() -> None:
    """Take the signals back after a library replaced the handlers (only if install() was called)."""
    import threading

    if _installed and threading.current_thread() is threading.main_thread():
        install()


def received() -> Optional[int]:
    """The signal that stopped us (SIGINT for a plain KeyboardInterrupt), or None."""
    return _received


def exit_code() -> int:
    return 128 + (_received or signal.SIGINT)
