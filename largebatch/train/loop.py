"""The per-worker training loop: one trial on one rank. Ray is not imported here.

`train_worker(res, ctx, data, task)` reads as a page of phases: `_set_up_data` builds the task's data
(largebatch/tasks; or takes it: tensors, a Dataset, this rank's Ray Data shard) into feeds (data/feed.py);
`_set_up_model` builds the model (the same seed on every rank) and the optimizer, finds the micro-batch for
`data.per_worker_batch_cap: auto` (train/microbatch.py), wraps the model in DDP when `ctx.world` > 1 and lists the
instruments; `_resume` restores from `ctx.restore_dir`. Then, per epoch, `_train_epoch`: the epoch's global batch
(`res.phase_at_epoch`: constant, or grown at `schedule.batch_ramp` milestones), cut from a permutation seeded by
(seed, epoch) so the global batches are the same for any worker count and accumulation; gradient accumulation (DDP
all-reduces on the last micro-step only); every DIVERGENCE_CHECK_STEPS steps and at the epoch's last, the losses
all-reduced (one scalar all-reduce) and Event.CHECK. And `_end_epoch`: the evaluation, the epoch's record
(`epoch_metrics`), Event.EPOCH_END, the instruments, the complete record (status, best_*, the target figures) and
Event.RECORDED. The events' handlers (train/events.py) are divergence; the target figures, the best values and stop
at budget.target_val_acc with budget.stop_at_target; the log line, the checkpoint on rank 0 (at the checkpoint
cadence and when the trial ends: at its budget, on divergence or at the target) and the report. A handler ends the
trial by returning a Stop (its status and reason). `train_worker` returns the last epoch's record.

`ctx` (a WorkerContext) supplies the rank, world size, device, restore checkpoint and the `report(metrics,
ckpt_dir)` callback every rank calls once per epoch: the trial runner's (train/runner.py, for a Ray Train worker,
train/ray_worker.py, and an in-process trial, train/inprocess.py) logs the epoch to MLflow (rank 0) and reports it
with the checkpoint, which storage may refuse (train/persist.py); bench/ and unit tests pass their own. Semantics
are docs/design.md §4; what a trial records is §5 (the names: largebatch/vocab.py). Instruments
(largebatch/instruments/hooks.py, `cfg.instruments`) are hooks called at three marked places; off, they cost one
empty-list test per micro-step.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Optional

import torch
import torch.distributed as dist

from largebatch.config import Resolved
from largebatch.data import TensorData, epoch_permutation
from largebatch.data.feed import make_feed
from largebatch.instruments.hooks import EpochEnd, Hook, build_hooks
from largebatch.optim import create_optimizer, optim_settings
from largebatch.tasks import Metric, Task, TaskData, build_data, task_of
from largebatch.train.events import CKPT_FILE, Event, State, fire
from largebatch.train.stepsums import StepSums
from largebatch.vocab import Status

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



@dataclass
class Setup:
    """What the set-up built for the epochs: the loop's own (the event handlers see `State`)."""
    train_feed: Any
    eval_feed: Any
    train_metrics: list[Metric]
    net: torch.nn.Module  # the model, or its DDP wrapper when world > 1
    ddp: Optional[torch.nn.parallel.DistributedDataParallel]
    hooks: list[Hook]
    step_hooks: list[Hook]  # the instruments with work in the micro-step loop
    amp: Any  # the precision's autocast context, reused every step
    no_context: contextlib.nullcontext = field(default_factory=contextlib.nullcontext)  # reusable: none made per step


class EpochRun(NamedTuple):
    """What an epoch's steps leave for its end."""
    step_sums: StepSums
    steps_done: int  # examples seen = steps_done * global_batch over all ranks: counted here, not on the device
    global_batch: int
    t_epoch: float
    train_s: float


def train_worker(res: Resolved, ctx: WorkerContext, data: TaskData | TensorData | None = None,
                 task: Task | None = None) -> dict[str, Any]:
    """Run the trial on this rank; returns the final metrics (the same dict every rank reports last).

    The phases in order: the data, the model and optimizer (with the instruments), the resume, then each epoch's
    steps (`_train_epoch`) and end (`_end_epoch`, which fires the events) until the trial ends."""
    t_setup = time.time()
    task = task or task_of(res.cfg)
    data, train_feed, eval_feed, probe_feed = _set_up_data(res, ctx, data, task)
    st, kit = _set_up_model(res, ctx, task, data, train_feed, eval_feed, probe_feed)
    start_epoch = _resume(st)
    st.t0 = st.t_ckpt = time.time()
    st.t_start = ctx.t_submit or t_setup
    st.startup_s = st.startup_before + (st.t0 - st.t_start)
    for epoch in range(start_epoch, st.res.epochs):
        run = _train_epoch(st, kit, epoch)
        if run is None or _end_epoch(st, kit, epoch, run):
            break
    return st.metrics


