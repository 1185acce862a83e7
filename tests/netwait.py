"""Waiting for a server the tests started (any tier imports it: tests/ is on the path through tests/conftest.py)."""
from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Until `url` answers; fails early, with the end of its log, if the server process `proc` exits first."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited {proc.returncode}: {log.read_text()[-2000:] if log else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer in {timeout_s} s")
