"""Search efficiency (docs/design.md §9): an ASHA study vs the exhaustive grid (FIFO) on the same space.

The space is tune_spaces/fashion-mnist.yaml's (3 batches x 3 rules x 2 warmups + the baseline), reduced to
20000 training examples; 10 epochs, the study's own budget (with 4, a first rung past the 2-epoch warmups left ASHA
one cut at half the budget, so it could not cost less than about half the grid). Both run through `run_study`
(the `largebatch tune` path: Tune, Train, MLflow) in one child process with its own Ray and MLflow, one after
the other. The study's tuner defaults apply, so its 1-worker trials run in Tune's trial process
(`tuner.in_process: true`, train/inprocess.py): each trial's MLflow run carries the tag `trial_runner` and the
JSON counts how many trials had it (`in_process_trials`), with each trial's `startup_s` and `wall_s`.
Compute is trial-seconds: the sum over trials of start-up + training wall-clock (`startup_s` + `wall_s`, read back
from MLflow; an ASHA-stopped trial counts up to its last report). ASHA's first rung is raised past the searched
warmups (tune/schedulers.py `asha_grace_epochs`: 2 epochs here). Goal (issue #14): ASHA's compute over the searched space <= 40% of the
grid's, with its best val_acc within 0.3 points of the grid's best. The baseline is left out of both (it is no point
of the space, and both studies train it alike, to the end); the share with the baseline counted is a contrast row.
"""
from __future__ import annotations

import time
from typing import Any

from bench import common

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
        study = load_study(common.STUDY_FILE, {**spec["sets"], "tuner.scheduler": scheduler})
        t = time.time()
        report = run_study(study, source=str(common.STUDY_FILE), study_text=common.STUDY_FILE.read_text(),
                           name=f"bench-{scheduler}-{time.time_ns()}", storage=f"{root}/ray",
                           mlflow_uri=f"sqlite:///{root}/mlflow.db", run_root=root)
        s = report["study"]
        records = records_from_mlflow(s["tracking_uri"], s["experiment_id"], s["parent_run_id"])
        runners = _trial_runners(s["tracking_uri"], [r["run_id"] for r in records])
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
                       | {"trial_runner": runners.get(r["run_id"])} for r in records],
        }
    stop.set()
    return {"ray": ray_info, "studies": out, "resources_timeline": samples}