def _set_up_data(res: Resolved, ctx: WorkerContext, data: TaskData | TensorData | None,
                 task: Task) -> tuple[TaskData, Any, Any, Any]:
    """(data, train feed, eval feed, probe feed). Tensors stay on the device (index_select batches), a Dataset goes
    through a DataLoader; either way the same global batches for any worker count and accumulation."""
    cfg, device = res.cfg, ctx.device
    if data is None:
        data = build_data(task, cfg)
    elif isinstance(data, TensorData):  # in-memory classification tensors (bench/, tests)
        from largebatch.tasks.classification import from_tensors

        data = from_tensors(data)
    train_feed = make_feed(data.train, device, cfg.data.loader_workers, cfg.seed, ctx.rank)
    eval_feed = make_feed(data.eval, device, cfg.data.loader_workers)
    probe_feed = train_feed if getattr(train_feed, "can_gather", True) else eval_feed  # for the probes
    return data, train_feed, eval_feed, probe_feed


def _set_up_model(res: Resolved, ctx: WorkerContext, task: Task, data: TaskData, train_feed, eval_feed,
                  probe_feed) -> tuple[State, Setup]:
    """The model (the same seed on every rank: identical initial weights), the micro-batch of
    `per_worker_batch_cap: auto`, the optimizer, DDP when world > 1, and the instruments."""
    cfg, world, device = res.cfg, ctx.world, ctx.device
    torch.manual_seed(cfg.seed)
    model = task.model(cfg, data).to(device)
    auto: dict[str, int] = {}
    if cfg.data.per_worker_batch_cap == "auto":
        res, auto = _auto_micro_batch(res, ctx, task, model, probe_feed)
    o = cfg.optim
    opt = create_optimizer(model, o.name, res.peak_lr, **optim_settings(o))
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    ddp: Optional[torch.nn.parallel.DistributedDataParallel] = None  # the DDP wrapper when world > 1
    if world > 1:
        device_ids = [device.index] if device.type == "cuda" else None  # None: DDP's own default (CPU, gloo)
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    net: torch.nn.Module = model if ddp is None else ddp
    # the instruments (largebatch/instruments/hooks.py): off by default; when on, they add device work but no sync
    # inside the micro-step loop
    hooks = build_hooks(cfg, res, model=model, net=net, opt=opt, world=world, device=device, probe_feed=probe_feed,
                        loss_fn=task.loss, is_rank0=ctx.is_rank0)
    step_hooks = [h for h in hooks if type(h).after_backward is not Hook.after_backward
                  or type(h).after_sync is not Hook.after_sync]
    st = State(cfg=cfg, res=res, ctx=ctx, task=task, model=model, opt=opt, scaler=scaler, auto=auto)
    kit = Setup(train_feed=train_feed, eval_feed=eval_feed, train_metrics=[m for m in task.metrics if m.train],
                net=net, ddp=ddp, hooks=hooks, step_hooks=step_hooks, amp=_autocast(device, cfg.precision))
    return st, kit


def _auto_micro_batch(res: Resolved, ctx: WorkerContext, task: Task, model: torch.nn.Module,
                      probe_feed) -> tuple[Resolved, dict[str, int]]:
    """The largest micro-batch that fits, agreed by all ranks, and the trial resolved again with it."""
    from largebatch.config import resolve
    from largebatch.train.microbatch import probe_micro_batch

    cfg, device = res.cfg, ctx.device
    largest = max(p.per_worker_batch * p.grad_accum_steps for p in res.phases)
    cap = probe_micro_batch(model, task.loss, probe_feed.gather, largest, len(probe_feed),
                            lambda: _autocast(device, cfg.precision), cfg.data.auto_memory_mb, ctx.world)
    data_cfg = cfg.data.model_copy(update={"per_worker_batch_cap": cap})
    res = resolve(cfg.model_copy(update={"data": data_cfg}), ctx.world, train_size=res.train_size)
    auto = {"auto_micro_batch_cap": cap, "micro_batch": res.micro_batch, "grad_accum_steps": res.grad_accum_steps}
    if ctx.is_rank0:
        print(f"[largebatch] per_worker_batch_cap auto: {cap} fits; micro-batch {res.micro_batch} x "
              f"{res.grad_accum_steps} accumulation steps per worker", flush=True)
    return res, auto


def _resume(st: State) -> int:
    """From `ctx.restore_dir`, if any: the weights, the optimizer (and scaler) state and where the trial stood (the
    checkpoint carries the schedule position; schedules are pure functions of the step). Returns the first epoch."""
    ctx = st.ctx
    if not ctx.restore_dir:
        return 0
    # weights_only: tensors and plain containers only, never arbitrary pickles (storage is untrusted input)
    ck = torch.load(os.path.join(ctx.restore_dir, CKPT_FILE), map_location=ctx.device, weights_only=True)
    st.model.load_state_dict(ck["model"])
    st.opt.load_state_dict(ck["optimizer"])
    if st.scaler is not None and ck.get("scaler"):
        st.scaler.load_state_dict(ck["scaler"])
    st.step, st.wall_offset = ck["step"], ck["wall_s"]
    st.history, st.target = ck.get("history", []), ck.get("target", {})
    st.startup_before, st.fit_before = float(ck.get("startup_s", 0.0)), float(ck.get("fit_s", 0.0))
    return ck["epoch"] + 1


