"""The loop's events and their handlers (the Composer Event/Algorithm shape). The loop (train/loop.py) fires an event
at a named point; the event's handlers run in order on the trial's `State`, on every rank, and one may end the trial
by returning a `Stop` (a status and a reason: the first stop wins, the later handlers still run).

    Event.CHECK      every DIVERGENCE_CHECK_STEPS optimizer steps and at an epoch's last step, with the losses
                     all-reduced (`State.losses`): divergence
    Event.EPOCH_END  the epoch's record is made (train sums, evaluation) and in the history: the target figures,
                     the best values, stop at target
    Event.RECORDED   the record is complete (status, best_*, instruments): the log line (rank 0), the checkpoint
                     (rank 0, at the checkpoint cadence and at the trial's end) and the report (every rank)

The instruments (instruments/hooks.py) are not handlers: the loop calls them at their own marked places. The
checkpoint's files (CKPT_FILE, HISTORY_FILE) are written here; the resume (train/loop.py), the runner
(train/runner.py) and train/trial.py `read_history` read them.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional

import torch

from largebatch.config import Resolved, TrialConfig
from largebatch.metrics import best_of
from largebatch.tasks import Task
from largebatch.vocab import INSTRUMENT_METRICS, Status

if TYPE_CHECKING:
    from largebatch.train.loop import WorkerContext

CKPT_FILE = "state.pt"
HISTORY_FILE = "history.json"


class Event(StrEnum):
    CHECK = "check"
    EPOCH_END = "epoch_end"
    RECORDED = "recorded"


class Stop(NamedTuple):
    status: str
    reason: str


@dataclass
class State:
    """The trial on this rank, as the loop's phases and the handlers share it."""
    cfg: TrialConfig  # as the trial was given (`res.cfg` differs only by a resolved `per_worker_batch_cap: auto`)
    res: Resolved
    ctx: WorkerContext
    task: Task
    model: torch.nn.Module  # unwrapped (no DDP)
    opt: torch.optim.Optimizer
    scaler: Optional[torch.amp.GradScaler]
    auto: dict[str, int]  # what `per_worker_batch_cap: auto` found: in every record
    # where the trial stands: restored by a resume, moved on by the epochs
    step: int = 0
    wall_offset: float = 0.0
    history: list[dict] = field(default_factory=list)
    target: dict[str, Any] = field(default_factory=dict)  # the target figures, once reached
    # start-up and trial time of the earlier runs of this trial (a restart, or a resume from a pause at a sha rung),
    # up to their checkpoint: a trial's start-up counts every start
    startup_before: float = 0.0
    fit_before: float = 0.0
    status: str = Status.COMPLETED.value
    reason: Optional[str] = None
    lr: float = float("nan")  # the LR last written to the optimizer
    # clocks (time.time()): when the trial was asked for (or set up), when the epochs began, the last checkpoint
    t_start: float = 0.0
    t0: float = 0.0
    t_ckpt: float = 0.0
    startup_s: float = 0.0
    # at Event.CHECK: the running loss sum and the last step's loss, summed over ranks
    losses: tuple[float, float] = (0.0, 0.0)
    # the epoch being ended
    epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    best: dict[str, Any] = field(default_factory=dict)
    done: bool = False
    ckpt_dir: Optional[str] = None


Handler = Callable[[State], Optional[Stop]]


def divergence(st: State) -> Optional[Stop]:
    """CHECK: a non-finite loss, or a last-step loss above budget.divergence_loss, ends the trial (all ranks decide
    together: the losses are all-reduced)."""
    running, last = st.losses
    world, limit = st.ctx.world, st.cfg.budget.divergence_loss
    if not math.isfinite(running) or not math.isfinite(last):
        return Stop(Status.DIVERGED.value, f"non-finite loss at step {st.step}")
    if last / world > limit:
        return Stop(Status.DIVERGED.value, f"loss {last / world:.3g} above budget.divergence_loss={limit:g} at step "
                                           f"{st.step}")
    return None


def target(st: State) -> Optional[Stop]:
    """EPOCH_END: the first epoch at budget.target_val_acc records the target figures (measured at epoch ends, where
    val_acc is known; wall_s includes the evaluations so far)."""
    goal = st.cfg.budget.target_val_acc
    if goal is not None and not st.target and st.metrics.get("val_acc", float("nan")) >= goal:
        st.target = {"time_to_target_s": st.wall_s, "steps_to_target": st.step,
                     "examples_to_target": st.res.examples_at(st.step)}
    return None


