"""The per-worker training loop: one trial on one rank. Ray is not imported here.

`train_worker(res, ctx, data, task)` builds the task's data (largebatch/tasks; or takes it: tensors, a Dataset, this
rank's Ray Data shard) into feeds (data/feed.py), the model (the same seed on every rank) and the optimizer, wraps the
model in DDP when `ctx.world` > 1, finds the micro-batch for `data.per_worker_batch_cap: auto` (train/microbatch.py)
and resumes from `ctx.restore_dir`. Then, per epoch: the epoch's global batch (`res.phase_at_epoch`: constant, or
grown at `schedule.batch_ramp` milestones), cut from a permutation seeded by (seed, epoch) so the global batches are
the same for any worker count and accumulation; gradient accumulation (DDP all-reduces on the last micro-step only);
a divergence check every DIVERGENCE_CHECK_STEPS steps and at the epoch end (one scalar all-reduce); the evaluation;
the epoch's record (`epoch_metrics`, with the status, best_* and the target figures); a checkpoint on rank 0 at the
checkpoint cadence and when the trial ends: at its budget, on divergence, or at budget.target_val_acc with
budget.stop_at_target. It returns the last epoch's record.

`ctx` (a WorkerContext) supplies the rank, world size, device, restore checkpoint and the `report(metrics,
ckpt_dir)` callback every rank calls once per epoch: a Ray Train worker's (train/ray_worker.py) and an in-process
trial's (train/inprocess.py) log the epoch to MLflow (rank 0) and report it with the checkpoint, which storage may
refuse (train/persist.py); bench/ and unit tests pass their own. Semantics are docs/design.md §4; what a trial
records is §5 (the names: largebatch/vocab.py). Instruments (largebatch/instruments/hooks.py, `cfg.instruments`)
are hooks called at three marked places; off, they cost one empty-list test per micro-step.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from largebatch.config import Resolved
from largebatch.data import TensorData, epoch_permutation
from largebatch.data.feed import make_feed
from largebatch.instruments.hooks import EpochEnd, Hook, build_hooks
from largebatch.metrics import best_of
from largebatch.vocab import INSTRUMENT_METRICS, Status
from largebatch.optim import create_optimizer, optim_settings
from largebatch.tasks import Task, TaskData, build_data, task_of
from largebatch.train.stepsums import StepSums

CKPT_FILE = "state.pt"
HISTORY_FILE = "history.json"
# The divergence check costs one scalar all-reduce (and a CPU sync): every this many optimizer steps and at the end of
# each epoch, so a diverged trial stops within this many steps whatever the batch size.
DIVERGENCE_CHECK_STEPS = 16


@dataclass
class WorkerContext:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    restore_dir: Optional[str] = None  # a checkpoint directory to resume from
    # report(metrics, checkpoint_dir_or_None): called by EVERY rank once per epoch (Ray Train requires all ranks)
    report: Callable[[dict, Optional[str]], None] = lambda metrics, ckpt: None
    t_submit: Optional[float] = None  # time.time() when the driver asked for the trial: start-up is measured from it

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0


def _all_reduce_sum(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: torch.nn.Module, feed, task: Task, batch: int, ctx: WorkerContext,
             precision: str = "fp32") -> dict[str, float]:
    """val_loss and val_<metric> for each task metric on the full eval split, each rank taking a contiguous shard,
    reduced across ranks. The loss is weighted by the examples of each batch; a metric is the mean of its values."""
    was_training = model.training
    model.eval()
    n = len(feed)
    lo, hi = n * ctx.rank // ctx.world, n * (ctx.rank + 1) // ctx.world
    k = len(task.metrics)
    # loss_sum, examples, then (sum, count) per metric
    sums = torch.zeros(2 + 2 * k, dtype=torch.float64, device=ctx.device)
    for xb, yb in feed.eval_batches(lo, hi, batch):
        with _autocast(ctx.device, precision):
            out = model(xb)
        out = out.float()
        sums[0] += task.loss(out, yb).double() * len(yb)
        sums[1] += len(yb)
        for j, m in enumerate(task.metrics):
            v = m.fn(out, yb)
            sums[2 + 2 * j] += v.double().sum()
            sums[3 + 2 * j] += v.numel()
    _all_reduce_sum(sums, ctx.world)
    s = sums.tolist()  # sync point: once per evaluation
    model.train(was_training)
    out_metrics = {"val_loss": s[0] / max(s[1], 1)}
    for j, m in enumerate(task.metrics):
        out_metrics[f"val_{m.name}"] = s[2 + 2 * j] / max(s[3 + 2 * j], 1)
    return out_metrics


@torch.no_grad()
def replica_divergence(model: torch.nn.Module, world: int) -> float:
    """Max |w_rank_i - w_rank_j| over all parameters: 0.0 when DDP kept the replicas identical (2 all-reduces)."""
    flat = torch.cat([p.detach().flatten().double() for p in model.parameters()])
    if world == 1:
        return 0.0
    hi, lo = flat.clone(), flat.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return float((hi - lo).abs().max())


def _save_checkpoint(model, opt, scaler, state: dict, history: list[dict]) -> str:
    d = tempfile.mkdtemp(prefix="lb-ckpt-")
    # the unwrapped module: DDP's `module.` prefix would not load into a bare model
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "history": history, **state},
               os.path.join(d, CKPT_FILE))
    Path(d, HISTORY_FILE).write_text(json.dumps({"state": state, "history": history}))
    return d


def epoch_metrics(epoch: int, tot: list[float], train_metrics, val: dict[str, float], *, examples: int, lr: float,
                  global_batch: int, steps: int, examples_seen: int, train_s: float, epoch_s: float,
                  wall_s: float) -> dict[str, Any]:
    """One epoch's record (docs/design.md §5) from the all-reduced sums `tot` (loss sum, a sum per train metric,
    then a count per train metric) and the evaluation."""
    k = len(train_metrics)
    train = {f"train_{m.name}": tot[1 + j] / max(tot[1 + k + j], 1) for j, m in enumerate(train_metrics)}
    metrics: dict[str, Any] = {"epoch": epoch, "train_loss": tot[0] / max(examples, 1), **train,
                               "val_loss": val["val_loss"], **val}
    if train_metrics:
        m0 = train_metrics[0].name
        metrics["gen_gap"] = train[f"train_{m0}"] - val[f"val_{m0}"]
    metrics.update({"lr": lr, "global_batch_size": global_batch, "steps": steps, "examples_seen": examples_seen,
                    "wall_s": wall_s, "epoch_s": epoch_s, "throughput": examples / train_s if train_s > 0 else 0.0})
    return metrics


def epoch_line(m: dict[str, Any], epochs: int, task: Task) -> str:
    """The epoch's log line (rank 0): loss, the task's metrics, LR, throughput, wall-clock, instruments."""
    shown = "".join(f" {k} {m[k]:.4f}" for k in m if k.startswith(("train_", "val_")) and k not in
                    ("train_loss", "val_loss"))
    status = m.get("status", Status.COMPLETED.value)
    return (f"[largebatch] epoch {m['epoch'] + 1}/{epochs} step {m['steps']} loss {m['train_loss']:.4f}{shown} "
            f"lr {m['lr']:.4g} {m['throughput']:.0f} ex/s wall {m['wall_s']:.1f}s"
            + (f" {status}" if status != Status.COMPLETED else "")
            + "".join(f" {k} {m[k]:.4g}" for k in INSTRUMENT_METRICS if k in m))


def apply_update(opt, scaler, model: torch.nn.Module, grad_clip_norm: Optional[float]) -> None:
    """The optimizer step after the gradients are in: unscale (fp16), clip, step, clear."""
    if scaler is not None:
        scaler.unscale_(opt)
    if grad_clip_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)


def checkpoint_due(c, epoch: int, since_last_s: float) -> bool:
    """After epoch `epoch` (0-based): has the checkpoint cadence come round? (The last epoch always saves.)"""
    return bool((c.every_epochs and (epoch + 1) % c.every_epochs == 0) or (c.every_s and since_last_s >= c.every_s)
                or (epoch + 1) in c.at_epochs)


def train_worker(res: Resolved, ctx: WorkerContext, data: TaskData | TensorData | None = None,
                 task: Task | None = None) -> dict[str, Any]:
    """Run the trial on this rank; returns the final metrics (the same dict every rank reports last)."""
    cfg = res.cfg
    world, device = ctx.world, ctx.device
    t_setup = time.time()

    # ---- the task and its data: tensors stay on the device (index_select batches), a Dataset goes through a
    # DataLoader; either way the same global batches for any worker count and accumulation
    task = task or task_of(cfg)
    if data is None:
        data = build_data(task, cfg)
    elif isinstance(data, TensorData):  # in-memory classification tensors (bench/, tests)
        from largebatch.tasks.classification import from_tensors

        data = from_tensors(data)
    train_feed = make_feed(data.train, device, cfg.data.loader_workers, cfg.seed, ctx.rank)
    eval_feed = make_feed(data.eval, device, cfg.data.loader_workers)
    train_metrics = [m for m in task.metrics if m.train]
    probe_feed = train_feed if getattr(train_feed, "can_gather", True) else eval_feed  # for the probes below

    # ---- model and optimizer (the same seed on every rank: identical initial weights)
    torch.manual_seed(cfg.seed)
    model = task.model(cfg, data).to(device)
    auto: dict[str, int] = {}
    if cfg.data.per_worker_batch_cap == "auto":  # the largest micro-batch that fits, agreed by all ranks
        from largebatch.config import resolve
        from largebatch.train.microbatch import probe_micro_batch

        largest = max(p.per_worker_batch * p.grad_accum_steps for p in res.phases)
        cap = probe_micro_batch(model, task.loss, probe_feed.gather, largest, len(probe_feed),
                                lambda: _autocast(device, cfg.precision), cfg.data.auto_memory_mb, world)
        data_cfg = cfg.data.model_copy(update={"per_worker_batch_cap": cap})
        res = resolve(cfg.model_copy(update={"data": data_cfg}), world, train_size=res.train_size)
        auto = {"auto_micro_batch_cap": cap, "micro_batch": res.micro_batch, "grad_accum_steps": res.grad_accum_steps}
        if ctx.is_rank0:
            print(f"[largebatch] per_worker_batch_cap auto: {cap} fits; micro-batch {res.micro_batch} x "
                  f"{res.grad_accum_steps} accumulation steps per worker", flush=True)
    o = cfg.optim
    opt = create_optimizer(model, o.name, res.peak_lr, **optim_settings(o))
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    ddp: Optional[torch.nn.parallel.DistributedDataParallel] = None  # the DDP wrapper when world > 1
    if world > 1:
        device_ids = [device.index] if device.type == "cuda" else None  # None: DDP's own default (CPU, gloo)
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    net: torch.nn.Module = model if ddp is None else ddp

    # ---- instruments (largebatch/instruments/hooks.py): off by default; when on, they add device work but no sync
    # inside the micro-step loop
    hooks = build_hooks(cfg, res, model=model, net=net, opt=opt, world=world, device=device, probe_feed=probe_feed,
                        loss_fn=task.loss, is_rank0=ctx.is_rank0)
    step_hooks = [h for h in hooks if type(h).after_backward is not Hook.after_backward
                  or type(h).after_sync is not Hook.after_sync]

    # ---- resume: the checkpoint carries the schedule position; schedules are pure functions of the step
    start_epoch, step, wall_offset, history = 0, 0, 0.0, []
    # start-up and trial time of the earlier runs of this trial (a restart, or a resume from a pause at a sha rung),
    # up to their checkpoint: a trial's start-up counts every start
    startup_before, fit_before = 0.0, 0.0
    target: dict[str, Any] = {}
    if ctx.restore_dir:
        # weights_only: tensors and plain containers only, never arbitrary pickles (storage is untrusted input)
        ck = torch.load(os.path.join(ctx.restore_dir, CKPT_FILE), map_location=device, weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        start_epoch, step, wall_offset = ck["epoch"] + 1, ck["step"], ck["wall_s"]
        history, target = ck.get("history", []), ck.get("target", {})
        startup_before, fit_before = float(ck.get("startup_s", 0.0)), float(ck.get("fit_s", 0.0))

    status, reason, metrics = Status.COMPLETED.value, None, {}
    lr = float("nan")  # the LR last written to the optimizer
    no_context = contextlib.nullcontext()  # reusable: no context object made per step
    amp = _autocast(device, cfg.precision)
    t0 = t_ckpt = time.time()
    t_start = ctx.t_submit or t_setup
    startup_s = startup_before + (t0 - t_start)

    for epoch in range(start_epoch, res.epochs):
        # the batch of this epoch's phase (schedule.batch_ramp grows it at milestones; one phase without a ramp)
        phase = res.phase_at_epoch(epoch)
        B, accum, micro_batch = phase.global_batch_size, phase.grad_accum_steps, phase.per_worker_batch
        steps_now = min(phase.steps_per_epoch, res.total_steps - step)
        if steps_now <= 0:
            break
        lrs = [res.lr_at(s) for s in range(step, step + steps_now)]  # this epoch's LR per step, off the hot path
        # the same global batches whatever the worker count: a permutation seeded by (seed, epoch), cut per rank
        perm = epoch_permutation(res.train_size, cfg.seed, epoch)[: steps_now * B]
        if hasattr(train_feed, "set_epoch"):  # a Ray Data shard seeds its local shuffle per epoch
            train_feed.set_epoch(epoch)
        t_epoch = time.time()
        net.train()
        # loss_sum, then the sum per train metric, on the device (no .item() here); the counts are host integers
        step_sums = StepSums(train_metrics, device)
        steps_done = 0  # examples seen = steps_done * B over all ranks: counted here, not on the device
        for i_step, micro in enumerate(train_feed.steps(perm, B, ctx.rank, world, accum)):
            if lrs[i_step] != lr:
                lr = lrs[i_step]
                for g in opt.param_groups:
                    g["lr"] = lr
            for i, (xb, yb) in enumerate(micro):
                # gradients are all-reduced only on the last micro-step (DDP no_sync on the others)
                with (no_context if ddp is None or i == accum - 1 else ddp.no_sync()):
                    with amp:
                        out = net(xb)
                        loss = task.loss(out, yb)
                    # mean over the micro-batch / accum, then DDP averages over ranks: the loss is normalised by B
                    scaled = loss if accum == 1 else loss / accum
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                for h in step_hooks:  # e.g. the local micro-batch |g|^2 (device tensor, no sync)
                    h.after_backward(i, accum)
                # kept, not reduced: StepSums.flush() computes the train metrics and sums at the divergence check
                step_sums.add(loss.detach(), len(yb), out.detach(), yb)
            for h in step_hooks:  # e.g. |G_big|^2 of the all-reduced gradient, EMAs on device (no sync)
                h.after_sync(B, micro_batch)
            apply_update(opt, scaler, model, o.grad_clip_norm)
            step += 1
            steps_done += 1
            if step % DIVERGENCE_CHECK_STEPS == 0 or i_step + 1 == steps_now:
                # divergence check: a CPU sync point (+1 scalar all-reduce), all ranks decide together
                sums = step_sums.flush()
                chk = _all_reduce_sum(torch.stack([sums[0], loss.detach().double()]), world)
                running, last = chk.tolist()
                if not math.isfinite(running) or not math.isfinite(last):
                    status, reason = Status.DIVERGED.value, f"non-finite loss at step {step}"
                elif last / world > cfg.budget.divergence_loss:
                    status, reason = Status.DIVERGED.value, (f"loss {last / world:.3g} above budget.divergence_loss="
                                                  f"{cfg.budget.divergence_loss:g} at step {step}")
                if status == Status.DIVERGED:
                    break
        train_s = time.time() - t_epoch

        # sums and the metric counts of every rank in one all-reduce
        sums = step_sums.flush()  # empty after the last step's check unless the epoch had no step
        tot = _all_reduce_sum(torch.cat([sums, sums.new_tensor(step_sums.counts)]), world).tolist()  # once per epoch
        if status == Status.DIVERGED:
            val = {"val_loss": float("nan"), **{f"val_{m.name}": float("nan") for m in task.metrics}}
        else:
            val = evaluate(model, eval_feed, task, cfg.data.eval_batch_size, ctx, cfg.precision)
        metrics = epoch_metrics(epoch, tot, train_metrics, val, examples=steps_done * B, lr=lr, global_batch=B,
                                steps=step, examples_seen=res.examples_at(step), train_s=train_s,
                                epoch_s=time.time() - t_epoch, wall_s=wall_offset + (time.time() - t0))
        wall_s = metrics["wall_s"]
        val_acc = metrics.get("val_acc", float("nan"))
        if cfg.budget.target_val_acc is not None and not target and val_acc >= cfg.budget.target_val_acc:
            # measured at epoch ends (where val_acc is known); wall_s includes the evaluations so far
            target = {"time_to_target_s": wall_s, "steps_to_target": step,
                      "examples_to_target": res.examples_at(step)}
        history.append(metrics)
        # best over epochs of every eval metric, in its direction (best_val_acc, best_val_loss, best_val_<m>)
        best = {f"best_{k}": best_of((h[k] for h in history), mode) for k, mode in task.reported().items()
                if k.startswith("val_")}
        last_epoch = epoch + 1 >= res.epochs or step >= res.total_steps
        if target and cfg.budget.stop_at_target and status == Status.COMPLETED:
            status, reason = (Status.STOPPED_EARLY.value,
                              f"reached target val_acc {cfg.budget.target_val_acc} at step {step}")
        done = last_epoch or status != Status.COMPLETED
        if done:
            metrics["replica_divergence"] = replica_divergence(model, world)
        end = EpochEnd(epoch=epoch, lr=lr, done=done, diverged=status == Status.DIVERGED, is_rank0=ctx.is_rank0)
        for h in hooks:  # every rank calls every hook; rank-0-only work (sharpness) comes last, after all collectives
            metrics.update(h.epoch_end(end))
        metrics = {**metrics, **best, **auto, "status": status, "startup_s": startup_s, "fit_before_s": fit_before,
                   "is_final": done, "peak_lr": res.peak_lr, **target}
        if reason:
            metrics["reason"] = reason
        if ctx.is_rank0:
            print(epoch_line(metrics, res.epochs, task), flush=True)

        ckpt_dir = None
        if ctx.is_rank0 and (done or checkpoint_due(cfg.checkpoint, epoch, time.time() - t_ckpt)):
            state = {"epoch": epoch, "step": step, "wall_s": wall_s, "target": target, "startup_s": startup_s,
                     "fit_s": fit_before + (time.time() - t_start)}
            ckpt_dir = _save_checkpoint(model, opt, scaler, state, history)
            t_ckpt = time.time()
        ctx.report(metrics, ckpt_dir)
        if done:
            break
    return metrics
