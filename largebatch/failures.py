"""What went wrong, in words a person can act on.

Ray wraps a failure several times (a TrainingFailedError around a RayTaskError around the worker's exception, or a
RuntimeError around an OutOfMemoryError). `describe()` walks that chain and names the root: the node running out of
memory, a process killed from outside, or the user code's own exception.

`StudyAborted` is how a study whose driver cannot go on ends: the CLI prints its paragraph and exits with its code.

`no_verdict()` says when a study that ran to its end still has no answer (issue #26): every searched trial failed,
or the baseline, the reference every speed-up and tolerance is measured against, did not complete. The report is
still written (it lists the failures), but `largebatch tune` exits 1 with one line naming the first failure's
reason (the baseline's first), plus a hint for a common cause (`hint()`). Exit 1, not 2: the study started and ran
trials, which failed in the task's code or the machine, and it wrote a report; 2 stays for input refused before
anything runs. A diverged searched trial is a finding ("this LR is too high at this batch"), so a study whose
searched trials all diverged has its verdict (no recipe within tolerance) and exits 0.
"""
from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Optional

from largebatch.vocab import Status

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
    return with_hint(f"{type(root).__name__}: {_first_line(root)}")  # the fix for a common cause, where known


# a frequent failure in a user task, and what to do about it
HINTS = (("grad can be implicitly created only for scalar outputs",
          "the task's loss must be a scalar mean over the batch: reduce it with .mean()"),)


def hint(reason: Optional[str]) -> Optional[str]:
    """What to do about a failure whose reason names a common cause (HINTS), else None."""
    return next((fix for words, fix in HINTS if words in (reason or "")), None)


def with_hint(reason: str) -> str:
    """reason, and its hint when it has one: 'RuntimeError: grad can be ...; the task's loss must be ...'."""
    fix = hint(reason)
    return f"{reason}; {fix}" if fix and fix not in reason else reason


def no_verdict(records: list[dict]) -> Optional[str]:
    """One line when the study's trials give no verdict (see the module docstring), naming the first failure and
    its hint; None when they do. records: as records.py gives them (status, reason, is_baseline, name), the
    baseline's first."""
    from largebatch.vocab import OUTCOME_STATUSES, PROBLEM_STATUSES, SCORED_STATUSES

    if not records:
        return "no trial ran"
    base = [r for r in records if r.get("is_baseline")]
    searched = [r for r in records if not r.get("is_baseline")]

    def cause(r: dict, what: str) -> str:
        why = r.get("reason") or f"no reason recorded (status {r.get('status')})"
        return f"; {what}, {r.get('name') or 'a trial'}: {with_hint(str(why))}"

    if base and not any(r.get("status") in SCORED_STATUSES for r in base):
        bad = next((r for r in base if r.get("status") == Status.FAILED), base[0])
        ended = bad.get("status") if bad.get("status") in PROBLEM_STATUSES else "did not complete"
        ran = sum(r.get("status") in OUTCOME_STATUSES for r in records)
        return (f"no verdict: the baseline {ended}, so there is no reference to compare against ({ran} of "
                f"{len(records)} trials ran to an outcome){cause(bad, 'the baseline')}")
    if searched and not any(r.get("status") in OUTCOME_STATUSES for r in searched):
        first = next((r for r in searched if r.get("status") == Status.FAILED), searched[0])
        return f"no verdict: all {len(searched)} searched trials failed{cause(first, 'the first')}"
    return None


def verdict_exit(report: Optional[dict]) -> int:
    """`largebatch tune`'s exit code for a finished study: 0, or StudyAborted (one line, exit 1) when the report
    says the study has no verdict (`study.no_verdict`, set by tune/finish.py from no_verdict())."""
    line = ((report or {}).get("study") or {}).get("no_verdict")
    if line:
        raise StudyAborted(f"largebatch: {line}", 1)
    return 0


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
