"""What every benchmark shares: machine facts, the study's trial config, in-process runs, alternation, results.

The machine is shared and noisy (2 cores), so no figure is an absolute time: each is a RATIO against a reference
measured in the same run, with the repetitions alternated (A B, B A, ...) and the median taken.

Benchmarks that need Ray run it in a child process (`run_child`): the parent's in-process timings never share the
machine with an idle Ray, an env var such as RAY_TRAIN_HEALTH_CHECK_INTERVAL_S can differ per child, and a hung
trial is ended by a timeout instead of hanging `make bench`.
"""
from __future__ import annotations

import atexit
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
STUDY_FILE = REPO_ROOT / "tune_spaces" / "fashion-mnist.yaml"
# One BLAS thread everywhere: a study trial's worker has 1 CPU (tuner.cpus_per_worker: 1), and on a shared
# 2-core machine two threads of one process fight the other tenants as much as they help.
THREADS = 1


# ---------------------------------------------------------------- machine and results
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    import torch

    try:
        from importlib.metadata import version

        ray_version = version("ray")
    except Exception:
        ray_version = "not installed"
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "torch": torch.__version__,
        "ray": ray_version,
        "python": platform.python_version(),
        "load_avg_1m": os.getloadavg()[0],  # how busy the shared machine was when the benchmark started
    }


def write_result(name: str, payload: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable, allow_nan=True) + "\n")
    tmp.replace(path)
    return path


