"""The throughput profile: each batch size's steady-state step time, measured alone before the search
(docs/design.md §9, issue #17).

Trials run side by side on shared CPUs, so their wall-clock says more about who else was running than about the
batch size. Before the search, one Ray task with one trial worker's resources (`tuner.cpus_per_worker` CPUs,
`torch.set_num_threads` to it, one GPU when the study uses them) runs a few hundred optimizer steps of each batch
size in the study, one batch size after another and nothing else of ours running: the study's task, model, data,
optimizer and precision, through the loop's pieces (tasks `build_data`, `config.resolve`, the loop's feed, autocast
and optimizer). Each batch gets at most `BUDGET_S` seconds and `MAX_STEPS` steps; the first steps (warm-up) are
dropped. With one CPU thread the step time is the median of each step's CPU time on its thread
(`time.thread_time`): the time the step takes alone, whatever else the OS runs meanwhile. On the demo machine (2
cores shared by several users, load 13-19) the wall-clock median of B=4096 moved 32% between two studies and even its
10th percentile moved 30% in a third, while the thread-CPU median stayed within 3% of a quiet measurement. With more
threads (CPU time adds up over them) or a GPU it is the 10th percentile of the wall-clock times (interference only
ever slows a step down). The wall-clock median and 10th percentile are kept beside it. The report projects each
recipe's training time as steps x step time (report/speed.py).

Measured results are cached under `<run root>/throughput/`, one file per key: task, model, data, precision,
optimizer, instruments, batch, worker count, CPUs/GPU and the machine (hostname, CPU count, torch version, GPU
name), so a second study on the same setup reuses them.

What is not profiled (the report then uses measured wall-clock, and says so): trials with more than one worker (a
one-worker profile leaves the all-reduce out), Ray Data tasks, `per_worker_batch_cap: auto`, the gradient noise
scale instrument (per-step work the profile does not do), and searched keys that change a step's cost (model, task,
data source, optimizer name, precision, ...).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import statistics
import time
from pathlib import Path
from typing import Any, Optional

VERSION = 3  # bump when the measurement changes: older cache files no longer match
BUDGET_S = 4.0  # per batch size, warm-up included
MAX_STEPS = 300
MIN_TIMED = 5  # timed steps kept after warm-up, even past the time budget
ARTIFACT = "throughput.json"
CACHE_DIR = "throughput"
# searched keys that leave a step's cost unchanged (the LR and its schedule, the budget, the seed, the evaluation
# subset, the batch itself: profiled per batch); any other searched key may change it, and the profile is skipped
_COST_FREE = ("data.global_batch_size", "data.train_subset", "data.eval_subset", "scaling.", "schedule.", "budget.",
              "optim.base_lr", "optim.base_batch_size", "seed", "checkpoint.", "report.")


def machine_fingerprint() -> dict[str, Any]:
    """The machine a profile was measured on (evaluated where the profile runs)."""
    import torch

    fp: dict[str, Any] = {"hostname": socket.gethostname(), "cpu_count": os.cpu_count(), "torch": torch.__version__}
    if torch.cuda.is_available():
        fp["gpu"] = torch.cuda.get_device_name(0)
    return fp


def setup_of(tree: dict, *, workers: int, cpus: int, use_gpu: bool) -> dict[str, Any]:
    """What a step's cost depends on, besides the batch and the machine: the trial config's parts that set the work
    per step (not the LR, schedule, budget or seed)."""
    data = tree["data"]
    return {"task": tree["task"], "model": tree["model"],
            "data": {k: data.get(k) for k in ("dataset", "path", "loader_workers", "per_worker_batch_cap")},
            "precision": tree["precision"],
            "optim": {k: v for k, v in tree["optim"].items() if k not in ("base_lr", "base_batch_size")},
            "instruments": tree.get("instruments"), "workers": workers, "cpus": cpus, "use_gpu": use_gpu}


def cache_key(setup: dict, batch: int, machine: dict) -> str:
    """The cache key of one batch size's profile: a hash of the setup, the batch, the machine and VERSION."""
    blob = json.dumps({"v": VERSION, "setup": setup, "batch": int(batch), "machine": machine}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def skip_reason(study) -> Optional[str]:
    """Why this study cannot be profiled (None: it can)."""
    from largebatch.tasks import task_of

    t, base = study.tuner, study.base
    if not t.profile:
        return "tuner.profile is false"
    if t.workers_per_trial > 1:
        return (f"{t.workers_per_trial} workers per trial: a one-worker profile would leave the all-reduce out, so "
                f"speeds are measured wall-clock")
    if task_of(base).ray_data is not None:
        return "a Ray Data task reads its training data through Ray Train's shards"
    if base.data.per_worker_batch_cap == "auto":
        return "per_worker_batch_cap auto: the micro-batch is chosen inside the trial"
    if base.instruments.grad_noise_scale:
        return "the grad_noise_scale instrument adds per-step work the profile does not do"
    entry = study.search.get("data.global_batch_size")
    if entry and next(iter(entry)) not in ("grid", "choice"):
        return "data.global_batch_size is sampled from a range: the batch sizes are not known before the search"
    costly = sorted(k for k in study.search if not any(k == p or (p.endswith(".") and k.startswith(p))
                                                      for p in _COST_FREE))
    if costly:
        return f"the search varies {', '.join(costly)}, which change(s) a step's cost beyond the batch size"
    return None


def study_batches(study, base_tree: dict, baseline_tree: dict) -> dict[int, dict]:
    """{global batch: the trial tree to profile it with}: the baseline's batch (its tree) and every searched
    data.global_batch_size (the base tree with that batch; the base's batch when the search does not vary it)."""
    from largebatch.config.search import SearchDomain

    entry = study.search.get("data.global_batch_size")
    batches = SearchDomain.of(entry).values() if entry else [base_tree["data"]["global_batch_size"]]
    out = {int(b): _with_batch(base_tree, b) for b in batches}
    if study.baseline is not None:
        b = int(baseline_tree["data"]["global_batch_size"])
        out[b] = _with_batch(baseline_tree, b)
    return dict(sorted(out.items()))


def _with_batch(tree: dict, batch: int) -> dict:
    return {**tree, "data": {**tree["data"], "global_batch_size": int(batch)}}


# ----------------------------------------------------------------------------- the measurement (in a Ray task)
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
    for k in range(rounds):
        for r in runners:
            wall, cpu = r.run(max_steps // rounds + (1 if k else 0), budget_s / rounds,
                              min_steps=-(-(MIN_TIMED + 2) // rounds) + (1 if k else 0))
            walls[r.batch] += wall[1:] if k else wall
            cpus_s[r.batch] += cpu[1:] if k else cpu
    # one CPU thread: the thread's CPU time is the step's time alone (time the OS gave other processes is not in
    # it); more threads or a GPU: the wall-clock's lower decile
    thread_time = device.type == "cpu" and int(cpus) == 1
    return [summarize(r.batch, walls[r.batch], per_worker_batch=r.res.per_worker_batch,
                      grad_accum_steps=r.res.grad_accum_steps, cpu_times=cpus_s[r.batch] if thread_time else None)
            for r in runners]


class _Runner:
    """One batch size's model, optimizer and endless stream of the loop's global batches."""

    def __init__(self, batch: int, cfg, res, task, data, device) -> None:
        import torch

        from largebatch.data.feed import make_feed
        from largebatch.optim import create_optimizer
        from largebatch.train.loop import _autocast

        self.batch, self.cfg, self.res, self.task, self.device = batch, cfg, res, task, device
        self.feed = make_feed(data.train, device, cfg.data.loader_workers, cfg.seed)
        torch.manual_seed(cfg.seed)
        self.model = task.model(cfg, data).to(device)
        self.model.train()
        o = cfg.optim
        self.opt = create_optimizer(self.model, o.name, res.peak_lr, weight_decay=o.weight_decay,
                                    momentum=o.momentum, nesterov=o.nesterov, betas=tuple(o.betas), eps=o.eps,
                                    trust_coefficient=o.trust_coefficient)
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

    def run(self, max_steps: int, budget_s: float, min_steps: int) -> tuple[list[float], list[float]]:
        """Up to max_steps optimizer steps, stopping once budget_s has passed (and min_steps are done); the time
        of each, in seconds: wall-clock and this thread's CPU time. The body is train/loop.py's step for one
        worker."""
        import torch

        from largebatch.train.loop import DIVERGENCE_CHECK_STEPS, apply_update

        task, opt, scaler, o = self.task, self.opt, self.scaler, self.cfg.optim
        accum, step_sums = self.res.grad_accum_steps, self.step_sums
        times: list[float] = []
        cpu: list[float] = []
        t_start = t0 = time.perf_counter()
        c0 = time.thread_time()
        for micro in self._stream:
            for xb, yb in micro:
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
            t0, c0 = t1, c1
            if len(times) >= max_steps or (t1 - t_start >= budget_s and len(times) >= min_steps):
                break
        return times, cpu


def _warm(n: int) -> int:
    """Warm-up steps dropped from n timed steps: a tenth, at least 2 and at most 10."""
    return min(10, max(2, n // 10))


def summarize(batch: int, times: list[float], *, per_worker_batch: int, grad_accum_steps: int,
              cpu_times: Optional[list[float]] = None) -> dict[str, Any]:
    """One batch size's profile entry from its per-step wall-clock times (seconds), warm-up dropped. The step time
    is the median of the steps' CPU times when given (one CPU thread: the time the step took alone), else the lower
    decile of the wall-clock times (interference only ever slows a step down). Both wall-clock figures stay."""
    drop = _warm(len(times)) if len(times) > MIN_TIMED else 0
    kept = times[drop:]
    q = statistics.quantiles(kept, n=10, method="inclusive") if len(kept) > 1 else [kept[0]] * 9
    cpu = statistics.median(cpu_times[drop:]) if cpu_times else None
    step_s = cpu if cpu is not None and cpu > 0 else q[0]
    return {"global_batch_size": int(batch), "per_worker_batch": per_worker_batch,
            "grad_accum_steps": grad_accum_steps, "step_s": step_s,
            "estimator": "thread_cpu_median" if step_s == cpu else "wall_p10",
            "examples_per_s": batch / step_s if step_s > 0 else math.inf,
            "step_s_cpu_median": cpu, "step_s_median": statistics.median(kept), "step_s_p10": q[0],
            "step_s_p90": q[-1], "steps_timed": len(kept), "warmup_steps": drop, "measured_s": sum(times)}


# ----------------------------------------------------------------------------- the driver side
def profile_study(study, base_tree: dict, baseline_tree: dict, run_root: str | Path) -> dict[str, Any]:
    """The study's profile: cached entries where the key matches, the rest measured now in one Ray task (ray.init
    done). Returns {"status": "measured"|"cached"|"off", "reason", "machine", "setup", "entries": [...]}."""
    reason = skip_reason(study)
    if reason is not None:
        return {"version": VERSION, "status": "off", "reason": reason, "entries": []}
    import ray

    t = study.tuner
    opts = {"num_cpus": t.cpus_per_worker, **({"num_gpus": 1} if t.use_gpu else {})}
    trees = study_batches(study, base_tree, baseline_tree)
    setup = setup_of(base_tree, workers=t.workers_per_trial, cpus=t.cpus_per_worker, use_gpu=t.use_gpu)
    machine = ray.get(ray.remote(**opts)(machine_fingerprint).remote())
    cache = Path(run_root) / CACHE_DIR
    entries, missing = {}, {}
    for b, tree in trees.items():
        hit = _read_cache(cache / f"{cache_key(setup, b, machine)}.json")
        if hit is not None:
            entries[b] = {**hit, "cached": True}
        else:
            missing[b] = tree
    if missing:
        t0 = time.time()
        # max_calls=1: the worker process exits afterwards, so the data it decoded is not held during the search
        measured = ray.get(ray.remote(max_calls=1, **opts)(measure).remote(
            missing, workers=t.workers_per_trial, cpus=t.cpus_per_worker, use_gpu=t.use_gpu))
        cache.mkdir(parents=True, exist_ok=True)
        for e in measured:
            key = cache_key(setup, e["global_batch_size"], machine)
            e = {**e, "key": key}
            _write_cache(cache / f"{key}.json", e)
            entries[e["global_batch_size"]] = {**e, "cached": False}
        print(f"[largebatch] throughput profile: {len(measured)} batch size(s) measured alone in "
              f"{time.time() - t0:.1f} s ({t.cpus_per_worker} CPU{'s' if t.cpus_per_worker > 1 else ''}"
              f"{' + 1 GPU' if t.use_gpu else ''}, cached under {cache})", flush=True)
    profile = {"version": VERSION, "status": "measured" if missing else "cached", "reason": None,
               "machine": machine, "setup": setup, "entries": [entries[b] for b in sorted(entries)]}
    print("[largebatch] " + describe(profile), flush=True)
    return profile


def _read_cache(path: Path) -> Optional[dict]:
    try:
        e = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return e if isinstance(e, dict) and isinstance(e.get("step_s"), (int, float)) and e["step_s"] > 0 else None


def _write_cache(path: Path, entry: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entry, indent=2) + "\n")
    os.replace(tmp, path)  # a reader never sees half a file


def describe(profile: Optional[dict]) -> str:
    """One line: the profile per batch size, or why there is none."""
    if not profile or profile.get("status") == "off":
        why = (profile or {}).get("reason") or "no profile"
        return f"throughput profile off ({why}): speeds are measured wall-clock"
    cells = [f"B={e['global_batch_size']} {e['step_s'] * 1000:.3g} ms/step ({e['examples_per_s']:.0f} ex/s)"
             for e in profile["entries"]]
    return f"throughput profile ({profile['status']}, measured alone): " + ", ".join(cells)


def log_profile(tracker, parent_id: str, profile: dict) -> None:
    """On the study's MLflow run: throughput.json, a param, and per batch size the metrics throughput_step_s and
    throughput_examples_per_s at step = the batch size (MLflow's chart of a metric is then against the batch)."""
    from mlflow.entities import Metric, Param

    ts = int(time.time() * 1000)
    metrics = [Metric(name, float(e[key]), ts, int(e["global_batch_size"]))
               for e in profile["entries"]
               for name, key in (("throughput_step_s", "step_s"), ("throughput_examples_per_s", "examples_per_s"))]
    params = [Param("throughput_profile", profile["status"] if profile["status"] == "off" else "on")]
    tracker.client.log_batch(parent_id, metrics=metrics, params=params)
    tracker.log_text(parent_id, json.dumps(profile, indent=2, default=str), ARTIFACT)


def logged_profile(client, parent_id: str) -> Optional[dict]:
    """The profile a study logged on its parent run (None when it logged none, e.g. an older study). client: an
    MlflowClient or a tracking URI."""
    import tempfile

    try:
        if isinstance(client, str):
            from largebatch.tracking import _client

            client = _client(client)
        with tempfile.TemporaryDirectory() as d:
            path = client.download_artifacts(parent_id, ARTIFACT, d)
            return json.loads(Path(path).read_text())
    except Exception:
        return None


def study_profile(study, tracker, parent_id: str, base_tree: dict, baseline_tree: dict, run_root: str,
                  resumed: bool) -> dict:
    """The driver's one call: a resumed study reads the profile it logged; a new one profiles and logs it."""
    if resumed:
        logged = logged_profile(tracker.client, parent_id)
        if logged is not None:
            print("[largebatch] " + describe(logged) + " (logged by the resumed study)", flush=True)
            return logged
    try:
        profile = profile_study(study, base_tree, baseline_tree, run_root)
    except Exception as e:  # the profile is an aid: the study goes on with measured wall-clock
        from largebatch.failures import describe as what

        profile = {"version": VERSION, "status": "off", "reason": f"the profile failed: {what(e)}",
                   "entries": []}
    if profile["status"] == "off":
        print("[largebatch] " + describe(profile), flush=True)
    try:
        log_profile(tracker, parent_id, profile)
    except Exception as e:  # e.g. a resumed run that already holds the param: the report still has the profile
        from largebatch.failures import describe as what

        print(f"[largebatch] the throughput profile could not be logged to MLflow: {what(e)}", flush=True)
    return profile