def _trial_runners(tracking_uri: str, run_ids: list[str]) -> dict[str, Any]:
    """Each trial run's `trial_runner` tag: "in_process" for a trial trained in Tune's trial process, None for one
    that went through Ray Train's TorchTrainer (train/inprocess.py sets it; train/ray_worker.py does not)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    return {rid: client.get_run(rid).data.tags.get("trial_runner") for rid in run_ids}


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
    got = common.run_child("bench.search_efficiency:child", {"sets": sets, "schedulers": ["fifo", "asha"]},
                           timeout_s=900 if quick else 2400, log_name="search_efficiency")
    return analyse(got, sets)


def cut_short(grid: list[dict], asha: list[dict]) -> int:
    """ASHA trials that trained fewer steps than the same config did in the grid (not counting divergence)."""
    full = {(t["global_batch_size"], t["rule"], t["warmup_epochs"], t["is_baseline"]): t["steps"] for t in grid}
    return sum(1 for t in asha if t["status"] != "diverged" and t["steps"] is not None
               and t["steps"] < (full.get((t["global_batch_size"], t["rule"], t["warmup_epochs"], t["is_baseline"]))
                                 or 0))


def analyse(got: dict[str, Any], sets: dict[str, Any]) -> dict[str, Any]:
    """The figures, from the child's raw per-trial records (kept in the JSON, so the analysis can be re-run)."""
    grid, asha = got["studies"]["fifo"], got["studies"]["asha"]
    cg, ca = compute(grid["trials"]), compute(asha["trials"])
    sg, sa = (compute([t for t in ts if not t["is_baseline"]]) for ts in (grid["trials"], asha["trials"]))
    share = common.ratio(sa["trial_s"], sg["trial_s"])
    share_all = common.ratio(ca["trial_s"], cg["trial_s"])
    gap = (best(grid["trials"]) - best(asha["trials"])) * 100
    stopped = sum(t["status"] == "stopped_early" for t in asha["trials"])
    n_cut = cut_short(grid["trials"], asha["trials"])
    every = grid["trials"] + asha["trials"]
    in_process = sum(t.get("trial_runner") == "in_process" for t in every)
    summary = [
        common.figure("ASHA trial-seconds / grid trial-seconds (start-up + training), searched trials", share,
                      unit="", goal=f"<= {GOAL_SHARE:.2f}", met=share <= GOAL_SHARE, key="asha_vs_grid"),
        common.figure("same, the baseline counted too (trained alike by both)", share_all, unit=""),
        common.figure("grid best val_acc - ASHA best val_acc", gap, unit=" points",
                      goal=f"<= {TOLERANCE_POINTS}", met=gap <= TOLERANCE_POINTS, key="asha_gap"),
        common.figure("trials trained in Tune's trial process (tuner.in_process)", common.ratio(in_process, len(every)),
                      shown=f"{in_process} / {len(every)}"),
        common.figure("median trial start-up, grid / ASHA", common.median(t["startup_s"] for t in grid["trials"]),
                      unit=" s", shown=f"{common.median(t['startup_s'] for t in grid['trials']):.2f} s / "
                                       f"{common.median(t['startup_s'] for t in asha['trials']):.2f} s"),
        common.figure("ASHA / grid, training seconds only (start-up excluded)",
                      common.ratio(ca["train_s"], cg["train_s"]) * 100, unit="%"),
        common.figure("ASHA / grid, study wall-clock", common.ratio(asha["study_s"], grid["study_s"]) * 100, unit="%"),
        common.figure("start-up share of trial-seconds, grid / ASHA", common.ratio(cg["startup_s"], cg["trial_s"]) * 100,
                      unit="%", shown=f"{common.ratio(cg['startup_s'], cg['trial_s']):.0%} / "
                                      f"{common.ratio(ca['startup_s'], ca['trial_s']):.0%}"),
        common.figure("trials ASHA cut short / trials", common.ratio(n_cut, len(asha["trials"])), unit="",
                      shown=f"{n_cut} / {len(asha['trials'])}"),
    ]
    return {
        "settings": {"study": str(common.STUDY_FILE.relative_to(common.REPO_ROOT)), "sets": sets,
                     "asha": f"grace period {asha.get('asha_grace_epochs')} epochs (tuner.grace_period_epochs 1 raised past the "
                             f"searched warmups), reduction_factor 3 (the study's tuner default)",
                     "compute": "sum over trials of startup_s + wall_s, from MLflow"},
        "compute": {"grid": cg, "asha": ca},
        "compute_searched": {"grid": sg, "asha": sa},
        "compute_share": share,
        "compute_share_with_baseline": share_all,
        "best_val_acc": {"grid": best(grid["trials"]), "asha": best(asha["trials"]),
                         "grid_incl_baseline": best(grid["trials"], False),
                         "asha_incl_baseline": best(asha["trials"], False)},
        "gap_points": gap,
        "asha_stopped_early": stopped,  # as recorded: includes trials Tune stopped at max_t after their last epoch
        "asha_cut_short": n_cut,
        "in_process_trials": in_process,
        "trials": len(every),
        "startup_share_of_compute": {"grid": common.ratio(cg["startup_s"], cg["trial_s"]),
                                     "asha": common.ratio(ca["startup_s"], ca["trial_s"])},
        "ray": got["ray"],
        "studies": got["studies"],
        "resources_timeline": got.get("resources_timeline"),
        "summary": summary,
    }
