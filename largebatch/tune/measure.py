"""The throughput profile's measurement: each batch size's steps timed alone (docs/design.md §9; tune/throughput.py
keys, caches and logs the result). One worker: `measure`, in one Ray task. Two or more workers per trial:
`collect` on every rank of one worker group joined by a process group (tune/group.py), the model wrapped in DDP as in
the trial, and `summarize_group` turns the ranks' times into one entry per batch size."""
from __future__ import annotations

import math
import statistics
import time
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    import torch

BUDGET_S = 4.0  # per batch size, warm-up included
MAX_STEPS = 300
MIN_TIMED = 5  # timed steps kept after warm-up, even past the time budget
ROUNDS = 4  # each batch size's steps are taken in this many slices, round-robin over the batch sizes


def measure(trees: dict[int, dict], *, workers: int, cpus: int, use_gpu: bool, budget_s: float = BUDGET_S,
            max_steps: int = MAX_STEPS, rounds: int = ROUNDS) -> list[dict]:
    """Profile the batch sizes in this process (one worker), one at a time (see `collect`). With one CPU thread the
    step time is the median of the steps' CPU time on this thread, else the wall-clock's lower decile."""
    raw = collect(trees, workers=workers, cpus=cpus, use_gpu=use_gpu, budget_s=budget_s, max_steps=max_steps,
                  rounds=rounds)
    # one CPU thread: the thread's CPU time is the step's time alone (time the OS gave other processes is not in
    # it); more threads or a GPU: the wall-clock's lower decile
    thread_time = not use_gpu and int(cpus) == 1
    return [summarize(b, r["wall"], per_worker_batch=r["per_worker_batch"], grad_accum_steps=r["grad_accum_steps"],
                      cpu_times=r["cpu"] if thread_time else None, input_times=r["fed"])
            for b, r in raw.items()]


