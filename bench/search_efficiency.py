"""Search efficiency (docs/design.md §9): successive halving (sha) and ASHA vs the exhaustive grid (FIFO), same space.

The space is tune_spaces/fashion-mnist.yaml's (3 batches x 3 rules x 2 warmups + the baseline), reduced to
20000 training examples; 10 epochs, the study's own budget. The three studies run through `run_study` (the
`largebatch tune` path: Tune, MLflow) in one child process with its own Ray and MLflow, one after the other. The
study's tuner defaults apply, so its 1-worker trials run in Tune's trial process (`tuner.in_process: true`,
train/inprocess.py): each trial's MLflow run carries the tag `trial_runner` and the JSON counts how many trials had
it (`in_process_trials`), with each trial's `startup_s` and `wall_s`.
Compute is trial-seconds: the sum over trials of start-up + training wall-clock (`startup_s` + `wall_s`, read back
from MLflow, summed over a paused trial's resumes; a stopped trial counts up to its last report). The first rung is
raised past the searched warmups (tune/schedulers.py `asha_grace_epochs`: 2 epochs here) for both. Goal (issue
#14): the early-stopping search's compute over the searched space <= 40% of the grid's, with its best val_acc within
0.3 points of the grid's best; the goal rows are sha's (order-free), ASHA's are contrast rows (its cost depends on
the trial order). The baseline is left out (it is no point of the space, and all studies train it alike, to the
end); the share with the baseline counted is a contrast row.
"""
from __future__ import annotations

import time
from typing import Any, Optional

from bench import common
from largebatch.vocab import Status

NAME = "search_efficiency"
GOAL_SHARE = 0.40
TOLERANCE_POINTS = 0.3
FULL_SETS = {"data.train_subset": 20000, "budget.epochs": 10}
QUICK_SETS = {"data.train_subset": 4000, "budget.epochs": 2,
              "search.data.global_batch_size": {"grid": [256, 1024]}, "search.scaling.rule": {"grid": ["linear"]},
              "search.schedule.warmup_epochs": {"grid": [0]}}


def _watch_resources(samples: list, stop, every_s: float = 10.0) -> None:
    """Free CPUs and live placement groups over time: a trial waiting while CPUs are held by a finished or
    stopped trial's leftovers shows here as 0 free CPUs with fewer trials running than slots."""
    import ray

    t0 = time.time()
    while not stop.wait(every_s):
        try:
            pgs = ray.util.placement_group_table()
            live = sum(1 for p in pgs.values() if p.get("state") not in ("REMOVED",))
            free = ray.available_resources().get("CPU", 0.0)
            samples.append({"t": round(time.time() - t0, 1), "free_cpus": free, "live_placement_groups": live})
            print(f"[bench] t={time.time() - t0:.0f}s free CPUs {free} live placement groups {live}", flush=True)
        except Exception as e:  # diagnostics only
            samples.append({"t": round(time.time() - t0, 1), "error": str(e)[:200]})


def child(spec: dict) -> dict[str, Any]:
    import threading

    from largebatch.config import load_study
    from largebatch.records import records_from_mlflow
    from largebatch.tune.driver import run_study
    from largebatch.tune.schedulers import asha_grace_epochs

    ray_info = common.start_ray()
    root = common.short_tmpdir()
    out: dict[str, Any] = {}
    samples: list = []
    stop = threading.Event()
    threading.Thread(target=_watch_resources, args=(samples, stop), daemon=True).start()
    for scheduler in spec["schedulers"]:
        study = load_study(common.STUDY_FILE, {**spec["sets"], "tuner.scheduler": scheduler,
                                               "tuner.budget_runs": None, "budget.stop_at_target": False})
        t = time.time()
        report = run_study(study, source=str(common.STUDY_FILE), study_text=common.STUDY_FILE.read_text(),
                           name=f"bench-{scheduler}-{time.time_ns()}", storage=f"{root}/ray",
                           mlflow_uri=f"sqlite:///{root}/mlflow.db", run_root=root)
        s = report["study"]
        records = records_from_mlflow(s["tracking_uri"], s["experiment_id"], s["parent_run_id"])
        tags = _trial_tags(s["tracking_uri"], [r["run_id"] for r in records])
        out[scheduler] = {
            "study_s": time.time() - t,
            "asha_grace_epochs": asha_grace_epochs(study),
            "costs": {k: s.get(k) for k in ("training_s", "trial_s", "startup_s", "training_share",
                                            "study_over_ideal")},
            "n_trials": s["n_trials"],
            "recommended": report.get("recommended"),
            "trials": [{k: r.get(k) for k in ("name", "is_baseline", "status", "global_batch_size", "rule",
                                              "warmup_epochs", "best_val_acc", "startup_s", "wall_s", "fit_s",
                                              "steps")}
                       | tags.get(r["run_id"], {}) for r in records],
        }
    stop.set()
    return {"ray": ray_info, "studies": out, "resources_timeline": samples,
            "new_torch_process_s": common.new_torch_process_s()}


