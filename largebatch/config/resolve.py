"""`resolve()`: the ONE place derived values are computed (docs/design.md §4).

Units are batch-size invariant: LR is "per base_batch_size examples"; warmup and milestones are in epochs or
examples. `resolve(cfg, num_workers)` turns them into steps for one concrete global batch, per batch-ramp phase.
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Callable, Final

from largebatch.config.schema import TrialConfig, _Strict
from largebatch.errors import BadInput

_Bad = Callable[[str, str], BadInput]  # builds the BadInput for a field
FULL_BATCH: Final = "full"  # data.global_batch_size: the whole training set (after data.train_subset) in one step


class Phase(_Strict):
    """A stretch of constant global batch: the whole run, or one step of `schedule.batch_ramp` (Smith et al.)."""

    start_epoch: int
    start_step: int  # the phase's first optimizer step
    global_batch_size: int
    per_worker_batch: int  # the micro-batch: examples in one forward pass of one worker
    grad_accum_steps: int
    steps_per_epoch: int
    peak_lr: float  # base_lr scaled by the rule for this phase's batch


class Resolved(_Strict):
    """A trial config plus everything derived from it for one worker count. Read-only downstream.
    The batch fields are the first phase's; `phases` has one entry per batch-ramp phase (one without a ramp)."""

    cfg: TrialConfig
    num_workers: int
    global_batch_size: int  # = per_worker_batch * num_workers * grad_accum_steps (docs/design.md §4)
    per_worker_batch: int  # examples in one forward pass of one worker (one micro-step)
    micro_batch: int  # the same number as per_worker_batch, under the name the loop's micro-steps use
    grad_accum_steps: int
    train_size: int  # examples in the (possibly subset) train split
    steps_per_epoch: int  # train_size // global_batch_size (drop_last: every step sees exactly B examples)
    examples_per_epoch: int
    epochs: int  # whole epochs run (ceil of budget.epochs, cut by max_steps)
    total_steps: int
    peak_lr: float  # base_lr scaled by the rule; the schedule multiplies it
    warmup_steps: int
    milestone_steps: tuple[int, ...]
    phases: tuple[Phase, ...]

    def phase_at_epoch(self, epoch: int) -> Phase:
        return next(p for p in reversed(self.phases) if p.start_epoch <= epoch)

    def phase_at_step(self, step: int) -> Phase:
        return next(p for p in reversed(self.phases) if p.start_step <= step)

    def examples_at(self, step: int) -> int:
        """Examples shown by the first `step` optimizer steps (step x B without a ramp)."""
        ends = [p.start_step for p in self.phases[1:]] + [step]
        return sum(max(0, min(step, end) - p.start_step) * p.global_batch_size for p, end in zip(self.phases, ends))

    def lr_at(self, step: int) -> float:
        from largebatch.schedules import lr_factor

        s = self.cfg.schedule
        return self.phase_at_step(step).peak_lr * lr_factor(
            step, self.total_steps, warmup=s.warmup, warmup_steps=self.warmup_steps,
            start_factor=s.warmup_start_factor, decay=s.decay, min_factor=s.min_lr_factor,
            milestones=self.milestone_steps, gamma=s.gamma,
        )

    def summary(self) -> dict[str, Any]:
        """The derived values a person checks before launching (and the ones logged as params)."""
        out = {
            "global_batch_size": self.global_batch_size,
            "num_workers": self.num_workers,
            "per_worker_batch": self.per_worker_batch,
            "micro_batch": self.micro_batch,
            "grad_accum_steps": self.grad_accum_steps,
            "train_size": self.train_size,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "total_steps": self.total_steps,
            "rule": self.cfg.scaling.rule,
            "base_lr": self.cfg.optim.base_lr,
            "base_batch_size": self.cfg.optim.base_batch_size,
            "peak_lr": self.peak_lr,
            "warmup_epochs": self.warmup_steps / self.steps_per_epoch,
            "warmup_steps": self.warmup_steps,
        }
        if len(self.phases) > 1:  # e.g. "256 x4 accum1 @0ep -> 1024 x4 accum1 @3ep"
            out["batch_ramp"] = " -> ".join(f"{p.global_batch_size} ({p.per_worker_batch}x{p.grad_accum_steps} "
                                            f"accum, lr {p.peak_lr:.4g}) @{p.start_epoch}ep" for p in self.phases)
        return out


