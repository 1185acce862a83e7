"""`largebatch probe STUDY.yaml`: the gradient noise scale B_noise (B_simple, instruments/noise_scale.py) of the
study, measured on a short run of its baseline, printed with its uncertainty, and cached for `tune` (docs/design.md
§11). `search: {data.global_batch_size: {around_critical: [..]}}` places its grid from this estimate
(tune/critical.py).

The probe runs the study's own loop (train/loop.py `train_worker`) IN THIS PROCESS, one worker, no Ray: a probe is
one short 1-worker run, where a Ray head and a Train worker group would cost more start-up (docs/design.md §8: 12-14 s
to the first line of the worker loop on 2 cores) than the probe trains, and 1 worker loses nothing (B_noise is a
property of the gradient, not of the worker count). It trains the baseline (else base) config with the instrument on,
`--epochs` epochs on the first `--train-subset` examples, with two micro-batches per step (accumulation 2: the
instrument needs two batch sizes per step with one worker), at `--batch` (default: the baseline's batch, at least
MIN_PROBE_BATCH; the LR follows from the baseline's by the square-root rule): each step's estimate of |G|² is noisy
by about B_noise/B, so a small baseline batch leaves |G|² unresolved where a larger one resolves it in a few steps.
The EMA of each epoch's end is one value; the estimate is the mean ± the standard deviation over the last half of
the epochs (the first ones are the fast early descent, where B_noise is still growing). B_noise grows during
training, so an early probe is on the small side of the critical batch of a whole run: the around_critical factors
are there to bracket it.

The cache is `<runs>/noise_scale/<study>-<hash>.json`, keyed by the task, model, data and optimizer of the trial the
probe starts from (the probe's own settings are stored inside): `probe` always measures and writes it, `tune` reads
it and probes with the default settings only when it is missing.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import stat
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional, TypeGuard

from largebatch.config import StudyConfig, TrialConfig, apply_overrides, baseline_trial, parse_trial, resolve
from largebatch.errors import BadInput

CACHE_DIR = "noise_scale"
# Each step's estimate of |G|² is noisy by about B_noise/B relative to |G|²: at B=16 on Fashion-MNIST the smoothed
# |G|² went <= 0 (B_simple undefined) in some epoch of each of 4 probes; at 128 and 256 never (6 probes, §11).
MIN_PROBE_BATCH = 256


@dataclass(frozen=True)
class ProbeSettings:
    epochs: int = 8
    train_subset: int = 20000  # 0: the whole training set
    ema: float = 0.98  # per-step EMA decay: each end-of-epoch value weighs the last ~50 steps
    batch: Optional[int] = None  # None: the baseline's batch, at least MIN_PROBE_BATCH
    seed: Optional[int] = None  # None: the study's seed


def _start(study: StudyConfig, source: str) -> TrialConfig:
    return baseline_trial(study, source) if study.baseline is not None else study.base


def cache_key(study: StudyConfig, source: str = "<study>") -> str:
    """A hash of the task, model, data and optimizer settings of the trial the probe starts from."""
    tree = _start(study, source).model_dump(mode="json")
    keyed = {k: tree[k] for k in ("task", "model", "data", "optim")}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]


def cache_path(study: StudyConfig, run_root: str | Path, source: str = "<study>") -> Path:
    return Path(run_root) / CACHE_DIR / f"{study.name}-{cache_key(study, source)}.json"


CACHE_MAX_BYTES = 1 << 20  # a cache file we wrote is a few KB; anything larger is not ours


def read_cache_json(path: Path, max_bytes: int = CACHE_MAX_BYTES) -> Any:
    """The JSON value of a cache file (this module's and tune/throughput.py's), or None when it is missing, not a
    regular file (a symlink, a FIFO, a device: never followed, never waited on), larger than max_bytes, or not
    JSON. Cache files are JSON only: nothing read back is ever unpickled."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            return None
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nesting too deep for the parser
        return None