def best_values(st: State) -> Optional[Stop]:
    """EPOCH_END: the best over epochs of every eval metric, in its direction (best_val_acc, best_val_loss, ...)."""
    st.best = {f"best_{k}": best_of((h[k] for h in st.history), mode) for k, mode in st.task.reported().items()
               if k.startswith("val_")}
    return None


def stop_at_target(st: State) -> Optional[Stop]:
    """EPOCH_END: with budget.stop_at_target, a trial that reached its target stops early."""
    if st.target and st.cfg.budget.stop_at_target:
        return Stop(Status.STOPPED_EARLY.value, f"reached target val_acc {st.cfg.budget.target_val_acc} at step "
                                                f"{st.step}")
    return None


def log_line(st: State) -> Optional[Stop]:
    """RECORDED: the epoch's line on rank 0."""
    if st.ctx.is_rank0:
        print(epoch_line(st.metrics, st.res.epochs, st.task), flush=True)
    return None


def checkpoint(st: State) -> Optional[Stop]:
    """RECORDED: rank 0 saves at the checkpoint cadence and when the trial ends (`State.ckpt_dir`, else None)."""
    st.ckpt_dir = None
    if st.ctx.is_rank0 and (st.done or checkpoint_due(st.cfg.checkpoint, st.epoch, time.time() - st.t_ckpt)):
        state = {"epoch": st.epoch, "step": st.step, "wall_s": st.wall_s, "target": st.target,
                 "startup_s": st.startup_s, "fit_s": st.fit_before + (time.time() - st.t_start)}
        st.ckpt_dir = _save_checkpoint(st.model, st.opt, st.scaler, state, st.history)
        st.t_ckpt = time.time()
    return None


def report(st: State) -> Optional[Stop]:
    """RECORDED: every rank reports every epoch (Ray Train requires it), rank 0 with its checkpoint if it saved."""
    st.ctx.report(st.metrics, st.ckpt_dir)
    return None


HANDLERS: dict[Event, tuple[Handler, ...]] = {
    Event.CHECK: (divergence,),
    Event.EPOCH_END: (target, best_values, stop_at_target),
    Event.RECORDED: (log_line, checkpoint, report),
}


def fire(event: Event, st: State) -> bool:
    """Run the event's handlers in order; True when the trial ends (a handler's Stop, or an earlier one)."""
    for handler in HANDLERS[event]:
        stop = handler(st)
        if stop is not None and st.status == Status.COMPLETED:
            st.status, st.reason = stop
    return st.status != Status.COMPLETED


def epoch_line(m: dict[str, Any], epochs: int, task: Task) -> str:
    """The epoch's log line (rank 0): loss, the task's metrics, LR, throughput, wall-clock, instruments."""
    shown = "".join(f" {k} {m[k]:.4f}" for k in m if k.startswith(("train_", "val_")) and k not in
                    ("train_loss", "val_loss"))
    status = m.get("status", Status.COMPLETED.value)
    return (f"[largebatch] epoch {m['epoch'] + 1}/{epochs} step {m['steps']} loss {m['train_loss']:.4f}{shown} "
            f"lr {m['lr']:.4g} {m['throughput']:.0f} ex/s wall {m['wall_s']:.1f}s"
            + (f" {status}" if status != Status.COMPLETED else "")
            + "".join(f" {k} {m[k]:.4g}" for k in INSTRUMENT_METRICS if k in m))


def checkpoint_due(c, epoch: int, since_last_s: float) -> bool:
    """After epoch `epoch` (0-based): has the checkpoint cadence come round? (The last epoch always saves.)"""
    return bool((c.every_epochs and (epoch + 1) % c.every_epochs == 0) or (c.every_s and since_last_s >= c.every_s)
                or (epoch + 1) in c.at_epochs)


def _save_checkpoint(model, opt, scaler, state: dict, history: list[dict]) -> str:
    d = tempfile.mkdtemp(prefix="lb-ckpt-")
    # the unwrapped module: DDP's `module.` prefix would not load into a bare model
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "history": history, **state},
               os.path.join(d, CKPT_FILE))
    Path(d, HISTORY_FILE).write_text(json.dumps({"state": state, "history": history}))
    return d