def _train_epoch(st: State, kit: Setup, epoch: int) -> Optional[EpochRun]:
    """The epoch's optimizer steps, Event.CHECK every DIVERGENCE_CHECK_STEPS of them and at the last; None when the
    budget has no step left."""
    res, ctx, task = st.res, st.ctx, st.task
    # the batch of this epoch's phase (schedule.batch_ramp grows it at milestones; one phase without a ramp)
    phase = res.phase_at_epoch(epoch)
    B, accum, micro_batch = phase.global_batch_size, phase.grad_accum_steps, phase.per_worker_batch
    step, lr, world = st.step, st.lr, ctx.world
    steps_now = min(phase.steps_per_epoch, res.total_steps - step)
    if steps_now <= 0:
        return None
    lrs = [res.lr_at(s) for s in range(step, step + steps_now)]  # this epoch's LR per step, off the hot path
    # the same global batches whatever the worker count: a permutation seeded by (seed, epoch), cut per rank
    perm = epoch_permutation(res.train_size, st.cfg.seed, epoch)[: steps_now * B]
    train_feed, net, ddp, amp, no_context, step_hooks = (kit.train_feed, kit.net, kit.ddp, kit.amp, kit.no_context,
                                                         kit.step_hooks)
    opt, scaler, model, clip = st.opt, st.scaler, st.model, st.cfg.optim.grad_clip_norm
    if hasattr(train_feed, "set_epoch"):  # a Ray Data shard seeds its local shuffle per epoch
        train_feed.set_epoch(epoch)
    t_epoch = time.time()
    net.train()
    # loss_sum, then the sum per train metric, on the device (no .item() here); the counts are host integers
    step_sums = StepSums(kit.train_metrics, ctx.device)
    steps_done = 0
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
        apply_update(opt, scaler, model, clip)
        step += 1
        steps_done += 1
        if step % DIVERGENCE_CHECK_STEPS == 0 or i_step + 1 == steps_now:
            # the divergence check: a CPU sync point (+1 scalar all-reduce), all ranks decide together
            sums = step_sums.flush()
            running, last = _all_reduce_sum(torch.stack([sums[0], loss.detach().double()]), world).tolist()
            st.step, st.losses = step, (running, last)
            if fire(Event.CHECK, st):
                break
    st.step, st.lr = step, lr
    return EpochRun(step_sums, steps_done, B, t_epoch, time.time() - t_epoch)


def _end_epoch(st: State, kit: Setup, epoch: int, run: EpochRun) -> bool:
    """The epoch's record, Event.EPOCH_END, the instruments, then the complete record and Event.RECORDED; True when
    the trial ends here (its budget, divergence, or stop at target)."""
    res, ctx, cfg = st.res, st.ctx, st.cfg
    # sums and the metric counts of every rank in one all-reduce
    sums = run.step_sums.flush()  # empty after the last step's check unless the epoch had no step
    tot = _all_reduce_sum(torch.cat([sums, sums.new_tensor(run.step_sums.counts)]), ctx.world).tolist()  # once
    if st.status == Status.DIVERGED:
        val = {"val_loss": float("nan"), **{f"val_{m.name}": float("nan") for m in st.task.metrics}}
    else:
        val = evaluate(st.model, kit.eval_feed, st.task, cfg.data.eval_batch_size, ctx, cfg.precision)
    metrics = epoch_metrics(epoch, tot, kit.train_metrics, val, examples=run.steps_done * run.global_batch, lr=st.lr,
                            global_batch=run.global_batch, steps=st.step, examples_seen=res.examples_at(st.step),
                            train_s=run.train_s, epoch_s=time.time() - run.t_epoch,
                            wall_s=st.wall_offset + (time.time() - st.t0))
    st.epoch, st.metrics, st.wall_s = epoch, metrics, metrics["wall_s"]
    st.history.append(metrics)
    fire(Event.EPOCH_END, st)  # the target figures, the best values, stop at target
    done = epoch + 1 >= res.epochs or st.step >= res.total_steps or st.status != Status.COMPLETED
    if done:
        metrics["replica_divergence"] = replica_divergence(st.model, ctx.world)
    end = EpochEnd(epoch=epoch, lr=st.lr, done=done, diverged=st.status == Status.DIVERGED, is_rank0=ctx.is_rank0)
    for h in kit.hooks:  # every rank calls every hook; rank-0-only work (sharpness) comes last, after all collectives
        metrics.update(h.epoch_end(end))
    st.metrics = {**metrics, **st.best, **st.auto, "status": st.status, "startup_s": st.startup_s,
                  "fit_before_s": st.fit_before, "is_final": done, "peak_lr": res.peak_lr, **st.target}
    if st.reason:
        st.metrics["reason"] = st.reason
    st.done = done
    fire(Event.RECORDED, st)  # the log line, the checkpoint, the report
    return done