def _number(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _count(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def load_cached(path: Path) -> Optional[dict[str, Any]]:
    """The cached estimate, or None when there is none, or it is unreadable or not what save_estimate writes (it
    is measured again): every field `tune` and format_estimate read is checked for its type and range."""
    est = read_cache_json(path)
    if not isinstance(est, dict):
        return None
    per, std, k = est.get("per_epoch"), est.get("b_noise_std"), est.get("tail_epochs")
    ok = (_number(est.get("b_noise")) and math.isfinite(est["b_noise"]) and est["b_noise"] > 0
          and (std is None or (_number(std) and math.isfinite(std) and std >= 0))
          and isinstance(per, list) and all(_number(v) for v in per) and _count(k) and k <= len(per)
          and isinstance(est.get("tail", []), list) and isinstance(est.get("settings", {}), dict)
          and all(_count(est.get(f)) for f in ("global_batch_size", "micro_batch", "train_size"))
          and _number(est.get("probe_s")) and math.isfinite(est["probe_s"]) and est["probe_s"] >= 0)
    return est if ok else None


def probe_trial(study: StudyConfig, source: str, settings: ProbeSettings, train_size: int) -> TrialConfig:
    """The trial the probe runs: the baseline (else base), short, on a subset, at the probe batch (its LR scaled
    from the baseline's peak LR by the square-root rule), with the noise-scale instrument on and accumulation 2
    (one worker, two batch sizes per step)."""
    cfg = _start(study, source)
    n = min(train_size, settings.train_subset or train_size)
    b0 = cfg.data.global_batch_size
    if not isinstance(b0, int):  # "full" kept (the search varies the data): no batch size to carry the LR from
        where = "base" if study.baseline is None else "baseline"
        raise BadInput("the probe needs the batch it starts from as a number of examples, not 'full'",
                       source=source, field=f"{where}.data.global_batch_size")
    batch = settings.batch or min(max(b0, MIN_PROBE_BATCH), n - n % 2)
    if batch % 2 or batch > n:
        raise BadInput(f"got {batch}; the probe splits each step into 2 micro-batches: use an even batch of at most "
                       f"{n} (the probe's training examples)", source=source, field="--batch")
    over: dict[str, Any] = {
        "budget.epochs": settings.epochs, "budget.target_val_acc": None, "budget.stop_at_target": False,
        "instruments.grad_noise_scale": True, "instruments.noise_scale_ema": settings.ema,
        "instruments.sharpness": False, "instruments.sharpness_every_epochs": None,
        "data.train_subset": settings.train_subset or None, "schedule.batch_ramp.milestones": [],
        "data.per_worker_batch_cap": None, "data.grad_accum_steps": 2, "data.global_batch_size": batch,
    }
    if batch != b0:  # the baseline's own LR at its batch, carried to the probe batch by the sqrt rule
        peak = resolve(cfg, 1, train_size=min(train_size, cfg.data.train_subset or train_size), source=source).peak_lr
        over.update({"optim.base_lr": peak, "optim.base_batch_size": b0, "scaling.rule": "sqrt"})
    if settings.seed is not None:
        over["seed"] = settings.seed
    tree = cfg.model_dump()
    over = {k: v for k, v in over.items() if _has(tree, k)}  # a key this version's schema lacks is left out
    return parse_trial(apply_overrides(tree, over), source=source, prefix="probe.")


def _has(tree: dict, dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def run_probe(study: StudyConfig, source: str, settings: ProbeSettings = ProbeSettings(),
              threads: Optional[int] = None) -> dict[str, Any]:
    """Train the probe trial here and return the estimate (see the module doc). BadInput when B_noise did not
    resolve (a diverged run, |G|² not yet resolved): the line says to probe longer."""
    import torch

    from largebatch.tasks import build_data, task_of, train_size
    from largebatch.train.loop import WorkerContext, train_worker

    start = _start(study, source)
    task = task_of(start)
    n = train_size(task, start)
    if settings.train_subset >= n:  # as many as there are, or more: the whole set
        settings = replace(settings, train_subset=0)
    cfg = probe_trial(study, source, settings, n)
    res = resolve(cfg, 1, train_size=min(n, cfg.data.train_subset or n), source=source, prefix="probe.")
    reports: list[dict[str, Any]] = []

    def report(metrics: dict, ckpt_dir: Optional[str]) -> None:
        reports.append(metrics)
        if ckpt_dir:
            shutil.rmtree(ckpt_dir, ignore_errors=True)

    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads or study.tuner.cpus_per_worker)))
    t0 = time.time()
    try:
        train_worker(res, WorkerContext(report=report), build_data(task, cfg), task)
    finally:
        torch.set_num_threads(old_threads)
    values = [float(m["grad_noise_scale"]) for m in reports if "grad_noise_scale" in m]
    tail = [v for v in values[len(values) // 2:] if math.isfinite(v) and v > 0]  # NaN: |G|² not resolved
    if not tail:
        status = reports[-1].get("status") if reports else "no epoch"
        raise BadInput(f"the probe did not resolve B_noise (per-epoch values {values}, status {status}); probe "
                       f"longer (--epochs, --train-subset) or check that the baseline trains", source=source,
                       field="instruments.grad_noise_scale")
    return {
        "b_noise": statistics.fmean(tail), "b_noise_std": statistics.stdev(tail) if len(tail) > 1 else None,
        "tail": tail, "tail_epochs": len(values) - len(values) // 2, "per_epoch": values, "study": study.name,
        "key": cache_key(study, source), "peak_lr": res.peak_lr,
        "global_batch_size": res.global_batch_size, "micro_batch": res.micro_batch, "train_size": res.train_size,
        "val_acc": reports[-1].get("val_acc") if reports else None, "probe_s": time.time() - t0,
        "settings": {**asdict(settings), "seed": cfg.seed}, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                      time.gmtime()),
    }


def save_estimate(est: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(est, indent=2))
    tmp.replace(path)  # a reader never sees half a file


def estimate_for(study: StudyConfig, source: str, run_root: str | Path) -> tuple[dict[str, Any], bool]:
    """(estimate, came from the cache): the cached one, else a probe with the default settings (then cached)."""
    path = cache_path(study, run_root, source)
    est = load_cached(path)
    if est is not None:
        return est, True
    print(f"[largebatch] no cached B_noise for {study.name!r} ({path}): probing the baseline first "
          f"(largebatch probe does this alone)", flush=True)
    est = run_probe(study, source)
    save_estimate(est, path)
    return est, False


def format_estimate(est: dict[str, Any]) -> str:
    """One readable line: the estimate, its uncertainty and what it was measured on."""
    per = ", ".join(f"{v:.0f}" for v in est["per_epoch"][-est["tail_epochs"]:])  # nan where unresolved
    s = est.get("settings", {})
    k, unresolved = est["tail_epochs"], est["tail_epochs"] - len(est.get("tail", [])) if "tail" in est else 0
    over = f"the last {k} of {len(est['per_epoch'])} epochs" + (f" ({unresolved} unresolved)" if unresolved else "")
    std = est.get("b_noise_std")
    spread = f"± {std:.0f}" if std is not None else "± ? (one value: probe more epochs)"
    return (f"B_noise ≈ {est['b_noise']:.0f} {spread} (B_simple; mean ± std over {over}: "
            f"{per}; batch {est['global_batch_size']} as "
            f"2 x {est['micro_batch']}, {est['train_size']} examples, EMA {s.get('ema')}, seed {s.get('seed')}, "
            f"{est['probe_s']:.0f} s)")