def resolve(cfg: TrialConfig, num_workers: int, *, train_size: int | None = None,
            source: str = "<config>", prefix: str = "base.") -> Resolved:
    """Derive per-worker batch, accumulation, peak LR and step counts, for every batch-ramp phase. Anything
    impossible is BadInput."""
    d, s, b = cfg.data, cfg.schedule, cfg.budget

    def bad(field: str, msg: str) -> BadInput:
        return BadInput(msg, source=source, field=prefix + field)

    if num_workers < 1:
        raise BadInput(f"got {num_workers} workers; use 1 or more", source=source, field="workers")

    if train_size is None:
        train_size = trial_train_size(cfg, source, prefix)
    B = d.global_batch_size
    if B == FULL_BATCH:  # the whole training set per step; Resolved.cfg carries the number
        B = train_size
        d = d.model_copy(update={"global_batch_size": B})
        cfg = cfg.model_copy(update={"data": d})

    starts, batches = _ramp_batches(cfg, B, bad)
    splits = _phase_splits(cfg, num_workers, starts, batches, bad)
    micro0, accum0 = splits[0]
    _check_batches_fit(starts, batches, train_size, bad)
    check_full_batch_only(cfg, min(batches), train_size, bad)

    # ---- steps: epoch e runs train_size // B_e steps (B_e = its phase's batch); the examples budget is epochs
    # Per phase, never per epoch: time and memory do not grow with budget.epochs (up to MAX_EPOCHS)
    n_epochs = math.ceil(b.epochs)
    steps = _StepCounter(starts, batches, train_size, n_epochs)
    total, epochs = _total_steps(cfg, steps)
    warmup_steps = _warmup_steps(cfg, steps, total, bad)
    milestones = tuple(steps.steps_at(m) for m in s.milestones)
    if list(milestones) != sorted(milestones):
        raise bad("schedule.milestones", f"got {list(s.milestones)}; milestones must be increasing")

    lrs = _peak_lrs(cfg, batches, bad)
    phases = tuple(Phase(start_epoch=starts[k], start_step=steps.steps_at(starts[k]), global_batch_size=Bk,
                         per_worker_batch=splits[k][0], grad_accum_steps=splits[k][1],
                         steps_per_epoch=train_size // Bk, peak_lr=lrs[k]) for k, Bk in enumerate(batches))

    return Resolved(
        cfg=cfg, num_workers=num_workers, global_batch_size=B, per_worker_batch=micro0, micro_batch=micro0,
        grad_accum_steps=accum0, train_size=train_size, steps_per_epoch=steps.spe(0),
        examples_per_epoch=steps.spe(0) * B, epochs=epochs, total_steps=total, peak_lr=lrs[0],
        warmup_steps=warmup_steps, milestone_steps=milestones, phases=phases,
    )


def _ramp_batches(cfg: TrialConfig, B: int, bad: _Bad) -> tuple[list[int], list[int]]:
    """The phases: (start epochs, global batches); a factor of 1 starts no phase. Batches must be whole numbers."""
    ramp = cfg.schedule.batch_ramp
    starts, batches = [0], [B]
    for m, f in zip(ramp.milestones, ramp.factors):
        nxt = batches[-1] * f
        if abs(nxt - round(nxt)) > 1e-9:
            raise bad("schedule.batch_ramp.factors", f"factor {f:g} at epoch {m} makes a batch of {nxt:g} "
                                                     f"examples; pick factors that keep the batch whole")
        if round(nxt) != batches[-1]:
            starts.append(m)
            batches.append(int(round(nxt)))
    return starts, batches


def _phase_splits(cfg: TrialConfig, num_workers: int, starts: list[int], batches: list[int],
                  bad: _Bad) -> list[tuple[int, int]]:
    """(micro-batch, accumulation steps) for every phase's global batch."""
    d, ramp = cfg.data, cfg.schedule.batch_ramp
    # "auto" is settled on the workers (train/microbatch.py), which resolve again with the number they found
    cap = d.per_worker_batch_cap if isinstance(d.per_worker_batch_cap, int) else None
    if d.per_worker_batch_cap == "auto" and d.grad_accum_steps is not None:
        raise bad("data.per_worker_batch_cap", "got 'auto' with data.grad_accum_steps set; give one of the two")

    def split(Bk: int, k: int) -> tuple[int, int]:
        """(micro-batch, accumulation steps) for phase k's global batch Bk."""
        where = "" if k == 0 else f"phase {k} (from epoch {starts[k]}, B={Bk}): "
        fld = (lambda name: name) if k == 0 else (lambda name: "schedule.batch_ramp.factors")
        if Bk % num_workers:
            raise bad(fld("data.global_batch_size"), f"{where}got {Bk}, which does not divide over {num_workers} "
                                                     f"workers; use a multiple of {num_workers}")
        per_worker = Bk // num_workers  # examples per worker per optimizer step, over all its micro-steps
        if k > 0 and ramp.grow == "accum":  # the first phase's micro-batch, more micro-steps
            if per_worker % micro0:
                raise bad(fld(""), f"{where}the {per_worker} examples per worker do not divide into micro-batches of "
                                   f"{micro0}; pick factors that keep the batch a multiple of {micro0 * num_workers}")
            return micro0, per_worker // micro0
        if d.grad_accum_steps is not None:
            accum = d.grad_accum_steps
            if per_worker % accum:
                raise bad(fld("data.grad_accum_steps"),
                          f"{where}got {accum}: the {per_worker} examples per worker per step (= {Bk} / "
                          f"{num_workers} workers) do not divide into {accum} micro-batches; use a divisor of "
                          f"{per_worker}")
        else:
            accum = 1
            if cap is not None:
                # the fewest micro-steps whose micro-batch fits under the cap and divides the per-worker batch
                accum = next((a for a in range(1, per_worker + 1)
                              if per_worker % a == 0 and per_worker // a <= cap), per_worker)
        micro = per_worker // accum
        if cap is not None and micro > cap:
            raise bad(fld("data.per_worker_batch_cap"),
                      f"{where}got {cap}, below the micro-batch {micro} forced by "
                      f"grad_accum_steps={accum}; raise the cap or the accumulation")
        return micro, accum

    micro0, accum0 = split(batches[0], 0)  # split() reads micro0 for the later phases of an `accum` ramp
    return [(micro0, accum0)] + [split(Bk, k) for k, Bk in enumerate(batches[1:], 1)]


def _check_batches_fit(starts: list[int], batches: list[int], train_size: int, bad: _Bad) -> None:
    """Every phase's global batch is at most the training set."""
    for k, Bk in enumerate(batches):
        if train_size < Bk:
            field = "data.global_batch_size" if k == 0 else "schedule.batch_ramp.factors"
            where = "" if k == 0 else f"phase {k} (from epoch {starts[k]}): "
            raise bad(field, f"{where}got {Bk}, larger than the {train_size} training examples; "
                             f"use at most {train_size} (or full)")


class _StepCounter:
    """Optimizer steps per epoch and up to an epoch, over the batch-ramp phases."""

    def __init__(self, starts: list[int], batches: list[int], train_size: int, n_epochs: int) -> None:
        self.starts, self.batches, self.train_size, self.n_epochs = starts, batches, train_size, n_epochs

    def spe(self, e: int) -> int:
        return self.train_size // self.batches[bisect.bisect_right(self.starts, e) - 1]

    def full_steps(self, n: int) -> int:
        """Optimizer steps in the first n whole epochs (past the budget, at the last phase's rate)."""
        starts, train_size = self.starts, self.train_size
        ends = starts[1:] + [max(n, starts[-1])]
        return sum(max(0, min(n, end) - st) * (train_size // Bk) for st, end, Bk in zip(starts, ends, self.batches))

    def steps_at(self, x: float) -> int:
        """Optimizer steps in the first x epochs (x may be fractional, or past the budget for decay milestones)."""
        whole = int(x)
        return self.full_steps(whole) + round((x - whole) * self.spe(min(whole, self.n_epochs - 1)))


def _total_steps(cfg: TrialConfig, steps: _StepCounter) -> tuple[int, int]:
    """(total optimizer steps, whole epochs run): the epochs budget, cut by budget.max_steps."""
    b, n_epochs = cfg.budget, steps.n_epochs
    total = steps.steps_at(b.epochs)
    epochs = n_epochs
    if b.max_steps is not None:
        total = min(total, b.max_steps)
        epochs = min(epochs, bisect.bisect_left(range(1, n_epochs + 1), total, key=steps.full_steps) + 1)
    total = max(total, 1)
    return total, epochs


def _warmup_steps(cfg: TrialConfig, steps: _StepCounter, total: int, bad: _Bad) -> int:
    """Warmup in optimizer steps; longer than the `total` training steps is BadInput."""
    s = cfg.schedule
    starts, batches, train_size, n_epochs = steps.starts, steps.batches, steps.train_size, steps.n_epochs
    if s.warmup == "none":
        warmup_steps = 0
    elif s.warmup_examples is not None:
        warmup_steps, left = 0, s.warmup_examples  # each step shows its phase's batch
        for st, end, Be in zip(starts, starts[1:] + [n_epochs], batches):  # phase by phase
            per_epoch = train_size // Be * Be  # examples in one epoch of this phase
            whole = min(end - st, max(0, left - 1) // per_epoch)  # epochs that leave more than one epoch to go
            warmup_steps, left = warmup_steps + whole * (train_size // Be), left - whole * per_epoch
            if whole < end - st:
                warmup_steps += math.ceil(left / Be)
                break
        else:
            warmup_steps += math.ceil(left / batches[-1])
    else:
        warmup_steps = steps.steps_at(s.warmup_epochs)
    if warmup_steps > total:
        field = "schedule.warmup_examples" if s.warmup_examples is not None else "schedule.warmup_epochs"
        raise bad(field, f"warmup of {warmup_steps} steps is longer than the {total} training steps; "
                         f"shorten the warmup or raise budget.epochs")
    return warmup_steps


def _peak_lrs(cfg: TrialConfig, batches: list[int], bad: _Bad) -> list[float]:
    """Each phase's peak LR: base_lr scaled by the rule for its global batch."""
    from largebatch.scaling import scaled_lr

    try:
        return [scaled_lr(cfg.scaling.rule, cfg.optim.base_lr, Bk, cfg.optim.base_batch_size, cfg.scaling.alpha)
                for Bk in batches]
    except KeyError as e:
        raise bad("scaling.rule", str(e.args[0])) from None


def trial_train_size(cfg: TrialConfig, source: str = "<config>", prefix: str = "base.") -> int:
    """Training examples the trial trains on: the task's count, or data.train_subset (at most that count)."""
    from largebatch.tasks import task_of, train_size as task_train_size

    n = task_train_size(task_of(cfg), cfg)
    k = cfg.data.train_subset
    if k is not None:
        # checked here, not in the data layer, so the message names the study file and the dotted field
        what = repr(cfg.data.dataset) if cfg.task.name == "classification" else f"task {cfg.task.name!r}"
        if k > n:
            raise BadInput(f"got {k}, more than the {n} training examples of {what}; use at most {n}",
                           source=source, field=prefix + "data.train_subset")
        return k
    return n


def check_full_batch_only(cfg: TrialConfig, batch: int, train_size: int, bad) -> None:
    """An optimizer registered full_batch_only (rprop) at a global batch below the training set is BadInput: it
    steps by the sign of each weight's gradient, and mini-batches flip that sign from step to step, so the steps
    shrink (docs/design.md §4; measured by bench/rprop_minibatch.py). So is weight_decay > 0 for an optimizer that
    applies none (OptimInfo.decays)."""
    from largebatch.optim import OPTIMIZERS

    name = cfg.optim.name
    if name in OPTIMIZERS and cfg.optim.weight_decay and not OPTIMIZERS.get(name).decays:
        raise bad("optim.weight_decay", f"got {cfg.optim.weight_decay:g}, but {name} takes no weight decay; set "
                                        f"optim.weight_decay: 0 or pick an optimizer that has it (sgd, adam, ...)")
    if name in OPTIMIZERS and OPTIMIZERS.get(name).full_batch_only and batch < train_size:
        raise bad("optim.name", f"got {name!r} at a global batch of {batch}, smaller than the {train_size} training "
                                f"examples: {name} steps by each gradient's sign, which mini-batches flip from step "
                                f"to step; use data.global_batch_size: full (= {train_size}), or optimizer rmsprop "
                                f"for mini-batches")