def _trial_tags(tracking_uri: str, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each trial run's `trial_runner` tag ("in_process" for a trial trained in Tune's trial process, None for one
    that went through Ray Train's TorchTrainer: train/inprocess.py sets it, train/ray_worker.py does not) and its
    `process_run` ("1": its last run was the first in a new trial process, which paid the imports and the data)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    out = {}
    for rid in run_ids:
        t = client.get_run(rid).data.tags
        out[rid] = {"trial_runner": t.get("trial_runner"), "process_run": t.get("process_run")}
    return out


def new_process_allowance(grid: list[dict], other: list[dict], goal: float = GOAL_SHARE) -> dict[str, Any]:
    """Searched trials only. Each study pays some trials' start in a new trial process (process_run "1"); the rest of
    its trial-seconds is training and reused-process start-ups. If a new process started in F seconds in both, the
    share would be (rest_o + n_o F) / (rest_g + n_g F): the F at which it meets the goal, against the measured F."""
    def split(trials: list[dict]) -> tuple[float, list[float]]:
        searched = [t for t in trials if not t["is_baseline"]]
        new = [float(t["startup_s"] or 0.0) for t in searched if str(t.get("process_run")) == "1"]
        return compute(searched)["trial_s"] - sum(new), new

    (rest_g, new_g), (rest_o, new_o) = split(grid), split(other)
    n_g, n_o = len(new_g), len(new_o)
    if n_o - goal * n_g > 0:
        allowed: Optional[float] = max(0.0, (goal * rest_g - rest_o) / (n_o - goal * n_g))
    else:  # the share falls as F grows (or no new process at all): any F meets it once rest_o <= goal * rest_g
        allowed = None
    return {"new_processes": {"grid": n_g, "other": n_o}, "rest_s": {"grid": rest_g, "other": rest_o},
            "new_process_startup_s": common.median(new_g + new_o) if new_g or new_o else None,
            "allowed_new_process_startup_s": allowed}


def compute(trials: list[dict]) -> dict[str, float]:
    def f(x: Any) -> float:
        return float(x) if x is not None else 0.0

    return {"trial_s": sum(f(t["startup_s"]) + f(t["wall_s"]) for t in trials),
            "train_s": sum(f(t["wall_s"]) for t in trials),
            "startup_s": sum(f(t["startup_s"]) for t in trials)}


def best(trials: list[dict], search_only: bool = True) -> float:
    accs = [t["best_val_acc"] for t in trials if t["best_val_acc"] is not None
            and not (search_only and t["is_baseline"])]
    return max(accs) if accs else float("nan")


def run(quick: bool = False) -> dict[str, Any]:
    sets = QUICK_SETS if quick else FULL_SETS
    got = common.run_child("bench.search_efficiency:child", {"sets": sets, "schedulers": ["fifo", "sha", "asha"]},
                           timeout_s=900 if quick else 2400, log_name="search_efficiency")
    return analyse(got, sets)


def cut_short(grid: list[dict], asha: list[dict]) -> int:
    """ASHA trials that trained fewer steps than the same config did in the grid (not counting divergence)."""
    full = {(t["global_batch_size"], t["rule"], t["warmup_epochs"], t["is_baseline"]): t["steps"] for t in grid}
    return sum(1 for t in asha if t["status"] != Status.DIVERGED and t["steps"] is not None
               and t["steps"] < (full.get((t["global_batch_size"], t["rule"], t["warmup_epochs"], t["is_baseline"]))
                                 or 0))


def _new_process_rows(x: dict[str, Any], floor_s: Optional[float]) -> list[dict]:
    al = x["new_process"]
    measured, allowed = al["new_process_startup_s"], al["allowed_new_process_startup_s"]
    if measured is None or allowed is None:
        return []
    n = al["new_processes"]
    rows = [common.figure(f"  a new trial process's start-up (median; {n['other']} in sha, {n['grid']} in the grid) / "
                          f"the most that meets the goal", common.ratio(measured, allowed), unit="x",
                          shown=f"{measured:.1f} s / {allowed:.2f} s")]
    if floor_s is not None:
        rows.append(common.figure("  a new Python process importing torch and building its first optimizer (no Ray, "
                                  "no MLflow, no data)", floor_s, unit=" s"))
    return rows


def _stats(grid: dict, other: dict) -> dict[str, Any]:
    """One early-stopping study against the grid: compute shares (searched trials; with the baseline), best gap."""
    cg, co = compute(grid["trials"]), compute(other["trials"])
    sg, so = (compute([t for t in ts if not t["is_baseline"]]) for ts in (grid["trials"], other["trials"]))
    return {"compute": co, "compute_searched": so, "share": common.ratio(so["trial_s"], sg["trial_s"]),
            "share_all": common.ratio(co["trial_s"], cg["trial_s"]),
            "train_share": common.ratio(co["train_s"], cg["train_s"]),
            "wall_share": common.ratio(other["study_s"], grid["study_s"]),
            "gap": (best(grid["trials"]) - best(other["trials"])) * 100,
            "best": best(other["trials"]), "best_incl_baseline": best(other["trials"], False),
            "stopped_early": sum(t["status"] == Status.STOPPED_EARLY for t in other["trials"]),
            "cut_short": cut_short(grid["trials"], other["trials"]), "n": len(other["trials"]),
            "new_process": new_process_allowance(grid["trials"], other["trials"])}


def analyse(got: dict[str, Any], sets: dict[str, Any]) -> dict[str, Any]:
    """The figures, from the child's raw per-trial records (kept in the JSON, so the analysis can be re-run).
    The goal rows are successive halving's (tuner.scheduler: sha, tune/sha.py: order-free); ASHA's are contrast
    rows (asynchronous: what it costs depends on the trial order)."""
    studies = got["studies"]
    grid = studies["fifo"]
    cg = compute(grid["trials"])
    st = {k: _stats(grid, studies[k]) for k in ("sha", "asha") if k in studies}
    every = [t for s in studies.values() for t in s["trials"]]
    in_process = sum(t.get("trial_runner") == "in_process" for t in every)
    summary = []
    for k, label in (("sha", "successive halving (sha)"), ("asha", "ASHA")):
        if k not in st:
            continue
        x, goal = st[k], k == "sha"
        summary += [
            common.figure(f"{label} trial-seconds / grid trial-seconds (start-up + training), searched trials",
                          x["share"], unit="", goal=f"<= {GOAL_SHARE:.2f}" if goal else "",
                          met=x["share"] <= GOAL_SHARE if goal else None, key="asha_vs_grid" if goal else None),
            common.figure(f"  {label}: same, the baseline counted too (trained alike by both)", x["share_all"],
                          unit=""),
            common.figure(f"  {label}: grid best val_acc - its best val_acc", x["gap"], unit=" points",
                          goal=f"<= {TOLERANCE_POINTS}" if goal else "",
                          met=x["gap"] <= TOLERANCE_POINTS if goal else None, key="asha_gap" if goal else None),
            common.figure(f"  {label} / grid, training seconds only (start-up excluded)", x["train_share"] * 100,
                          unit="%"),
            common.figure(f"  {label} / grid, study wall-clock", x["wall_share"] * 100, unit="%"),
            common.figure(f"  {label}: trials cut short / trials", common.ratio(x["cut_short"], x["n"]), unit="",
                          shown=f"{x['cut_short']} / {x['n']}"),
        ]
        if goal:
            summary += _new_process_rows(x, got.get("new_torch_process_s"))
    summary += [
        common.figure("trials trained in Tune's trial process (tuner.in_process)", common.ratio(in_process, len(every)),
                      shown=f"{in_process} / {len(every)}"),
        common.figure("median trial start-up, grid", common.median(t["startup_s"] for t in grid["trials"]), unit=" s"),
        common.figure("start-up share of the grid's trial-seconds", common.ratio(cg["startup_s"], cg["trial_s"]) * 100,
                      unit="%"),
    ]
    return {
        "settings": {"study": str(common.STUDY_FILE.relative_to(common.REPO_ROOT)), "sets": sets,
                     "early_stopping": f"grace period {grid.get('asha_grace_epochs')} epochs "
                                       f"(tuner.grace_period_epochs 1 raised past the searched warmups), "
                                       f"reduction_factor 3 (the study's tuner default), for both sha and asha",
                     "compute": "sum over trials of startup_s + wall_s, from MLflow"},
        "compute": {"grid": cg, **{k: v["compute"] for k, v in st.items()}},
        "compute_searched": {"grid": compute([t for t in grid["trials"] if not t["is_baseline"]]),
                             **{k: v["compute_searched"] for k, v in st.items()}},
        "compute_share": {k: v["share"] for k, v in st.items()},
        "compute_share_with_baseline": {k: v["share_all"] for k, v in st.items()},
        "best_val_acc": {"grid": best(grid["trials"]), "grid_incl_baseline": best(grid["trials"], False),
                         **{k: v["best"] for k, v in st.items()}},
        "gap_points": {k: v["gap"] for k, v in st.items()},
        "stopped_early": {k: v["stopped_early"] for k, v in st.items()},  # as recorded
        "cut_short": {k: v["cut_short"] for k, v in st.items()},
        "new_process": {k: v["new_process"] for k, v in st.items()},
        "new_torch_process_s": got.get("new_torch_process_s"),
        "in_process_trials": in_process,
        "trials": len(every),
        "ray": got["ray"],
        "studies": studies,
        "resources_timeline": got.get("resources_timeline"),
        "summary": summary,
    }