def _jsonable(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def figure(name: str, value: Optional[float], *, goal: str = "", unit: str = "", met: Optional[bool] = None,
           shown: Optional[str] = None, key: Optional[str] = None) -> dict[str, Any]:
    """One row of the summary table. `value` is the number (a ratio unless `unit` says otherwise). `key` names the
    row of run_all.GOALS (the issue's goal table) this figure answers, if any. A missing value never meets a goal."""
    missing = value is None or not math.isfinite(value)
    if shown is None:
        shown = "n/a" if missing else f"{value:.3g}{unit}"
    if missing and met is not None:
        met = False
    row = {"figure": name, "value": value, "unit": unit, "goal": goal, "measured": shown, "met": met}
    if key:
        row["key"] = key
    return row


# ---------------------------------------------------------------- statistics and alternation
def median(xs: Iterable[float]) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.median(xs) if xs else float("nan")


def ratio(a: Optional[float], b: Optional[float]) -> float:
    """a / b, or NaN when either is missing, infinite or b is 0 (a failed trial must not crash the analysis)."""
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return float("nan")
    return a / b


def alternate(variants: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[Any]]:
    """Run every variant once per round, rotating the order each round (A B C, B C A, ...), so a burst of load
    from another tenant does not land on one variant only. Returns the per-round results per variant."""
    names = list(variants)
    out: dict[str, list[Any]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            out[n].append(variants[n]())
    return out


# ---------------------------------------------------------------- the trial config and in-process runs
@lru_cache(maxsize=1)
def study_base_tree() -> dict:
    """The main study's base trial (tune_spaces/fashion-mnist.yaml): MLP 256-128, SGD momentum 0.9, B=16."""
    from largebatch.config import load_study

    return load_study(STUDY_FILE).base.model_dump(mode="json")


def trial_config(overrides: dict[str, Any] | None = None, base: dict | None = None):
    """A TrialConfig from the study's base (or `base`) plus dotted overrides, e.g. {"data.global_batch_size": 256}."""
    from largebatch.config import apply_overrides, parse_trial

    return parse_trial(apply_overrides(base if base is not None else study_base_tree(), overrides or {}),
                       source="bench", prefix="")


@lru_cache(maxsize=4)
def dataset(name: str = "fashion-mnist", train_subset: Optional[int] = None, seed: int = 0):
    from largebatch.data import load_dataset

    return load_dataset(name, None, train_subset, seed=seed)


def set_threads(n: int = THREADS) -> None:
    import torch

    torch.set_num_threads(n)


# What any trial process pays before its first step, whatever largebatch does: a new Python that imports torch and
# builds its first torch.optim optimizer (which imports torch._dynamo, ~0.9 s here). No Ray, no MLflow, no data: a
# floor under the start-up of a trial that starts a process, for the goals that a start-up share bounds.
_FLOOR_CODE = ("import torch; p = torch.nn.Parameter(torch.zeros(4)); o = torch.optim.SGD([p], lr=0.1, momentum=0.9); "
               "p.grad = torch.ones(4); o.step()")


def new_torch_process_s(runs: int = 3) -> float:
    """Median seconds from spawning `python -c <_FLOOR_CODE>` to its exit."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", _FLOOR_CODE], check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return median(times)


def run_in_process(cfg, data=None) -> list[dict]:
    """One trial through the real per-worker loop, 1 worker, no Ray; returns its per-epoch metrics."""
    from largebatch.config import resolve
    from largebatch.train.loop import WorkerContext, train_worker

    if data is None:
        data = dataset(cfg.data.dataset, cfg.data.train_subset, cfg.seed)
    res = resolve(cfg, 1, train_size=int(data.y_train.shape[0]))
    history: list[dict] = []

    def report(metrics: dict, ckpt_dir: Optional[str]) -> None:  # no-op, bar the checkpoint the loop wrote
        history.append(dict(metrics))
        if ckpt_dir:
            shutil.rmtree(ckpt_dir, ignore_errors=True)

    with _quiet():
        train_worker(res, WorkerContext(report=report), data)
    return history


def steady_throughput(history: list[dict]) -> float:
    """Median examples/s over the epochs after the first (the first pays allocator and cache warm-up)."""
    later = [h["throughput"] for h in history[1:]] or [h["throughput"] for h in history]
    return median(later)


class _quiet:
    """Silence the loop's per-epoch print (stdout only) while timing."""

    def __enter__(self):
        self._stdout = sys.stdout
        sys.stdout = open(os.devnull, "w")

    def __exit__(self, *exc):
        sys.stdout.close()
        sys.stdout = self._stdout
        return False


# ---------------------------------------------------------------- Ray in a child process
# Train V2 gives a worker group 60 s to start, then fails the trial. On this shared 2-core machine, under other
# tenants' load, starting the workers has taken longer than that: the benchmarks measure start-up, they must not
# die of it. (The product keeps Ray's default; see bench/README.md.)
CHILD_ENV = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300"}

def short_tmpdir(prefix: str = "lbb-", keep: bool = False) -> str:
    """Ray's AF_UNIX socket paths are capped at 107 bytes: keep temp dirs short (/tmp/lbb-xxxx). Removed when
    this process exits unless `keep` (run_child keeps a failed child's log)."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    if not keep:
        atexit.register(shutil.rmtree, path, True)
    return path


def run_child(target: str, spec: dict[str, Any], *, timeout_s: float, env: dict[str, str] | None = None,
              log_name: str = "child") -> dict[str, Any]:
    """Run `module:function(spec) -> dict` in a fresh Python (`python -m bench.run_all --child ...`)."""
    work = Path(short_tmpdir(keep=True))
    spec_file, out_file, log_file = work / "spec.json", work / "out.json", work / f"{log_name}.log"
    spec_file.write_text(json.dumps({**spec, "t_spawn": time.time()}))
    child_env = {**os.environ, **CHILD_ENV, **(env or {})}
    # Ray's local workers inherit this environment: they can import bench/ as the driver does
    child_env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), child_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with open(log_file, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bench.run_all", "--child", target, str(spec_file),
                                 str(out_file)], cwd=REPO_ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            rc: Any = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            # SIGTERM first: the child's ray.shutdown() at exit takes its local Ray down with it
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            rc = f"a timeout after {timeout_s:.0f} s"
    if rc != 0 or not out_file.is_file():
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"child {target} ended with {rc} (log {log_file}):\n{tail}")
    out = json.loads(out_file.read_text())
    shutil.rmtree(work, ignore_errors=True)
    return out


def child_main(target: str, spec_file: str, out_file: str) -> int:
    import importlib

    module, func = target.split(":")
    spec = json.loads(Path(spec_file).read_text())
    result = getattr(importlib.import_module(module), func)(spec)
    Path(out_file).write_text(json.dumps(result, default=_jsonable))
    return 0


def ray_instances() -> int:
    """Ray clusters running on this machine (their gcs_server processes), ours included."""
    n = 0
    for proc in Path("/proc").iterdir():
        try:
            n += proc.name.isdigit() and (proc / "comm").read_text().startswith("gcs_server")
        except OSError:
            pass
    return n


def pin_ray_address() -> None:
    """A Ray worker_process_setup_hook: point RAY_ADDRESS at this worker's own cluster.

    Train V2's PlacementGroupCleaner checks that its controller is alive through the State API with no address;
    with several Ray instances on the machine (other users' tests), that resolves to the most recently started
    one and the check hangs or raises. Two symptoms (both measured by ray_overhead and search_efficiency): every
    trial's teardown waits ~12 s for the cleaner to stop (its monitor thread is stuck in that call), and when a
    controller dies (an ASHA-stopped trial) its placement group is never removed, so its CPU stays taken and the
    next trial waits forever."""
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def start_ray(num_cpus: int = 2, trial_slots: int = 2,
              setup_hook: Optional[str] = "bench.common.pin_ray_address") -> dict[str, Any]:
    """A NEW local Ray set up as `largebatch.raylib.init_ray` sets one up, timed; for child processes only.

    `address="local"`: without it, ray.init() joins whatever cluster /tmp/ray/ray_current_cluster names (another
    user's `ray start` on this shared machine), and the benchmark would run on, and disturb, their cluster.
    init_ray (called later by run_study) then finds Ray initialised and leaves it alone. Every worker process
    runs `setup_hook` first: by default `pin_ray_address`, without which ASHA studies hang on this machine.
    """
    t = time.time()
    import ray
    import ray.train.torch  # noqa: F401  (timed: the import is part of what a user waits for)

    t_import = time.time() - t
    from largebatch.raylib import TRAIN_ENV

    env = {k: os.environ.get(k, v) for k, v in TRAIN_ENV.items()}
    os.environ.update(env)  # as init_ray does: the local workers inherit the driver's environment
    t = time.time()
    runtime_env: dict[str, Any] = {"env_vars": env}
    if setup_hook:
        runtime_env["worker_process_setup_hook"] = setup_hook
    ray.init(address="local", num_cpus=num_cpus, resources={"trial_slot": trial_slots}, runtime_env=runtime_env,
             log_to_driver=True)
    init_s = time.time() - t
    return {"import_ray_s": t_import, "ray_init_s": init_s, "train_env": env,
            "ray_instances_on_machine": ray_instances(),
            "child_env": {k: os.environ.get(k) for k in CHILD_ENV}, "setup_hook": setup_hook,
            "cpus": int(ray.cluster_resources().get("CPU", 0))}


def start_largebatch_ray() -> dict[str, Any]:
    """Ray as `largebatch tune` starts it (largebatch.raylib.init_ray): a local head node as this process's child
    (`ray start --head --block` on free ports, its own auth token), whose environment carries RAY_ADDRESS and
    TRAIN_ENV to every Ray process, so Train's internal actors find this cluster and no other. Timed; for child
    processes only. `stop_largebatch_ray()` stops the head by PID (never `ray stop`)."""
    t = time.time()
    import ray  # noqa: F401
    import ray.train.torch  # noqa: F401  (timed: the import is part of what a user waits for)

    t_import = time.time() - t
    from largebatch.raylib import init_ray

    os.environ.pop("RAY_ADDRESS", None)  # a local head of our own, never a cluster named by the environment
    t = time.time()
    info = init_ray()
    init_s = time.time() - t
    return {"import_ray_s": t_import, "ray_init_s": init_s, "how": "largebatch.raylib.init_ray (local head)",
            "train_env": {k: os.environ.get(k) for k in ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",
                                                         "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S")},
            "ray_instances_on_machine": ray_instances(), "setup_hook": None, "cpus": info["cpus"]}


def stop_largebatch_ray() -> None:
    from largebatch.raylib import shutdown_ray

    shutdown_ray()
