"""The throughput profile's measurement, in one Ray task: each batch size's steps timed alone (docs/design.md §9;
tune/throughput.py keys, caches and logs the result)."""
from __future__ import annotations

import math
import statistics
import time
from typing import Any, Optional

BUDGET_S = 4.0  # per batch size, warm-up included
MAX_STEPS = 300
MIN_TIMED = 5  # timed steps kept after warm-up, even past the time budget
ROUNDS = 4  # each batch size's steps are taken in this many slices, round-robin over the batch sizes


def measure(trees: dict[int, dict], *, workers: int, cpus: int, use_gpu: bool, budget_s: float = BUDGET_S,
            max_steps: int = MAX_STEPS, rounds: int = ROUNDS) -> list[dict]:
    """Profile the batch sizes in this process, one at a time: a fresh model and optimizer per batch size, the
    loop's hot path (feed, autocast, forward, loss, backward, train-metric sums, optimizer step, the divergence
    check's sync every DIVERGENCE_CHECK_STEPS steps), each step timed alone. The steps are taken in `rounds`
    slices, round-robin over the batch sizes, so a slow spell of the machine (another user's job) falls on every
    batch size rather than on one; the first step of each later slice is dropped (it resumes a cold batch)."""
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
            runners.append(_Runner(batch, cfg, res, task, data, device))
    walls: dict[int, list[float]] = {r.batch: [] for r in runners}
    cpus_s: dict[int, list[float]] = {r.batch: [] for r in runners}
    fed: dict[int, list[float]] = {r.batch: [] for r in runners}
    for k in range(rounds):
        for r in runners:
            wall, cpu, inp = r.run(max_steps // rounds + (1 if k else 0), budget_s / rounds,
                                   min_steps=-(-(MIN_TIMED + 2) // rounds) + (1 if k else 0))
            walls[r.batch] += wall[1:] if k else wall
            cpus_s[r.batch] += cpu[1:] if k else cpu
            fed[r.batch] += inp[1:] if k else inp
    # one CPU thread: the thread's CPU time is the step's time alone (time the OS gave other processes is not in
    # it); more threads or a GPU: the wall-clock's lower decile
    thread_time = device.type == "cpu" and int(cpus) == 1
    return [summarize(r.batch, walls[r.batch], per_worker_batch=r.res.per_worker_batch,
                      grad_accum_steps=r.res.grad_accum_steps, cpu_times=cpus_s[r.batch] if thread_time else None,
                      input_times=fed[r.batch])
            for r in runners]


class _Runner:
    """One batch size's model, optimizer and endless stream of the loop's global batches."""

    def __init__(self, batch: int, cfg, res, task, data, device) -> None:
        import torch

        from largebatch.data.feed import make_feed
        from largebatch.optim import create_optimizer, optim_settings
        from largebatch.train.loop import _autocast

        self.batch, self.cfg, self.res, self.task, self.device = batch, cfg, res, task, device
        self.feed = make_feed(data.train, device, cfg.data.loader_workers, cfg.seed)
        torch.manual_seed(cfg.seed)
        self.model = task.model(cfg, data).to(device)
        self.model.train()
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
            perm = epoch_permutation(res.train_size, self.cfg.seed, epoch)[: res.steps_per_epoch * res.global_batch_size]
            yield from self.feed.steps(perm, res.global_batch_size, 0, 1, res.grad_accum_steps)
            epoch += 1

    def run(self, max_steps: int, budget_s: float, min_steps: int) -> tuple[list[float], list[float], list[float]]:
        """Up to max_steps optimizer steps, stopping once budget_s has passed (and min_steps are done); the time
        of each, in seconds: wall-clock, this thread's CPU time, and the wall-clock spent producing its batches
        (the feed: index_select, or the DataLoader's fetch, and the copy to the device). The body is
        train/loop.py's step for one worker."""
        import torch

        from largebatch.train.loop import DIVERGENCE_CHECK_STEPS, apply_update

        task, opt, scaler, o = self.task, self.opt, self.scaler, self.cfg.optim
        accum, step_sums = self.res.grad_accum_steps, self.step_sums
        times: list[float] = []
        cpu: list[float] = []
        inputs: list[float] = []
        t_start = t0 = time.perf_counter()
        c0 = time.thread_time()
        while True:
            f0 = time.perf_counter()
            micro = iter(next(self._stream))
            fed = time.perf_counter() - f0
            while True:
                f0 = time.perf_counter()
                item = next(micro, None)
                fed += time.perf_counter() - f0
                if item is None:
                    break
                xb, yb = item
                with self.amp:
                    out = self.model(xb)
                    loss = task.loss(out, yb)
                scaled = loss if accum == 1 else loss / accum
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
                step_sums.add(loss.detach(), len(yb), out.detach(), yb)
            apply_update(opt, scaler, self.model, o.grad_clip_norm)
            self.steps += 1
            if self.steps % DIVERGENCE_CHECK_STEPS == 0:  # the loop's periodic flush and sync
                torch.stack([step_sums.flush()[0], loss.detach().double()]).tolist()
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            t1, c1 = time.perf_counter(), time.thread_time()
            times.append(t1 - t0)
            cpu.append(c1 - c0)
            inputs.append(fed)
            t0, c0 = t1, c1
            if len(times) >= max_steps or (t1 - t_start >= budget_s and len(times) >= min_steps):
                break
        return times, cpu, inputs


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
