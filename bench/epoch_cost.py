"""Per-epoch fixed cost (issue #14): what an epoch costs beyond its training steps, when the steps are few.

The trial: the main study's MLP (tune_spaces/fashion-mnist.yaml base) on a 4,000-example training set with a
1,000-example validation subset: `data.train_subset: 4000` (Fashion-MNIST's training split, seeded) and
`data.eval_subset: 1000` (the first 1,000 of a fixed permutation of the 10,000-example test split, the same for every
trial and seed: a dataset of 4,000 training examples has a proportionally small validation split). B=1024 (3
optimizer steps an epoch, 3,072 examples: the loop drops the last partial batch), 30 epochs, evaluated every epoch
on the subset. The contrast variant evaluates every epoch on the full 10,000-example test split (`data.eval_subset`
unset), reported beside it with no goal. Both variants are one study, a grid over `data.eval_subset` [1000, null],
so their trials alternate in the same trial process. It runs through the path a study's trial takes: `run_study`
(no baseline, no throughput profile, one trial at a time), so each trial trains in Tune's trial process
(train/inprocess.py) with MLflow logging (SQLite, as `make demo`), a Tune report every epoch and checkpoints at the
default cadence (`checkpoint.every_s: 60`, and always after the last epoch). Ray is started by run_study
(`init_ray`: a local head, stopped by PID). Three seeds per variant (--quick: one seed, 6 epochs) run one after the
other in the same trial process.

What is timed, per epoch e, from the metrics the trial logged to MLflow (the loop's own clocks, largebatch/train/
loop.py `epoch_metrics`):
- epoch wall-clock = wall_s[e] - wall_s[e-1]: `wall_s` is the trial's clock at the end of epoch e's evaluation, so
  the difference is one whole cycle: the previous epoch's report (MLflow log_batch, tune.report, a checkpoint if
  one was due), this epoch's LR table and permutation, its training steps and its evaluation.
- epoch training time = the examples of the epoch / `throughput` = the loop's `train_s`: from the epoch's first
  batch to the end of its last optimizer step (forward, backward, optimizer step and the loop's per-step metric
  sums; not the evaluation).
- fixed cost = (epoch wall-clock - epoch training time) / epoch training time, summed over the epochs 2..N-1 of
  each trial (epoch 0 has no predecessor; epoch 1's cycle holds the trial's first report, which creates the MLflow
  metric keys), the median over the variant's trials. Split into evaluation (`epoch_s` - training time: the
  evaluation on the eval split and the all-reduce of the epoch's sums) and the rest (report, logging, checkpoint,
  next epoch's set-up).
Goal: <= 0.5, with the 1,000-example validation subset.
"""
from __future__ import annotations

import os
import time
from typing import Any

from bench import common

NAME = "epoch_cost"
GOAL = 0.5
SUBSET, BATCH = 4000, 1024
EVAL_SUBSET, EVAL_FULL = 1000, 10_000  # the benchmark's validation subset; Fashion-MNIST's whole test split
FULL = {"epochs": 30, "seeds": [0, 1, 2]}
QUICK = {"epochs": 6, "seeds": [0]}
KEYS = ("wall_s", "epoch_s", "throughput", "steps", "global_batch_size")


def study_sets(epochs: int, seeds: list[int]) -> dict[str, Any]:
    return {"data.train_subset": SUBSET, "data.global_batch_size": BATCH, "budget.epochs": epochs,
            "search.data.global_batch_size": {"grid": [BATCH]}, "search.scaling.rule": {"grid": ["none"]},
            "search.schedule.warmup_epochs": {"grid": [0]}, "search.data.eval_subset": {"grid": [EVAL_SUBSET, None]},
            "tuner.seeds": seeds, "tuner.max_concurrent": 1, "tuner.profile": False}


def child(spec: dict) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from largebatch.config import load_study
    from largebatch.records import records_from_mlflow
    from largebatch.tune.driver import run_study

    os.environ.pop("RAY_ADDRESS", None)
    root = common.short_tmpdir()
    study = load_study(common.STUDY_FILE, spec["sets"]).model_copy(update={"baseline": None})
    t = time.time()
    report = run_study(study, source=str(common.STUDY_FILE.relative_to(common.REPO_ROOT)),
                       study_text=common.STUDY_FILE.read_text(), name=f"bench-epoch-cost-{time.time_ns()}",
                       run_root=root, live=False)
    call_s = time.time() - t
    s = report["study"]
    client = MlflowClient(s["tracking_uri"])
    trials = []
    for r in records_from_mlflow(s["tracking_uri"], s["experiment_id"], s["parent_run_id"]):
        per_epoch: dict[int, dict[str, float]] = {}
        for key in KEYS:
            # the first point per step: the trial's end re-logs final values (records.py does the same)
            for point in sorted(client.get_metric_history(r["run_id"], key), key=lambda q: (q.step, q.timestamp)):
                per_epoch.setdefault(point.step, {"epoch": point.step}).setdefault(key, point.value)
        run = client.get_run(r["run_id"]).data
        trials.append({"seed": r["seed"], "status": r["status"], "startup_s": r["startup_s"], "wall_s": r["wall_s"],
                       "fit_s": r["fit_s"], "trial_runner": run.tags.get("trial_runner"),
                       "eval_subset": run.params.get("data.eval_subset"),
                       "epochs": [per_epoch[k] for k in sorted(per_epoch)]})
    return {"run_study_call_s": call_s, "study_s": s.get("study_s"), "trials": trials}


