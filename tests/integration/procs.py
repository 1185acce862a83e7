"""Processes by PID, from /proc: the tests find what a command started by walking down from its PID, never by
process name (other Ray instances may run on the machine). The walk itself is the product's (largebatch/raylib.py
stops a node's whole tree the same way)."""
from __future__ import annotations

from pathlib import Path

from largebatch.raylib import descendants, is_running as alive

__all__ = ["alive", "cmdline", "descendants"]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
