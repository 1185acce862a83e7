"""What a person sees while a study runs: trials done of total, what runs now, and the best recipe so far.

On a terminal it is a live `rich` display, redrawn in place: a bar of trials done / total with elapsed time and an
ETA, one row per running trial (readable name, epoch, current metric, throughput) and the best finished recipe
against the baseline; each finished trial also leaves one line above it. Anywhere else (CI, `ray job submit`
logs, a file) it prints plain lines: one per finished trial and a short status line at most every 30 s.

The display knows nothing of Tune: tune/progress.py feeds it from Tune's callback hooks. rich is imported only
when a terminal display starts.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional, TextIO

from largebatch.vocab import PROBLEM_STATUSES

STATUS_EVERY_S = 30.0  # plain mode: a status line at most this often


def fmt_metric(name: str, value: Optional[float]) -> str:
    """'95.28%' for accuracies (kept as fractions), 4 significant digits otherwise, '-' when there is none."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{100 * value:.2f}%" if "acc" in name else f"{value:.4g}"


def fmt_duration(seconds: float) -> str:
    """'0:42', '12:05', '1:02:03'."""
    s = max(0, int(round(seconds)))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def _num(x: Any) -> Optional[float]:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


@dataclass
class TrialView:
    name: str
    is_baseline: bool = False
    epochs: int = 0  # the trial's budget (0: unknown)
    epoch: int = 0  # epochs finished
    metric: Optional[float] = None  # the running metric, last epoch
    score: Optional[float] = None  # what the report ranks by (best_val_acc)
    throughput: Optional[float] = None  # examples/s
    wall_s: Optional[float] = None  # training time
    total_s: Optional[float] = None  # start-up included, as Tune timed it
    outcome: Optional[str] = None  # completed | diverged | stopped | failed; None while it runs
    reason: str = ""