def collect(trees: dict[int, dict], *, workers: int, cpus: int, use_gpu: bool, budget_s: float = BUDGET_S,
            max_steps: int = MAX_STEPS, rounds: int = ROUNDS, rank: int = 0) -> dict[int, dict[str, Any]]:
    """Each batch size's per-step times, measured in this process: a fresh model and optimizer per batch size, the
    loop's hot path (feed, autocast, forward, loss, backward, train-metric sums, optimizer step, the divergence
    check's sync every DIVERGENCE_CHECK_STEPS steps), each step timed alone. The steps are taken in `rounds`
    slices, round-robin over the batch sizes, so a slow spell of the machine (another user's job) falls on every
    batch size rather than on one; the first step of each later slice is dropped (it resumes a cold batch).

    With `workers` > 1 this runs on every rank of an initialised process group (tune/group.py): this rank's share
    of each global batch (global / workers), the model in DistributedDataParallel (its gradient all-reduce is in
    the step, as in the trial), the divergence check all-reduced, and every rank stopping at the same step (a
    one-flag all-reduce after each step, outside its timing). Returns {batch: {"wall", "cpu" (this thread's CPU),
    "proc" (the process's CPU: DDP's communication threads too), "fed" (producing the batches), seconds per step;
    "per_worker_batch", "grad_accum_steps"}}."""
    import torch

    from largebatch.config import parse_trial, resolve
    from largebatch.tasks import build_data, task_of

    torch.set_num_threads(max(1, int(cpus)))  # the trial worker's share, as on both trial paths (§8)
    device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
    first = parse_trial(next(iter(trees.values())), prefix="")
    task = task_of(first)
    data = build_data(task, first)  # one data build for every batch size (the batch does not change the data)
    runners = []
    for batch, tree in trees.items():
        cfg = parse_trial(tree, prefix="")
        res = resolve(cfg, workers, train_size=data.train_size)
        if res.steps_per_epoch >= 1:  # else no whole batch in the data: such a trial trains no step either
            runners.append(_Runner(batch, cfg, res, task, data, device, rank=rank, world=workers))
    out: dict[int, dict[str, Any]] = {r.batch: {"wall": [], "cpu": [], "proc": [], "fed": [],
                                                "per_worker_batch": r.res.per_worker_batch,
                                                "grad_accum_steps": r.res.grad_accum_steps} for r in runners}
    for k in range(rounds):
        for r in runners:
            got = r.run(max_steps // rounds + (1 if k else 0), budget_s / rounds,
                        min_steps=-(-(MIN_TIMED + 2) // rounds) + (1 if k else 0))
            for name, times in zip(("wall", "cpu", "proc", "fed"), got):
                out[r.batch][name] += times[1:] if k else times
    return out


def summarize_group(ranks: list[dict[int, dict[str, Any]]], *, cpus: int, use_gpu: bool, one_node: bool
                    ) -> list[dict]:
    """One entry per batch size from every rank's `collect`: the ranks stop together, so step i is the same step on
    each, and it ends when the slowest rank's ends (the all-reduce waits for it): per step, the largest time over the
    ranks. With one CPU thread per worker on one node the step time is the median of those steps' process CPU time
    (compute and DDP's all-reduce threads alike, not the time the OS gave other processes), else the wall-clock's
    lower decile."""
    cpu_time = not use_gpu and int(cpus) == 1 and one_node
    out = []
    for b in sorted(ranks[0]):
        per = [r[b] for r in ranks]
        n = min(len(p["wall"]) for p in per)
        if n == 0:
            continue
        worst = {k: [max(p[k][i] for p in per) for i in range(n)] for k in ("wall", "proc", "fed")}
        e = summarize(b, worst["wall"], per_worker_batch=per[0]["per_worker_batch"],
                      grad_accum_steps=per[0]["grad_accum_steps"], cpu_times=worst["proc"] if cpu_time else None,
                      input_times=worst["fed"])
        if e["estimator"] == "thread_cpu_median":
            e["estimator"] = "process_cpu_median"
        out.append({**e, "workers": len(ranks)})
    return out


class _Runner:
    """One batch size's model, optimizer and endless stream of the loop's global batches."""

    def __init__(self, batch: int, cfg, res, task, data, device, rank: int = 0, world: int = 1) -> None:
        import torch

        from largebatch.data.feed import make_feed
        from largebatch.optim import create_optimizer, optim_settings
        from largebatch.train.loop import _autocast

        self.batch, self.cfg, self.res, self.task, self.device = batch, cfg, res, task, device
        self.rank, self.world = rank, world
        self.feed = make_feed(data.train, device, cfg.data.loader_workers, cfg.seed, rank)
        torch.manual_seed(cfg.seed)
        self.model = task.model(cfg, data).to(device)
        self.model.train()
        # as train/loop.py: DDP over the process group when the trial has several workers
        self.net = self.model if world == 1 else torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[device.index] if device.type == "cuda" else None)  # None: DDP's default (CPU)
        o = cfg.optim
        self.opt = create_optimizer(self.model, o.name, res.peak_lr, **optim_settings(o))
        self.scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
        self.amp = _autocast(device, cfg.precision)
        self.train_metrics = [m for m in task.metrics if m.train]
        from largebatch.train.stepsums import StepSums

        self.step_sums = StepSums(self.train_metrics, device)
        self.steps = 0
        self._stream = self._batches()

    def _batches(self):
        from largebatch.data import epoch_permutation

        res, epoch = self.res, 0
        while True:  # epoch after epoch: a short epoch (small data, large batch) goes on with the next permutation
            n = res.steps_per_epoch * res.global_batch_size
            perm = epoch_permutation(res.train_size, self.cfg.seed, epoch)[:n]
            yield from self.feed.steps(perm, res.global_batch_size, self.rank, self.world, res.grad_accum_steps)
            epoch += 1

    def run(self, max_steps: int, budget_s: float, min_steps: int
            ) -> tuple[list[float], list[float], list[float], list[float]]:
        """Up to max_steps optimizer steps, stopping once budget_s has passed (and min_steps are done); the time
        of each, in seconds: wall-clock, this thread's CPU time, this process's CPU time, and the wall-clock spent
        producing its batches (the feed: index_select, or the DataLoader's fetch, and the copy to the device). The
        body is train/loop.py's step; with several ranks the stop is agreed after each step, outside its timing."""
        import contextlib

        import torch
        import torch.distributed as dist

        from largebatch.train.loop import DIVERGENCE_CHECK_STEPS, apply_update

        times: list[float] = []
        cpu: list[float] = []
        proc: list[float] = []
        inputs: list[float] = []
        no_context = contextlib.nullcontext()
        t_start = t0 = time.perf_counter()
        c0, p0 = time.thread_time(), time.process_time()
        while True:
            fed, loss = self._accumulate(no_context)
            apply_update(self.opt, self.scaler, self.model, self.cfg.optim.grad_clip_norm)
            self.steps += 1
            if self.steps % DIVERGENCE_CHECK_STEPS == 0:  # the loop's periodic flush and sync (+1 all-reduce)
                chk = torch.stack([self.step_sums.flush()[0], loss.detach().double()])
                if self.world > 1:
                    dist.all_reduce(chk, op=dist.ReduceOp.SUM)
                chk.tolist()
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            t1, c1, p1 = time.perf_counter(), time.thread_time(), time.process_time()
            times.append(t1 - t0)
            cpu.append(c1 - c0)
            proc.append(p1 - p0)
            inputs.append(fed)
            stop = len(times) >= max_steps or (t1 - t_start >= budget_s and len(times) >= min_steps)
            if self.world > 1:  # every rank stops at the same step: any rank's stop is everyone's (not timed)
                stop = self._agree(stop)
                t1, c1, p1 = time.perf_counter(), time.thread_time(), time.process_time()
            if stop:
                break
            t0, c0, p0 = t1, c1, p1
        return times, cpu, proc, inputs

    def _accumulate(self, no_context: AbstractContextManager) -> tuple[float, torch.Tensor]:
        """One global batch's forward and backward passes, micro-batch by micro-batch (gradients all-reduced on the
        last only): (the wall-clock spent producing its batches, the last micro-batch's loss)."""
        task, scaler, net = self.task, self.scaler, self.net
        accum, step_sums, world = self.res.grad_accum_steps, self.step_sums, self.world
        f0 = time.perf_counter()
        micro = iter(next(self._stream))
        fed = time.perf_counter() - f0
        i = 0
        while True:
            f0 = time.perf_counter()
            item = next(micro, None)
            fed += time.perf_counter() - f0
            if item is None:
                break
            xb, yb = item
            # gradients are all-reduced only on the last micro-step (DDP no_sync on the others), as in the loop
            with (no_context if world == 1 or i == accum - 1 else net.no_sync()):
                with self.amp:
                    out = net(xb)
                    loss = task.loss(out, yb)
                scaled = loss if accum == 1 else loss / accum
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            step_sums.add(loss.detach(), len(yb), out.detach(), yb)
            i += 1
        return fed, loss

    def _agree(self, stop: bool) -> bool:
        """This rank's stop flag all-reduced (max): every rank stops at the same step."""
        import torch
        import torch.distributed as dist

        flag = torch.tensor([float(stop)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def _warm(n: int) -> int:
    """Warm-up steps dropped from n timed steps: a tenth, at least 2 and at most 10."""
    return min(10, max(2, n // 10))


def summarize(batch: int, times: list[float], *, per_worker_batch: int, grad_accum_steps: int,
              cpu_times: Optional[list[float]] = None, input_times: Optional[list[float]] = None) -> dict[str, Any]:
    """One batch size's profile entry from its per-step wall-clock times (seconds), warm-up dropped. The step time
    is the median of the steps' CPU times when given (one CPU thread: the time the step took alone), else the lower
    decile of the wall-clock times (interference only ever slows a step down). Both wall-clock figures stay.
    input_times (each step's wall-clock producing its batches) give `input_share`, the input pipeline's share of the
    step's wall-clock over the kept steps, and `input_s` = input_share x step_s (None without them)."""
    drop = _warm(len(times)) if len(times) > MIN_TIMED else 0
    kept = times[drop:]
    q = statistics.quantiles(kept, n=10, method="inclusive") if len(kept) > 1 else [kept[0]] * 9
    cpu = statistics.median(cpu_times[drop:]) if cpu_times else None
    step_s = cpu if cpu is not None and cpu > 0 else q[0]
    share = min(1.0, sum(input_times[drop:]) / sum(kept)) if input_times and sum(kept) > 0 else None
    return {"global_batch_size": int(batch), "per_worker_batch": per_worker_batch,
            "grad_accum_steps": grad_accum_steps, "step_s": step_s,
            "estimator": "thread_cpu_median" if step_s == cpu else "wall_p10",
            "examples_per_s": batch / step_s if step_s > 0 else math.inf,
            "step_s_cpu_median": cpu, "step_s_median": statistics.median(kept), "step_s_p10": q[0],
            "step_s_p90": q[-1], "steps_timed": len(kept), "warmup_steps": drop, "measured_s": sum(times),
            "input_share": share, "input_s": share * step_s if share is not None else None}
