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

A study with N > 1 workers per trial is profiled on one worker group of N Ray actors, measured alone in the same way
(tune/group.py): each rank takes global / N of every batch, the model in DDP over a gloo (nccl) process group, so the
gradient all-reduce is in the step. A step ends when the slowest rank's does; with one CPU thread per worker on one
node its time is the median of the steps' process CPU time (the all-reduce's threads included), else the
wall-clock's lower decile.

Measured results are cached under `<run root>/throughput/`, one file per key: task, model, data, precision,
optimizer, instruments, batch, worker count, CPUs/GPU, the machine (hostname, CPU count, torch version, GPU name) and
the step's fingerprint (tune/fingerprint.py: the built model's parameter shapes, the task's source files, the data
pipeline), so a second study on the same setup reuses them and a changed model or task code measures again. Each
entry also says how much of the step is the input pipeline (`input_share`, `input_note`).

What is not profiled (the report then uses measured wall-clock, and says so): Ray Data tasks, `per_worker_batch_cap:
auto`, the gradient noise scale instrument (per-step work the profile does not do), and searched keys that change a
step's cost (model, task, data source, optimizer name, precision, ...).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

# the profile line says these too
from largebatch.report.speed import INPUT_NOTE_SHARE, input_note, profile_workers  # noqa: F401
from largebatch.tune.measure import BUDGET_S, MAX_STEPS, MIN_TIMED, ROUNDS, measure, summarize  # noqa: F401

if TYPE_CHECKING:
    from largebatch.tracking import RunTree

VERSION = 4  # bump when the measurement changes: older cache files no longer match
ARTIFACT = "throughput.json"
CACHE_DIR = "throughput"
# searched keys that leave a step's cost unchanged (the LR and its schedule, the budget, the seed, the evaluation
# subset, the batch itself: profiled per batch); any other searched key may change it, and the profile is skipped
_COST_FREE = ("data.global_batch_size", "data.train_subset", "data.eval_subset", "scaling.", "schedule.", "budget.",
              "optim.base_lr", "optim.base_batch_size", "seed", "checkpoint.", "report.")


