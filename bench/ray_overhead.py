"""Ray overhead (docs/design.md §9 "trial overhead"): the same trial through Ray Train (`run_trial`) at 1 and 2 workers
vs in-process, with RAY_TRAIN_HEALTH_CHECK_INTERVAL_S at largebatch's 0.25 s and Ray's 2 s default.

Each variant runs in its own child process with its own Ray (the variable must be set before Ray starts). Ray is
started as `largebatch tune` starts it (`largebatch.raylib.init_ray`: a local head node, our child, whose
environment carries RAY_ADDRESS to every Ray process) except in the `bare_ray_init` variant, a plain
`ray.init(address="local")` as largebatch started Ray before the local head (and as the other Ray benchmarks still
do, with a worker setup hook that pins RAY_ADDRESS instead): without RAY_ADDRESS, on a machine running several Ray
instances, Train's PlacementGroupCleaner queries another cluster and the controller waits ~12 s for it to stop at
the end of every trial.

The trials: the 2-worker digits smoke trial (tune_spaces/digits-smoke.yaml `base:`, 2 workers as that study runs
it: 1437 examples, B=32, 4 epochs; run twice, the median is the issue's goal figure), the Fashion-MNIST smoke trial
(tune_spaces/fashion-mnist.yaml `smoke:` at B=256: 6000 examples, 2 epochs) at 1 and 2 workers, and a steady trial
(60000 examples, 3 epochs) at 1 and 2 workers, plus the steady trial in-process right after the 1-worker Ray run.
"Whole trial" is fit() called -> fit() returned (`run_trial`), start-up is fit() called -> first step (the loop's
`startup_s`, from the driver's `t_submit`).

Start-up is split with three sources: a wrapper around the Ray worker
entry point stamps when the worker function starts and times its imports and dataset load; the Train
controller's own structured log (logs/train/ray-train-sys-controller-*.log) times the controller's start, the
worker actors' creation and the train-context (gloo) set-up; the rest up to the first step is resolve, model,
optimizer and the DDP wrap. Teardown (last report -> fit() returns) is split with the same log. Two probes time
the unit cost underneath: starting one bare actor process, and one that imports torch and ray.train.torch.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Optional

from bench import common

NAME = "ray_overhead"
SMOKE = {"data.global_batch_size": 256, "data.train_subset": 6000, "budget.epochs": 2}
STEADY = {"data.global_batch_size": 256, "budget.epochs": 3}
DIGITS_STUDY = common.REPO_ROOT / "tune_spaces" / "digits-smoke.yaml"


def trial_cfg(kind: str):
    """The trial config of a kind: "smoke" / "steady" (Fashion-MNIST) or "digits" (digits-smoke.yaml's base)."""
    if kind == "digits":
        from largebatch.config import load_study

        return common.trial_config({}, base=load_study(DIGITS_STUDY).base.model_dump(mode="json"))
    return common.trial_config(SMOKE if kind == "smoke" else STEADY)
STARTUP_SHARE_LIMIT = 0.30


def _instrument_worker(marks_dir: str) -> None:
    """Swap the Ray worker entry point (as make_trainer looks it up) for a timed wrapper, in this driver only."""
    import largebatch.train.ray_worker as rw

    original = rw.train_func

    def timed_train_func(config, _original=original, _marks=marks_dir):
        import time as _time

        t_enter = _time.time()
        import json as _json
        import os as _os

        import ray.train  # noqa: F401  (what train_func imports first; timed with the rest)
        import largebatch.tasks as _tasks
        import largebatch.tracking  # noqa: F401
        import largebatch.train.loop  # noqa: F401

        t_imported = _time.time()
        loads = []
        build = _tasks.build_data

        def timed_build(*a, **k):
            t = _time.time()
            out = build(*a, **k)
            loads.append(_time.time() - t)
            return out

        _tasks.build_data = timed_build  # train_func does `from largebatch.tasks import build_data` when called
        try:
            _original(config)
        finally:
            _tasks.build_data = build
            rank = ray.train.get_context().get_world_rank()
            spec = config.get("spec")
            mark = {"rank": rank, "t_submit": getattr(spec, "t_submit", None) or config.get("t_submit"),
                    "t_enter": t_enter, "imports_s": t_imported - t_enter, "load_s": sum(loads)}
            path = _os.path.join(_marks, f"rank{rank}-{_time.time_ns()}.json")
            with open(path, "w") as f:
                _json.dump(mark, f)

    rw.train_func = timed_train_func


def probe_actor_starts() -> dict[str, float]:
    """Seconds to start one Ray actor process and get an answer: bare, and importing what a Train worker imports
    (torch, ray.train.torch). Train V2 starts a controller actor and then the worker actors, one after the other."""
    import ray

    @ray.remote(num_cpus=0)
    class Bare:
        def ping(self) -> int:
            return 1

    @ray.remote(num_cpus=0)
    class WithTorch:
        def __init__(self):
            import ray.train.torch  # noqa: F401
            import torch  # noqa: F401

        def ping(self) -> int:
            return 1

    out = {}
    for name, cls in (("bare_actor_s", Bare), ("torch_actor_s", WithTorch)):
        t = time.time()
        a = cls.remote()
        ray.get(a.ping.remote())
        out[name] = time.time() - t
        ray.kill(a)
    return out


def _session_train_logs() -> Optional[Path]:
    try:
        import ray

        return Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "train"
    except Exception:
        return None


def _asctime(a: str) -> float:
    return time.mktime(time.strptime(a[:19], "%Y-%m-%d %H:%M:%S")) + int(a[20:23]) / 1000


def controller_timeline(since: float) -> dict[str, float]:
    """Event times from the Train controller's structured log (logs/train/ray-train-sys-controller-*.log) of the
    run that started after `since`: Ray's own account of the start-up and teardown steps."""
    logs = _session_train_logs()
    if logs is None or not logs.is_dir():
        return {}
    files = [p for p in logs.glob("ray-train-sys-controller-*.log") if p.stat().st_mtime >= since]
    events: dict[str, float] = {}
    for path in sorted(files, key=lambda p: p.stat().st_mtime)[-1:]:
        for line in path.read_text(errors="replace").splitlines():
            try:
                d = json.loads(line)
                t, msg = _asctime(d["asctime"]), d.get("message", "")
            except Exception:
                continue
            events.setdefault("first", t)
            for key, prefix in (("attempt", "Attempting to start training worker group"),
                                ("group_done", "[Worker Group Initialization] Worker group startup completed in"),
                                ("shutdown", "Shutting down"), ("shutdown_done", "Worker group shutdown successful"),
                                ("pg_cleaner_stop_failed", "Failed to stop PlacementGroupCleaner gracefully")):
                if msg.startswith(prefix):
                    events.setdefault(key, t)
            for key, pattern in (("actors_s", r"worker actors created in ([0-9.]+)s"),
                                 ("context_s", r"Train context initialized on workers in ([0-9.]+)s"),
                                 ("group_s", r"Worker group startup completed in ([0-9.]+)s")):
                m = re.search(pattern, msg)
                if m:
                    events.setdefault(key, float(m.group(1)))
    return events


def _parts(startup: float, wall: float, t_return: float, mark: Optional[dict], ev: dict) -> dict[str, Any]:
    """Start-up and teardown split into steps, from the rank-0 stamps and the controller log."""
    out: dict[str, Any] = {}
    if not mark or not mark.get("t_submit"):
        return out
    t_submit, t_enter = mark["t_submit"], mark["t_enter"]
    worker = {"imports": mark["imports_s"], "data": mark["load_s"],
              "setup": startup - (t_enter - t_submit) - mark["imports_s"] - mark["load_s"]}
    if {"first", "attempt", "group_done", "actors_s", "context_s", "group_s"} <= ev.keys():
        ray_parts = {
            "controller_start": ev["first"] - t_submit,  # fit() -> the controller actor runs (a process spawn)
            "resources_and_pg_cleaner": ev["attempt"] - ev["first"],
            "worker_actors": ev["actors_s"],  # process spawn + imports of the worker actors
            "train_context": ev["context_s"],  # includes the torch (gloo) process group set-up
        }
        ray_parts["ray_other"] = (t_enter - t_submit) - sum(ray_parts.values())  # callbacks, launch, polls
    else:
        ray_parts = {"ray": t_enter - t_submit}
    out["startup_parts_s"] = {**ray_parts, **worker}
    out["startup_ray_s"] = t_enter - t_submit
    t_end = t_submit + startup + wall
    if {"shutdown", "shutdown_done"} <= ev.keys():
        stop = ev.get("pg_cleaner_stop_failed", ev["shutdown_done"])
        out["teardown_parts_s"] = {"last_report_to_shutdown": ev["shutdown"] - t_end,
                                   "worker_group_shutdown": ev["shutdown_done"] - ev["shutdown"],
                                   "pg_cleaner_stop_wait": stop - ev["shutdown_done"],
                                   "to_fit_return": t_return - stop}
    return out


def _ray_trial(kind: str, workers: int, storage: str, marks_dir: str) -> dict[str, Any]:
    from largebatch.config import resolve
    from largebatch.train.trial import run_trial

    for p in Path(marks_dir).glob("*.json"):
        p.unlink()
    cfg = trial_cfg(kind)
    t_call = time.time()
    r = run_trial(resolve(cfg, workers), run_name=f"bench-ray-{kind}-{workers}w-{time.time_ns()}",
                  storage_path=storage)
    t_return = time.time()
    total = t_return - t_call
    marks = [json.loads(p.read_text()) for p in Path(marks_dir).glob("*.json")]
    rank0 = next((m for m in marks if m["rank"] == 0), None)
    hist = r["history"]
    startup, wall = r.get("startup_s") or float("nan"), r.get("wall_s") or float("nan")
    return {
        "trial": kind, "workers": workers, "status": r["status"], "total_s": total, "fit_s": r.get("fit_s"),
        "startup_s": startup, "train_s": wall, "teardown_s": total - startup - wall,
        "startup_share": common.ratio(startup, total),
        "overhead_share": common.ratio(total - wall, total),  # start-up + teardown
        "epochs": len(hist),
        "sum_epoch_s": sum(h["epoch_s"] for h in hist),
        # wall_s counts the reports between epochs; epoch_s does not: the difference is the report wait
        "report_wait_per_epoch_s": common.ratio(wall - sum(h["epoch_s"] for h in hist), max(1, len(hist))),
        "throughput": common.steady_throughput(hist) if hist else None,
        **_parts(startup, wall, t_return, rank0, controller_timeline(t_call - 1)),
    }


def child(spec: dict) -> dict[str, Any]:
    """One variant (interval, how Ray starts), in a fresh process whose environment already holds the interval."""
    t0 = time.time()
    if spec.get("ray") == "bare":  # ray.init(address="local"), as largebatch started Ray before its local head
        ray_info = common.start_ray(setup_hook=spec.get("setup_hook"))
    else:  # as `largebatch tune` starts it
        ray_info = common.start_largebatch_ray()
    try:
        return _child_trials(spec, ray_info, t0)
    finally:
        if spec.get("ray") != "bare":
            common.stop_largebatch_ray()


def _child_trials(spec: dict, ray_info: dict, t0: float) -> dict[str, Any]:
    import os

    ray_info["child_start_s"] = t0 - spec["t_spawn"]  # python + bench imports before Ray starts
    ray_info.update(probe_actor_starts())
    common.set_threads()
    marks, storage = common.short_tmpdir(), common.short_tmpdir()
    _instrument_worker(marks)
    trials = []
    for kind, workers in spec["trials"]:
        trials.append(_ray_trial(kind, workers, storage, marks))
        if spec.get("reference") == kind and workers == 1:
            # the in-process reference right after the 1-worker Ray trial of the same config
            cfg = trial_cfg(kind)
            t = time.time()
            hist = common.run_in_process(cfg)
            trials.append({"trial": kind, "workers": 1, "in_process": True, "total_s": time.time() - t,
                           "startup_s": None, "train_s": hist[-1]["wall_s"],
                           "throughput": common.steady_throughput(hist)})
    return {"interval_s": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"), "ray": ray_info, "trials": trials}


def _pick(trials: list[dict], kind: str, workers: int, in_process: bool = False) -> Optional[dict]:
    return next((t for t in trials if t["trial"] == kind and t["workers"] == workers
                 and bool(t.get("in_process")) == in_process), None)


def _median_parts(trials: list[dict], key: str) -> dict[str, float]:
    rows = [t[key] for t in trials if key in t]
    names = [k for k in (rows[0] if rows else {})]
    return {k: common.median(r.get(k, float("nan")) for r in rows) for k in names}


def run(quick: bool = False) -> dict[str, Any]:
    reference = "smoke" if quick else "steady"
    # the digits trial first and last: its median is the goal figure, and a burst of load should not decide it
    all_trials = [("digits", 2), ("smoke", 1), ("smoke", 2), ("steady", 1), ("steady", 2), ("digits", 2)]
    variants = {  # name: (interval, how Ray starts, trials)
        "largebatch_0.25s": ("0.25", "largebatch",
                             [("digits", 2), ("smoke", 1), ("smoke", 2), ("digits", 2)] if quick else all_trials),
    }
    if not quick:
        variants["ray_default_2s"] = ("2", "largebatch", all_trials[1:5])
        variants["bare_ray_init"] = ("0.25", "bare", [("digits", 2), ("smoke", 1), ("smoke", 2)])
    children = {}
    for name, (interval, how, trials) in variants.items():
        children[name] = common.run_child(
            "bench.ray_overhead:child", {"trials": trials, "reference": reference, "ray": how, "setup_hook": None},
            timeout_s=900, env={"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": interval}, log_name=f"ray_overhead-{name}")
    children["largebatch_0.25s"]["new_torch_process_s"] = common.new_torch_process_s()  # kept raw, like the rest
    return analyse(children, variants, reference)


RAY_PARTS = ("controller_start", "resources_and_pg_cleaner", "worker_actors", "train_context", "ray_other", "ray")
OUR_PARTS = ("imports", "data", "setup")


def _floor_rows(result: dict[str, Any], floor_s: Optional[float]) -> list[dict]:
    """What a process-per-trial design can reach at best: every worker is a new process that imports torch and builds
    an optimizer (common.new_torch_process_s, no Ray at all); against it, the start-up the goal allows for this
    trial's training and teardown as measured."""
    if floor_s is None:
        return []
    rest = result["digits_2w_train_s"] + result["digits_2w_teardown_s"]
    allowed = STARTUP_SHARE_LIMIT / (1 - STARTUP_SHARE_LIMIT) * rest
    result["digits_2w_startup_allowed_s"] = allowed
    result["new_torch_process_s"] = floor_s
    result["digits_2w_startup_share_floor"] = floor_s / (floor_s + rest)
    return [
        common.figure(f"  start-up the goal allows for its {result['digits_2w_train_s']:.1f} s of training and "
                      f"{result['digits_2w_teardown_s']:.1f} s of teardown", allowed, unit=" s"),
        common.figure("  a new Python process importing torch and building its first optimizer (no Ray, no data)",
                      floor_s, unit=" s"),
        common.figure("  start-up share if the trial's workers started in that floor time",
                      result["digits_2w_startup_share_floor"]),
    ]


def analyse(children: dict[str, dict], variants: dict[str, tuple], reference: str) -> dict[str, Any]:
    """The figures, from the children's raw trial rows (kept in the JSON, so the analysis can be re-run)."""
    ours = children["largebatch_0.25s"]["trials"]
    ray_trials = [t for t in ours if not t.get("in_process")]
    smoke = [t for t in ray_trials if t["trial"] == "smoke"]
    digits = [t for t in ray_trials if t["trial"] == "digits" and t["workers"] == 2]
    smoke1, smoke2 = _pick(ours, "smoke", 1), _pick(ours, "smoke", 2)
    ref, ray1, ray2 = _pick(ours, reference, 1, in_process=True), _pick(ours, reference, 1), _pick(ours, reference, 2)
    startup = common.median(t["startup_s"] for t in ray_trials)
    parts = _median_parts(ray_trials, "startup_parts_s")
    dominant = max(parts, key=parts.get) if parts else None
    ray_share = common.ratio(sum(v for k, v in parts.items() if k in RAY_PARTS), startup)
    data_share = common.ratio(parts.get("data", float("nan")), startup)
    smoke_share = common.median(t["startup_share"] for t in smoke)
    smoke_overhead = common.median(t["overhead_share"] for t in smoke)
    digits_share = common.median(t["startup_share"] for t in digits)
    digits_parts = _median_parts(digits, "startup_parts_s")
    # A projection from the same trials, not a measurement: with the worker group kept across trials (started once
    # per study), a trial would pay only its own set-up (resolve, model, optimizer, DDP wrap) of today's start-up.
    reuse = [common.ratio(t["startup_parts_s"]["setup"], t["total_s"] - t["startup_s"] + t["startup_parts_s"]["setup"])
             for t in digits if "startup_parts_s" in t]
    digits_reuse_share = common.median(reuse)
    result: dict[str, Any] = {
        "settings": {"smoke_trial": SMOKE, "steady_trial": STEADY, "digits_trial": str(DIGITS_STUDY.relative_to(
                         common.REPO_ROOT)) + " base, 2 workers", "reference": reference,
                     "variants": {k: {"interval_s": v[0], "ray": v[1], "trials": v[2]} for k, v in variants.items()},
                     "threads_per_worker": common.THREADS, "model": "mlp 256-128 (digits: mlp 64)"},
        "startup_s_median": startup,
        "startup_parts_s_median": parts,
        "startup_parts_share": {k: common.ratio(v, startup) for k, v in parts.items()},
        "startup_dominated_by": dominant,
        "startup_share_ray_train": ray_share,  # controller + worker actors + train context (gloo) + rest
        "startup_share_largebatch_worker": common.ratio(sum(v for k, v in parts.items() if k in OUR_PARTS), startup),
        "teardown_s_median": common.median(t["teardown_s"] for t in ray_trials),
        "teardown_parts_s_median": _median_parts(ray_trials, "teardown_parts_s"),
        "actor_start_probe_s": {k: children["largebatch_0.25s"]["ray"][k] for k in ("bare_actor_s", "torch_actor_s")},
        "digits_2w_startup_share": digits_share,
        "digits_2w_startup_s": common.median(t["startup_s"] for t in digits),
        "digits_2w_total_s": common.median(t["total_s"] for t in digits),
        "digits_2w_train_s": common.median(t["train_s"] for t in digits),
        "digits_2w_teardown_s": common.median(t["teardown_s"] for t in digits),
        "digits_2w_startup_parts_s": digits_parts,
        "digits_2w_startup_share_if_worker_group_reused": digits_reuse_share,
        "smoke_startup_share": smoke_share,
        "smoke_overhead_share": smoke_overhead,
        "smoke_startup_over_limit": smoke_share > STARTUP_SHARE_LIMIT,
        "steady_ratio_1w": common.ratio(ray1["throughput"], ref["throughput"]) if ray1 and ref else None,
        "steady_ratio_2w_vs_in_process_1w": (common.ratio(ray2["throughput"], ref["throughput"])
                                             if ray2 and ref else None),
        "children": children,
    }
    summary = [
        common.figure("start-up / whole trial, 2-worker digits smoke trial (fit -> return)", digits_share,
                      goal=f"<= {STARTUP_SHARE_LIMIT:.2f}", met=digits_share <= STARTUP_SHARE_LIMIT,
                      key="startup_share"),
        common.figure("  its start-up / teardown / training, seconds", result["digits_2w_startup_s"], unit=" s",
                      shown=f"{result['digits_2w_startup_s']:.1f} / {result['digits_2w_teardown_s']:.1f} / "
                            f"{result['digits_2w_train_s']:.1f} s"),
        common.figure("  projected start-up share with the worker group reused across trials (only model/DDP set-up "
                      "left)", digits_reuse_share),
        *_floor_rows(result, children["largebatch_0.25s"].get("new_torch_process_s")),
        common.figure("Ray start-up (fit -> first step), 1 worker, Fashion-MNIST smoke trial",
                      smoke1["startup_s"] if smoke1 else None, unit=" s", goal="reported"),
        common.figure("Ray start-up (fit -> first step), 2 workers, Fashion-MNIST smoke trial",
                      smoke2["startup_s"] if smoke2 else None, unit=" s", goal="reported"),
        common.figure("start-up / whole Fashion-MNIST smoke trial, 1 and 2 workers (median)", smoke_share),
        common.figure("start-up + teardown / whole Fashion-MNIST smoke trial", smoke_overhead),
        common.figure("Ray Train's part of start-up (controller, worker actors, train context/gloo)", ray_share * 100,
                      unit="%"),
        common.figure(f"largest single part: {dominant}", result["startup_parts_share"].get(dominant) * 100
                      if dominant else None, unit="% of start-up"),
        common.figure("dataset load in the worker, share of start-up", data_share * 100, unit="%"),
    ]
    if result["steady_ratio_1w"] is not None:
        summary += [
            common.figure(f"steady examples/s, Ray 1 worker / in-process ({reference} trial)",
                          result["steady_ratio_1w"], goal="~1"),
            common.figure(f"steady examples/s, Ray 2 workers / in-process 1 worker ({reference} trial)",
                          result["steady_ratio_2w_vs_in_process_1w"]),
        ]
    if "ray_default_2s" in children:
        waits = {k: common.median(t["report_wait_per_epoch_s"] for t in c["trials"] if not t.get("in_process"))
                 for k, c in children.items()}
        smoke_total = {k: common.median(t["total_s"] for t in c["trials"] if t["trial"] == "smoke"
                                        and not t.get("in_process")) for k, c in children.items()}
        result["report_wait_per_epoch_s"] = waits
        result["smoke_total_s"] = smoke_total
        # the controller polls at the interval: it notices that the workers finished only at its next poll
        finish = {k: common.median(t["teardown_parts_s"]["last_report_to_shutdown"] for t in c["trials"]
                                   if "teardown_parts_s" in t) for k, c in children.items()}
        result["last_report_to_shutdown_s"] = finish
        smoke_teardown = {k: common.median(t["teardown_s"] for t in c["trials"] if t["trial"] == "smoke"
                                           and not t.get("in_process")) for k, c in children.items()}
        result["smoke_teardown_s"] = smoke_teardown
        slow, fast = waits["ray_default_2s"], waits["largebatch_0.25s"]
        summary += [
            common.figure("report wait per epoch, interval 2 s / 0.25 s", common.ratio(slow, fast), unit="x",
                          shown=f"{slow:.2f} s / {fast:.2f} s"),
            common.figure("last report -> worker shutdown, interval 2 s / 0.25 s",
                          common.ratio(finish["ray_default_2s"], finish["largebatch_0.25s"]), unit="x",
                          shown=f"{finish['ray_default_2s']:.1f} s / {finish['largebatch_0.25s']:.1f} s"),
            common.figure("smoke trial fit -> return, interval 2 s / 0.25 s",
                          common.ratio(smoke_total["ray_default_2s"], smoke_total["largebatch_0.25s"]), unit="x"),
        ]
    if "bare_ray_init" in children:
        smoke_teardown = {k: common.median(t["teardown_s"] for t in c["trials"] if t["trial"] in ("smoke", "digits")
                                           and not t.get("in_process")) for k, c in children.items()}
        bare_digits = [t for t in children["bare_ray_init"]["trials"] if t["trial"] == "digits"]
        result["smoke_and_digits_teardown_s"] = smoke_teardown
        summary += [
            common.figure("smoke trials' teardown, largebatch's local head / bare ray.init(address='local')",
                          common.ratio(smoke_teardown["largebatch_0.25s"], smoke_teardown["bare_ray_init"]), unit="x",
                          shown=f"{smoke_teardown['largebatch_0.25s']:.1f} s / "
                                f"{smoke_teardown['bare_ray_init']:.1f} s"),
            common.figure("start-up / whole 2-worker digits smoke trial, bare ray.init (contrast)",
                          common.median(t["startup_share"] for t in bare_digits)),
        ]
    result["summary"] = summary
    return result