def run(quick: bool = False) -> dict[str, Any]:
    size = QUICK if quick else FULL
    sets = study_sets(size["epochs"], size["seeds"])
    got = common.run_child("bench.epoch_cost:child", {"sets": sets}, timeout_s=900 if quick else 1800,
                           log_name="epoch_cost")
    return analyse(got, sets)


def per_trial(epochs: list[dict], first: int = 2) -> dict[str, Any]:
    """The fixed-cost figures of one trial from its per-epoch metrics (see the module docstring)."""
    rows = []
    for prev, cur in zip(epochs, epochs[1:]):
        if cur["epoch"] < first or not cur.get("throughput"):
            continue
        examples = (cur["steps"] - prev["steps"]) * cur["global_batch_size"]
        train = examples / cur["throughput"]
        rows.append({"epoch": int(cur["epoch"]), "cycle_s": cur["wall_s"] - prev["wall_s"], "train_s": train,
                     "eval_s": cur["epoch_s"] - train, "rest_s": (cur["wall_s"] - prev["wall_s"]) - cur["epoch_s"]})
    train = sum(r["train_s"] for r in rows)
    return {"epochs_counted": len(rows),
            "fixed_over_train": common.ratio(sum(r["cycle_s"] - r["train_s"] for r in rows), train),
            "eval_over_train": common.ratio(sum(r["eval_s"] for r in rows), train),
            "rest_over_train": common.ratio(sum(r["rest_s"] for r in rows), train),
            "train_s_median": common.median(r["train_s"] for r in rows),
            "eval_s_median": common.median(r["eval_s"] for r in rows),
            "rest_s_median": common.median(r["rest_s"] for r in rows),
            "cycle_s_median": common.median(r["cycle_s"] for r in rows),
            "per_epoch": rows}


def variant(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The median figures over one variant's trials."""
    return {"fixed_over_train": common.median(t["fixed_over_train"] for t in trials),
            "eval_over_train": common.median(t["eval_over_train"] for t in trials),
            "rest_over_train": common.median(t["rest_over_train"] for t in trials),
            **{k: common.median(t[k] for t in trials) for k in ("train_s_median", "eval_s_median", "rest_s_median")},
            "trials": len(trials)}


def analyse(got: dict[str, Any], sets: dict[str, Any]) -> dict[str, Any]:
    trials = [{**t, **per_trial(t["epochs"])} for t in got["trials"]]
    sub = variant([t for t in trials if t.get("eval_subset") == str(EVAL_SUBSET)])
    full = variant([t for t in trials if t.get("eval_subset") in (None, "None")])
    fixed = sub["fixed_over_train"]
    in_process = sum(t.get("trial_runner") == "in_process" for t in trials)
    epochs = sets["budget.epochs"]
    summary = [
        common.figure(f"per-epoch fixed cost (eval + checkpoint + report) / epoch training time, {SUBSET:,} examples "
                      f"with a {EVAL_SUBSET:,}-example validation subset, B={BATCH} (MLP, {epochs} epochs)", fixed,
                      goal=f"<= {GOAL}", met=fixed <= GOAL, key="epoch_fixed"),
        common.figure(f"  of which evaluation ({EVAL_SUBSET:,} test examples) / training time", sub["eval_over_train"]),
        common.figure("  of which report + MLflow log + checkpoint + next epoch's set-up / training time",
                      sub["rest_over_train"]),
        common.figure("  median seconds per epoch: training / evaluation / the rest", sub["train_s_median"], unit=" s",
                      shown=" / ".join(f"{sub[k]:.3f}" for k in ("train_s_median", "eval_s_median", "rest_s_median"))
                      + " s"),
        common.figure(f"contrast: the same, evaluated on the full {EVAL_FULL:,}-example test split every epoch",
                      full["fixed_over_train"]),
        common.figure(f"  of which evaluation ({EVAL_FULL:,} test examples) / training time", full["eval_over_train"]),
        common.figure("  of which the rest / training time", full["rest_over_train"]),
        common.figure("trials trained in Tune's trial process", common.ratio(in_process, len(trials)),
                      shown=f"{in_process} / {len(trials)}"),
    ]
    return {"settings": {"study": str(common.STUDY_FILE.relative_to(common.REPO_ROOT)), "sets": sets,
                         "baseline": None,
                         "eval_split": f"data.eval_subset {EVAL_SUBSET} (the first {EVAL_SUBSET:,} of a fixed "
                                       f"permutation of the {EVAL_FULL:,} test examples), every epoch; contrast: the "
                                       f"full test split",
                         "checkpoint": "default cadence (checkpoint.every_s 60, always after the last epoch)",
                         "epochs_counted": "2..N-1 of each trial"},
            "fixed_over_train": fixed, "eval_over_train": sub["eval_over_train"],
            "rest_over_train": sub["rest_over_train"], "subset": sub, "full_split": full,
            "in_process_trials": in_process, "run_study_call_s": got.get("run_study_call_s"),
            "study_s": got.get("study_s"), "trials": trials, "summary": summary}
