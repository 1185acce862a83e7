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
from typing import TYPE_CHECKING, Any, Literal, Optional, TextIO

from largebatch.vocab import PROBLEM_STATUSES, Status

if TYPE_CHECKING:  # rich is imported when the live view starts
    from rich.console import Console
    from rich.live import Live

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


def command_start() -> float:
    """When this process started (the user's command), by the kernel's clock; now if that cannot be read."""
    try:
        import psutil  # Ray's own dependency

        return float(psutil.Process().create_time())
    except Exception:
        return time.time()


def _num(x: Any) -> Optional[float]:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _score(v: TrialView) -> float:
    assert v.score is not None  # called only on views filtered to scored ones
    return v.score


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
    batch: Optional[int] = None  # global batch size, from its results
    curve: list = field(default_factory=list)  # (steps, wall_s, metric) per epoch: the report's curve (target.py)


@dataclass
class StudyDisplay:
    title: str
    total: int
    metric: str = "val_acc"  # shown per running trial (the study's tuner.metric)
    score: str = "best_val_acc"  # finished trials and the best so far, as the report ranks them
    mode: str = "max"  # the score's direction (the task's metric: val_bpb and val_mse are lower-is-better)
    live: bool = False
    # the report's basis for the best so far (report/target.py, speed.py, rank.py): the tolerance and its units,
    # an explicit target (budget.target_val_acc), and the profiled step times ({batch: s}; empty: wall-clock)
    tolerance: float = 0.5
    units: Optional[str] = None  # points | relative | absolute; None: points for max metrics, absolute for min
    target: Optional[float] = None
    step_s: dict = field(default_factory=dict)
    slots: int = 1  # trials that run at once: the ETA divides the work left by it
    out: TextIO = field(default_factory=lambda: sys.stdout)
    status_every_s: float = STATUS_EVERY_S
    trials: dict[str, TrialView] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.t0 = command_start()  # the study's time counts from the command's start: Ray's start-up included
        self._end: Optional[float] = None  # the estimated end of the study (eta_s)
        self.finished = 0
        self._last_line = self.t0
        self._live: Optional[Live] = None
        self._console: Optional[Console] = None

    # ---------------------------------------------------------------- events
    def start(self) -> "StudyDisplay":
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._console = Console(file=self.out)
            self._live = live = Live(get_renderable=self._renderable, console=self._console, refresh_per_second=2,
                                     transient=False)
            live.start()
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
        batch, steps = _num(result.get("global_batch_size")), _num(result.get("steps"))
        view.batch = int(batch) if batch is not None else view.batch
        if steps is not None and view.metric is not None and (not view.curve or steps > view.curve[-1][0]):
            view.curve.append((int(steps), _num(result.get("wall_s")), view.metric))
        view.throughput = _num(result.get("throughput"))
        view.wall_s = _num(result.get("wall_s"))
        view.total_s = _num(result.get("time_total_s"))
        self._estimate()

    def trial_finished(self, key: str, result: dict, failed_reason: Optional[str] = None,
                       quiet: bool = False) -> None:
        """A trial ended (quiet: it had ended before a resume; it counts, without a line)."""
        view = self.trials.get(key)
        if view is None or view.outcome is not None:
            return
        if result:
            self.trial_result(key, result)
        if failed_reason is not None:
            view.outcome, view.reason = Status.FAILED.value, failed_reason
        elif result.get("status") == Status.DIVERGED:
            view.outcome, view.reason = Status.DIVERGED.value, str(result.get("reason") or "non-finite loss")
        elif result.get("is_final") is False or result.get("status") == Status.STOPPED_EARLY:
            view.outcome = "stopped"  # the scheduler (ASHA) ended it before its budget
        else:
            view.outcome = Status.COMPLETED.value
        self.finished += 1
        self._estimate()
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
        word = "done" if v.outcome == Status.COMPLETED else v.outcome
        return f"{word:<9} {count:>7}  {v.name}  {self.score} {fmt_metric(self.score, v.score)}{stopped}  {took}"

    def _scale(self, ref: Optional[float]):
        from largebatch.report.rank import Scale

        return Scale(self.mode, self.units or ("points" if self.mode == "max" else "absolute"), ref)

    def _to_target(self, views: list[TrialView], target: Optional[float]) -> tuple[str, dict[int, float]]:
        """(basis, {id(view): time to target}) as the report computes it (report/target.py, speed.py): steps to the
        first epoch meeting the target x the profiled step time when every view's batch was profiled, else the
        measured training wall-clock at that epoch."""
        from largebatch.report.speed import projected
        from largebatch.report.target import first_reach

        basis = "projected" if self.step_s and all(v.batch in self.step_s for v in views) else "measured"
        times: dict[int, float] = {}
        for v in views:
            hit = first_reach(v.curve, target, self.mode) if target is not None else None
            if hit is None:
                t = None
            elif basis == "projected":  # every view's batch was profiled
                t = projected(v.batch, hit[0], self.step_s) if v.batch is not None else None
            else:
                t = hit[1]
            if t is not None:
                times[id(v)] = t
        return basis, times

    def standing(self) -> dict[str, Any]:
        """The best so far on the report's basis: the searched trial within tolerance that reaches the baseline's
        quality (or the study's target) soonest, else the one with the best score; the baseline's figures beside it.
        Keys: best, base (views), base_score, target, basis, times ({id(view): s}), gap (best vs the baseline in the
        tolerance's units, positive = worse), speedup (baseline's time to target / best's, None when unknown)."""
        from largebatch.report.target import target_value

        scored = [v for v in self._views() if v.outcome in (Status.COMPLETED, "stopped") and v.score is not None]
        bases = [v for v in scored if v.is_baseline]
        rest = [v for v in scored if not v.is_baseline]
        pick = max if self.mode == "max" else min
        out: dict[str, Any] = {"best": pick(rest, key=_score) if rest else None,
                               "base": bases[0] if bases else None, "base_score": None, "target": self.target,
                               "basis": None, "times": {}, "gap": None, "speedup": None}
        if not bases:
            return out
        ref = sum(_score(v) for v in bases) / len(bases)
        scale = self._scale(ref)
        target = self.target if self.target is not None else target_value(ref, self.tolerance, self.mode,
                                                                          scale.units)
        basis, times = self._to_target(scored, target)
        within = [v for v in rest if (scale.worse(v.score, ref) or 0.0) <= self.tolerance + 1e-12]
        reaching = [v for v in within if id(v) in times]
        best = min(reaching, key=lambda v: times[id(v)]) if reaching else out["best"]
        base_times = [times[id(v)] for v in bases if id(v) in times]
        base_t = sum(base_times) / len(base_times) if len(base_times) == len(bases) else None
        out.update(best=best, base_score=ref, target=target, basis=basis, times=times,
                   gap=scale.worse(best.score, ref) if best is not None else None, base_time=base_t)
        if best is not None and id(best) in times and base_t is not None and times[id(best)] > 0:
            out["speedup"] = base_t / times[id(best)]
        return out

    def best(self) -> tuple[Optional[TrialView], Optional[TrialView]]:
        """(best finished searched trial on the report's basis, finished baseline trial)."""
        st = self.standing()
        return st["best"], st["base"]

    def _gap(self, gap: Optional[float]) -> str:
        units = self._scale(None).units
        if gap is None:
            return "gap -"
        return f"gap {gap:+.2f} pt" if units == "points" else f"gap {100 * gap:+.1f}%" if units == "relative" \
            else f"gap {gap:+.4g}"

    def best_line(self) -> str:
        st = self.standing()
        best, base, times = st["best"], st["base"], st["times"]
        tgt = fmt_metric(self.metric, st["target"])
        if best is None:
            head = "best so far: no searched trial finished yet"
        else:
            head = f"best so far: {best.name}  {self.score} {fmt_metric(self.score, best.score)}"
            if id(best) in times:
                head += f", {times[id(best)]:.3g} s {st['basis']} to {tgt}"
            elif best.wall_s is not None:
                head += f", training {best.wall_s:.1f} s"
        if base is None:
            return head + "  |  baseline: not finished yet"
        tail = f"  |  baseline {base.name.removeprefix('baseline ')}  {fmt_metric(self.score, st['base_score'])}"
        if st.get("base_time") is not None:
            tail += f", {st['base_time']:.3g} s to {tgt}"
        if best is None:
            return head + tail
        tail += f"  ({self._gap(st['gap'])}"
        if st["speedup"] is not None and st["speedup"] > 1.0:
            tail += f", {st['speedup']:.1f}x sooner to {tgt}, {st['basis']})"
        elif st["speedup"] is not None:
            tail += f", {st['speedup']:.2f}x the baseline's speed: keep the baseline)"
        elif any(v.curve for v in self._views()) and st.get("base_time") is not None:
            tail += f", none within tolerance reaches {tgt} yet: keep the baseline)"
        else:  # no curves (or the baseline never reached its own target): the whole runs' training time
            tail += f", {best_total:.1f}x faster training)" if (best_total := self._total_ratio(best, base)) else ")"
        return head + tail

    def _total_ratio(self, best: TrialView, base: TrialView) -> Optional[float]:
        """The baseline's training time over the best's, whole runs: projected (steps x step time) when both
        batches were profiled, else measured wall-clock; None when unknown."""
        from largebatch.report.speed import projected

        def total(v: TrialView) -> Optional[float]:
            if self.step_s:
                return projected(v.batch, v.curve[-1][0], self.step_s) if v.curve and v.batch is not None else None
            return v.wall_s

        a, b = total(base), total(best)
        return a / b if a and b else None

    def progress(self) -> float:
        """Trials done, counting the running ones by the share of their epochs they finished."""
        running = [v for v in self._views() if v.outcome is None and v.epochs]
        return self.finished + sum(min(1.0, v.epoch / v.epochs) for v in running)

    def epoch_s(self) -> Optional[float]:
        """Seconds one trial takes per epoch, its start-up included: measured over the finished trials (what each
        took for the epochs it ran), else over the running trials' epochs so far; None before any epoch ended."""
        views = self._views()
        pool = [(v.total_s, v.epoch) for v in views if v.outcome is not None and v.total_s and v.epoch]
        pool = pool or [(v.total_s, v.epoch) for v in views if v.outcome is None and v.total_s and v.epoch]
        if not pool:
            return None
        return sum(s for s, _ in pool) / sum(e for _, e in pool)

    def work_left(self) -> float:
        """Trial-epochs left: the running trials' remaining epochs and every trial not started yet at the mean
        budget of the trials seen (stop-at-target and schedulers may end trials sooner: an upper estimate)."""
        views = self._views()
        budgets = [v.epochs for v in views if v.epochs]
        mean_budget = sum(budgets) / len(budgets) if budgets else 0.0
        running = sum(max(0, v.epochs - v.epoch) for v in views if v.outcome is None and v.epochs)
        return running + max(0, self.total - len(views)) * mean_budget

    def _estimate(self) -> None:
        """Re-estimate the study's end at an event (an epoch reported, a trial ended): work left x measured seconds
        per epoch / the trials that run at once. Between events the ETA counts down from it, never up."""
        per_epoch = self.epoch_s()
        if per_epoch is None or self.finished >= self.total:
            self._end = None
            return
        left = self.total - self.finished
        self._end = time.time() + self.work_left() * per_epoch / max(1, min(self.slots, left))

    def eta_s(self) -> Optional[float]:
        end = getattr(self, "_end", None)
        if end is None or self.finished >= self.total:
            return None
        return max(0.0, end - time.time())

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
    def _renderable(self) -> Any:
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
            columns: list[tuple[str, Literal["left", "right"]]] = [
                ("running trial", "left"), ("epoch", "right"), (self.metric, "right"), ("examples/s", "right")]
            for col, justify in columns:
                table.add_column(col, justify=justify)
            for v in running:
                table.add_row(v.name, f"{v.epoch}/{v.epochs or '?'}", fmt_metric(self.metric, v.metric),
                              f"{v.throughput:,.0f}" if v.throughput is not None else "-")
            parts.append(table)
        parts.append(Text(self.best_line(), style="green"))
        return Group(*parts)


def wants_live(stream: Optional[TextIO] = None) -> bool:
    """A live display only on a real terminal (not a pipe, a file or a dumb terminal). stream: sys.stdout as it is
    now (not as it was when this module was imported: a test's captured stream may be closed since)."""
    import os

    stream = sys.stdout if stream is None else stream

    return bool(getattr(stream, "isatty", lambda: False)()) and os.environ.get("TERM", "") not in ("", "dumb")