def machine_fingerprint() -> dict[str, Any]:
    """The machine a profile was measured on (evaluated where the profile runs)."""
    import torch

    fp: dict[str, Any] = {"hostname": socket.gethostname(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                          "python": platform.python_version(), "cpu": _cpu_model()}
    if torch.cuda.is_available():
        fp["gpu"] = torch.cuda.get_device_name(0)
    return fp


def _cpu_model() -> str:
    try:
        return next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name")), "")
    except OSError:
        return ""


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


# ----------------------------------------------------------------------------- the driver side
def _on_ray(fn, opts: dict, *args, **kwargs):
    """fn(*args, **kwargs) in one Ray task with opts' resources (ray.init done)."""
    import ray

    return ray.get(ray.remote(**opts)(fn).remote(*args, **kwargs))


def fingerprint_while_ray_starts(study, base_tree: dict):
    """The step fingerprint (tune/fingerprint.py: the task's data and model built once) computed in a thread while
    the driver starts Ray: a Future for profile_study, or None when the study is not profiled."""
    from concurrent.futures import ThreadPoolExecutor

    from largebatch.tune.fingerprint import step_fingerprint

    if skip_reason(study) is not None:
        return None
    pool = ThreadPoolExecutor(1, thread_name_prefix="largebatch-fingerprint")
    try:
        return pool.submit(step_fingerprint, base_tree)
    finally:
        pool.shutdown(wait=False)


def profile_study(study, base_tree: dict, baseline_tree: dict, run_root: str | Path, run=_on_ray,
                  fingerprint=None, group=None) -> dict[str, Any]:
    """The study's profile: cached entries where the key matches, the rest measured now in one Ray task (ray.init
    done; `run(fn, opts, ...)` runs a function there), or with 2+ workers per trial on one worker group of that
    many Ray actors (tune/group.py `measure_group`, or `group(trees, workers=, cpus=, use_gpu=)`). The key
    includes the worker count and the step's fingerprint (tune/fingerprint.py: `fingerprint`, or a Future of it,
    else computed here); when it cannot be computed, everything is measured and nothing cached. Returns
    {"status": "measured"|"cached"|"off", "reason", "machine", "setup", "fingerprint", "entries": [...]}."""
    from largebatch.tune.fingerprint import step_fingerprint

    reason = skip_reason(study)
    if reason is not None:
        return {"version": VERSION, "status": "off", "reason": reason, "entries": []}
    t = study.tuner
    opts = {"num_cpus": t.cpus_per_worker, **({"num_gpus": 1} if t.use_gpu else {})}
    trees = study_batches(study, base_tree, baseline_tree)
    setup = setup_of(base_tree, workers=t.workers_per_trial, cpus=t.cpus_per_worker, use_gpu=t.use_gpu)
    try:
        fingerprint = fingerprint.result() if hasattr(fingerprint, "result") else \
            fingerprint or step_fingerprint(base_tree)
    except Exception as e:  # the key would be unsure: measure, and cache nothing
        from largebatch.failures import describe as what

        fingerprint = {"digest": None, "error": what(e)}
    keyed = {**setup, "step": fingerprint["digest"]}
    machine = run(machine_fingerprint, opts)
    cache = Path(run_root) / CACHE_DIR
    entries, missing = {}, {}
    for b, tree in trees.items():
        hit = _read_cache(cache / f"{cache_key(keyed, b, machine)}.json", b) if fingerprint["digest"] else None
        if hit is not None:
            entries[b] = {**hit, "cached": True}
        else:
            missing[b] = tree
    if missing:
        t0 = time.time()
        if t.workers_per_trial > 1:  # one worker group, DDP's all-reduce in the step (tune/group.py)
            if group is None:
                from largebatch.tune.group import measure_group as group
            measured = group(missing, workers=t.workers_per_trial, cpus=t.cpus_per_worker, use_gpu=t.use_gpu)
        else:  # max_calls=1: the worker process exits afterwards, so the data it decoded is not held in the search
            measured = run(measure, {"max_calls": 1, **opts}, missing, workers=t.workers_per_trial,
                           cpus=t.cpus_per_worker, use_gpu=t.use_gpu)
        for m in measured:  # not `e`: an exception's name in this function
            key = cache_key(keyed, m["global_batch_size"], machine)
            entry = {**m, "key": key}
            if fingerprint["digest"]:
                cache.mkdir(parents=True, exist_ok=True)
                _write_cache(cache / f"{key}.json", entry)
            entries[entry["global_batch_size"]] = {**entry, "cached": False}
        where = f"cached under {cache}" if fingerprint["digest"] else \
            f"not cached: the step's fingerprint failed ({fingerprint['error']})"
        group_of = f"{t.workers_per_trial} workers x " if t.workers_per_trial > 1 else ""
        print(f"[largebatch] throughput profile: {len(measured)} batch size(s) measured alone in "
              f"{time.time() - t0:.1f} s ({group_of}{t.cpus_per_worker} CPU{'s' if t.cpus_per_worker > 1 else ''}"
              f"{' + 1 GPU' if t.use_gpu else ''}, {where})", flush=True)
    profile = {"version": VERSION, "status": "measured" if missing else "cached", "reason": None,
               "machine": machine, "setup": setup, "fingerprint": fingerprint,
               "entries": [entries[b] for b in sorted(entries)]}
    print("[largebatch] " + describe(profile), flush=True)
    return profile


def _read_cache(path: Path, batch: Optional[int] = None) -> Optional[dict]:
    """A cached entry (read bounded, JSON only: probe.py read_cache_json), or None unless its numbers are what
    measure() writes: the batch it is filed under, a finite positive step time and examples/s."""
    from largebatch.probe import read_cache_json

    e = read_cache_json(path)

    def positive(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0

    if not (isinstance(e, dict) and positive(e.get("step_s")) and positive(e.get("examples_per_s"))
            and isinstance(e.get("global_batch_size"), int) and not isinstance(e["global_batch_size"], bool)
            and (batch is None or e["global_batch_size"] == batch)):
        return None
    share = e.get("input_share")
    return e if share is None or (positive(share) or share == 0) else None


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
    note = input_note(profile)
    n = profile_workers(profile)
    alone = f"measured alone on one group of {n} workers" if n > 1 else "measured alone"
    return f"throughput profile ({profile['status']}, {alone}): " + ", ".join(cells) + (
        f"; {note}" if note else "")


def log_profile(tracker, parent_id: str, profile: dict) -> None:
    """On the study's MLflow run: throughput.json, a param, and per batch size the metrics throughput_step_s and
    throughput_examples_per_s at step = the batch size (MLflow's chart of a metric is then against the batch)."""
    from largebatch.tracking import log_step_metrics

    points = [(name, float(e[key]), int(e["global_batch_size"]))
              for e in profile["entries"]
              for name, key in (("throughput_step_s", "step_s"), ("throughput_examples_per_s", "examples_per_s"))]
    log_step_metrics(tracker, parent_id, points,
                     {"throughput_profile": profile["status"] if profile["status"] == "off" else "on"})
    tracker.log_text(parent_id, json.dumps(profile, indent=2, default=str), ARTIFACT)


def logged_profile(runs: str | RunTree, parent_id: str) -> Optional[dict]:
    """The profile a study logged on its parent run (None when it logged none, e.g. an older study). runs: a
    RunTree (a Tracker) or a tracking URI."""
    import tempfile

    try:
        if isinstance(runs, str):
            from largebatch.tracking import RunTree

            runs = RunTree(runs)
        with tempfile.TemporaryDirectory() as d:
            path = runs.download_artifact(parent_id, ARTIFACT, d)
            return json.loads(Path(path).read_text())
    except Exception:
        return None


def study_profile(study, tracker, parent_id: str, base_tree: dict, baseline_tree: dict, run_root: str,
                  resumed: bool, fingerprint=None) -> dict:
    """The driver's one call: a resumed study reads the profile it logged; a new one profiles and logs it
    (fingerprint: see profile_study)."""
    if resumed:
        logged = logged_profile(tracker, parent_id)
        if logged is not None:
            print("[largebatch] " + describe(logged) + " (logged by the resumed study)", flush=True)
            return logged
    try:
        profile = profile_study(study, base_tree, baseline_tree, run_root, fingerprint=fingerprint)
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