@dataclass
class StudyDisplay:
    title: str
    total: int
    metric: str = "val_acc"  # shown per running trial (the study's tuner.metric)
    score: str = "best_val_acc"  # finished trials and the best so far, as the report ranks them
    mode: str = "max"  # the score's direction (the task's metric: val_bpb and val_mse are lower-is-better)
    live: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    status_every_s: float = STATUS_EVERY_S
    trials: dict[str, TrialView] = field(default_factory=dict)

    def __post_init__(self):
        self.t0 = time.time()
        self.finished = 0
        self._last_line = self.t0
        self._live = None
        self._console = None

    # ---------------------------------------------------------------- events
    def start(self) -> "StudyDisplay":
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._console = Console(file=self.out)
            self._live = Live(get_renderable=self._renderable, console=self._console, refresh_per_second=2,
                              transient=False)
            self._live.start()
        return self

    def stop(self) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None

    def trial_started(self, key: str, name: str, is_baseline: bool = False, epochs: int = 0) -> None:
        view = self.trials.setdefault(key, TrialView(name=name, is_baseline=is_baseline, epochs=epochs))
        view.outcome, view.reason = None, ""  # a resumed trial runs again

    def trial_result(self, key: str, result: dict) -> None:
        view = self.trials.get(key)
        if view is None:
            return
        if "epoch" in result:
            view.epoch = int(result["epoch"]) + 1  # the loop reports 0-based epochs
        view.metric = _num(result.get(self.metric))
        view.score = _num(result.get(self.score))
        view.throughput = _num(result.get("throughput"))
        view.wall_s = _num(result.get("wall_s"))
        view.total_s = _num(result.get("time_total_s"))

    def trial_finished(self, key: str, result: dict, failed_reason: Optional[str] = None,
                       quiet: bool = False) -> None:
        """A trial ended (quiet: it had ended before a resume; it counts, without a line)."""
        view = self.trials.get(key)
        if view is None or view.outcome is not None:
            return
        if result:
            self.trial_result(key, result)
        if failed_reason is not None:
            view.outcome, view.reason = "failed", failed_reason
        elif result.get("status") == "diverged":
            view.outcome, view.reason = "diverged", str(result.get("reason") or "non-finite loss")
        elif result.get("is_final") is False or result.get("status") == "stopped_early":
            view.outcome = "stopped"  # the scheduler (ASHA) ended it before its budget
        else:
            view.outcome = "completed"
        self.finished += 1
        if not quiet:
            self._say(self.finished_line(view))

    def _views(self) -> list[TrialView]:
        # a snapshot: the live display renders from its own thread while Tune's callbacks add trials
        return list(self.trials.values())

    def tick(self) -> None:
        """Plain mode: the status line, when nothing was printed for status_every_s."""
        if not self.live and time.time() - self._last_line >= self.status_every_s:
            self._say(self.status_line())

    # ---------------------------------------------------------------- text
    def finished_line(self, v: TrialView) -> str:
        count = f"{self.finished}/{self.total}"
        if v.outcome in PROBLEM_STATUSES:
            return f"{v.outcome:<9} {count:>7}  {v.name}: {v.reason}"
        took = f"{v.total_s:.1f} s" if v.total_s is not None else ""
        if v.wall_s is not None:
            took += f" (training {v.wall_s:.1f} s)"
        stopped = f" at epoch {v.epoch}/{v.epochs}" if v.outcome == "stopped" and v.epochs else ""
        word = "done" if v.outcome == "completed" else v.outcome
        return f"{word:<9} {count:>7}  {v.name}  {self.score} {fmt_metric(self.score, v.score)}{stopped}  {took}"

    def best(self) -> tuple[Optional[TrialView], Optional[TrialView]]:
        """(best finished searched trial by the report's score, finished baseline trial)."""
        scored = [v for v in self._views() if v.outcome in ("completed", "stopped") and v.score is not None]
        baseline = next((v for v in scored if v.is_baseline), None)
        rest = [v for v in scored if not v.is_baseline]
        pick = max if self.mode == "max" else min
        return (pick(rest, key=lambda v: v.score) if rest else None), baseline

    def best_line(self) -> str:
        best, base = self.best()
        if best is None:
            head = "best so far: no searched trial finished yet"
        else:
            head = f"best so far: {best.name}  {self.score} {fmt_metric(self.score, best.score)}"
            if best.wall_s is not None:
                head += f", training {best.wall_s:.1f} s"
        if base is None:
            return head + "  |  baseline: not finished yet"
        tail = f"  |  baseline {base.name.removeprefix('baseline ')}  {fmt_metric(self.score, base.score)}"
        if best is not None:
            delta = best.score - base.score
            tail += f"  ({100 * delta:+.2f} pt" if "acc" in self.score else f"  ({delta:+.4g}"
            if best.wall_s and base.wall_s:
                tail += f", {base.wall_s / best.wall_s:.1f}x faster training"
            tail += ")"
        return head + tail

    def progress(self) -> float:
        """Trials done, counting the running ones by the share of their epochs they finished."""
        running = [v for v in self._views() if v.outcome is None and v.epochs]
        return self.finished + sum(min(1.0, v.epoch / v.epochs) for v in running)

    def eta_s(self) -> Optional[float]:
        done = self.progress()
        if done <= 0 or self.finished >= self.total:
            return None
        elapsed = time.time() - self.t0
        return elapsed * (self.total - done) / done

    def running(self) -> list[TrialView]:
        return [v for v in self._views() if v.outcome is None]

    def status_line(self) -> str:
        eta = self.eta_s()
        run = "; ".join(f"{v.name} epoch {v.epoch}/{v.epochs or '?'}" for v in self.running()) or "none"
        return (f"status  [{fmt_duration(time.time() - self.t0)}] {self.finished}/{self.total} done, running: {run}"
                f"{f', about {fmt_duration(eta)} left' if eta is not None else ''}  |  {self.best_line()}")

    def _say(self, line: str) -> None:
        self._last_line = time.time()
        if self._console is not None:
            self._console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.out, flush=True)

    # ---------------------------------------------------------------- the live view
    def _renderable(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        eta = self.eta_s()
        bar = Table.grid(padding=(0, 1))
        bar.add_row(Text(self.title, style="bold"),
                    ProgressBar(total=max(self.total, 1), completed=self.progress(), width=40),
                    Text(f"{self.finished}/{self.total} trials"),
                    Text(f"{fmt_duration(time.time() - self.t0)} elapsed", style="yellow"),
                    Text(f"ETA {fmt_duration(eta)}" if eta is not None else "ETA -", style="cyan"))
        parts: list[Any] = [bar]
        running = self.running()
        if running:
            table = Table(box=None, padding=(0, 2), show_edge=False, header_style="dim")
            for col, justify in (("running trial", "left"), ("epoch", "right"), (self.metric, "right"),
                                 ("examples/s", "right")):
                table.add_column(col, justify=justify)
            for v in running:
                table.add_row(v.name, f"{v.epoch}/{v.epochs or '?'}", fmt_metric(self.metric, v.metric),
                              f"{v.throughput:,.0f}" if v.throughput is not None else "-")
            parts.append(table)
        parts.append(Text(self.best_line(), style="green"))
        return Group(*parts)


def wants_live(stream: TextIO = sys.stdout) -> bool:
    """A live display only on a real terminal (not a pipe, a file or a dumb terminal)."""
    import os

    return bool(getattr(stream, "isatty", lambda: False)()) and os.environ.get("TERM", "") not in ("", "dumb")
