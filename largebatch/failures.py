"""What went wrong, in words a person can act on.

Ray wraps a failure several times (a TrainingFailedError around a RayTaskError around the worker's exception, or a
RuntimeError around an OutOfMemoryError). `describe()` walks that chain and names the root: the node running out of
memory, a process killed from outside, or the user code's own exception.

`StudyAborted` is how a study whose driver cannot go on ends: the CLI prints its paragraph and exits with its code.
"""
from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Optional

# Ray's memory monitor says e.g. "... was running was 22.38GB / 23.48GB (0.953), which exceeds the memory usage
# threshold of 0.95"
_MEMORY_FIGURES = re.compile(r"([\d.]+)\s*GB\s*/\s*([\d.]+)\s*GB")
_OOM_WORDS = ("running low on memory", "out of memory", "OutOfMemoryError", "memory usage threshold")


class StudyAborted(Exception):
    """The driver cannot go on. str(e) is the paragraph for the user; exit_code is what the CLI returns."""

    def __init__(self, paragraph: str, exit_code: int = 1):
        super().__init__(paragraph)
        self.exit_code = exit_code


def exception_chain(e: BaseException) -> list[BaseException]:
    """e, then its causes/contexts, Ray's wrapped `.cause` (RayTaskError), the lowest rank's worker exception
    (WorkerGroupError) or the controller's (ControllerError); no cycles."""
    out: list[BaseException] = []
    cur: Optional[BaseException] = e
    while cur is not None and all(cur is not seen for seen in out) and len(out) < 20:
        out.append(cur)
        nxt = cur.__cause__ or cur.__context__ or getattr(cur, "cause", None)
        # Train V2 keeps the workers' exceptions in a dict by rank (WorkerGroupError), the controller's apart
        failures = getattr(cur, "worker_failures", None)
        if nxt is None and isinstance(failures, dict) and failures:
            nxt = failures[min(failures)]
        nxt = nxt or getattr(cur, "controller_failure", None)
        cur = nxt if isinstance(nxt, BaseException) else None
    return out


def node_memory() -> str:
    """'22.4 of 23.5 GB used' for this machine now, from /proc/meminfo ('' where it cannot be read)."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        total = int(info["MemTotal"].split()[0]) / 2**20
        avail = int(info["MemAvailable"].split()[0]) / 2**20
        return f"{total - avail:.1f} of {total:.1f} GB used"
    except (OSError, KeyError, ValueError):
        return ""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""


def describe(e: BaseException) -> str:
    """One line: what happened, named by the root of Ray's wrappers."""
    chain = exception_chain(e)
    text = " ".join(str(c) for c in chain)
    names = {type(c).__name__ for c in chain}
    if "OutOfMemoryError" in names or any(w in text for w in _OOM_WORDS):
        m = _MEMORY_FIGURES.search(text)
        used = f"{float(m[1]):.1f} of {float(m[2]):.1f} GB used" if m else node_memory()
        return (f"node out of memory{': ' + used if used else ''} "
                f"(Ray's memory monitor killed the trial's processes)")
    if names & {"ActorDiedError", "RayActorError", "WorkerCrashedError", "ActorUnavailableError"}:
        return ("a trial process died (killed from outside: SIGKILL, the kernel's OOM killer, or a crash): "
                + _first_line(chain[0]))
    if "NodeDiedError" in names or "LocalRayletDiedError" in names:
        return "a Ray node died: " + _first_line(chain[0])
    # the user's own exception: the deepest one that is not one of Ray's wrappers
    wrappers = ("TrainingFailedError", "RayTaskError", "TuneError", "WorkerGroupError", "ControllerError")
    root = next((c for c in reversed(chain) if not any(w in type(c).__name__ for w in wrappers)), chain[-1])
    return f"{type(root).__name__}: {_first_line(root)}"


def format_failure(e: BaseException) -> str:
    """The whole story for a person debugging: every traceback in the chain, Ray's rendering of the workers' own
    tracebacks included (it is in the wrapper's message)."""
    import traceback

    return "".join(traceback.format_exception(e))[-200_000:]


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
