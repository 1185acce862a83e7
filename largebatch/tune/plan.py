"""A study's first two stages (tune/driver.py runs them all): the plan (what will run: the searcher's points, the
scheduler and what it derives, e.g. sha's rungs, the stopper, the training-set sizes) and the preflight (storage,
MLflow, the run to resume or extend), both before Ray starts or a run is written. `StudyPlan` is what they decide;
`StudyState` carries it through the later stages (tune/driver.py: open runs, with tune/parent.py; run; close)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from largebatch.config import StudyConfig, baseline_trial
from largebatch.errors import BadInput

if TYPE_CHECKING:
    from ray.tune import ResultGrid
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import Searcher

    from largebatch.tracking import Tracker
    from largebatch.tune.runtime import StudyRuntime
    from largebatch.tune.stopper import TargetStopper


@dataclass
class StudyPlan:
    """What the study will run, and where it is recorded: `plan_study` fills it, `preflight_study` adds the run to
    resume (`target`) or extend (`extending`; the searcher then yields only the trials that run lacks)."""
    study: StudyConfig
    source: str
    study_text: str
    exp_name: str
    run_root: str  # absolute: the driver may change directory
    tracking_uri: str
    storage_path: str
    mlflow_uri: Optional[str]  # as given (the report's `largebatch ui` line names it)
    resume_hint: Optional[str]
    live: bool
    cwd: str
    base_tree: dict
    baseline_tree: dict
    critical: Optional[dict]  # tune/critical.py's placement (None: no around_critical entry)
    searcher: Searcher
    n_trials: int
    scheduler: TrialScheduler
    stopper: Optional[TargetStopper]
    train_sizes: dict[int, int]
    in_process: bool
    target: Optional[dict] = None  # the run --resume continues
    extending: Optional[dict] = None  # the completed run --extend adds trials to


@dataclass
class StudyState:
    """The plan and what the later stages make of it: the Ray cluster, the MLflow runs, Tune's results."""
    plan: StudyPlan
    info: dict  # raylib.init_ray's answer
    max_conc: int = 0
    tracker: Optional[Tracker] = None
    exp_id: Optional[str] = None
    parent_id: Optional[str] = None
    run_name: str = ""
    undo_lost: Optional[Callable[[], object]] = None  # raywatch.on_cluster_lost's undo
    runtime: Optional[StudyRuntime] = None
    profile: Optional[dict] = None
    profile_s: float = 0.0
    study_s: float = 0.0
    grid: ResultGrid | list | None = None  # Tune's results, or the trials it ended with (tune/progress.py)
    marked: Optional[str] = None  # what _mark_unfinished could not log (MLflow down)

    def runs(self) -> tuple[Tracker, str, str]:
        """(tracker, experiment id, parent run id): set by the open-runs stage (tune/driver.py open_runs)."""
        assert self.tracker is not None and self.exp_id is not None and self.parent_id is not None
        return self.tracker, self.exp_id, self.parent_id


def create_scheduler(study: StudyConfig):
    """The study's trial scheduler (tune/schedulers.py; the name was checked at load time)."""
    from largebatch.tune.schedulers import SCHEDULERS

    t = study.tuner
    if t.scheduler not in SCHEDULERS:
        from largebatch.errors import unknown_choice

        raise BadInput(unknown_choice("scheduler", t.scheduler, SCHEDULERS.names()), field="tuner.scheduler")
    return SCHEDULERS.get(t.scheduler)(study)


def _train_sizes(study: StudyConfig, trees: list[dict]) -> dict[int, int]:
    """Training-set sizes per train_subset, computed once on the driver (not in every trial), by the task."""
    from largebatch.tasks import task_of, train_size

    subsets = {t["data"].get("train_subset") or 0 for t in trees}
    for key, domain in study.search.items():
        if key == "data.train_subset":
            subsets |= {v or 0 for v in next(iter(domain.values()))}
    n = train_size(task_of(study.base), study.base)
    # a search over the data itself: each trial counts (and checks the subset against) its own data
    varies = any(k in ("data.dataset", "data.path") or k.startswith("task.") for k in study.search)
    for s in subsets:
        if s > n and not varies:
            raise BadInput(f"got {s}, more than the {n} training examples; use at most {n}",
                           field="data.train_subset")
    return {s: s or n for s in subsets if s <= n}


def runs_in_process(study: StudyConfig) -> bool:
    """1-worker trials of a task fed from memory or a Dataset run in Tune's trial process (train/inprocess.py);
    a Ray Data task needs Train's dataset shards, so it keeps TorchTrainer."""
    from largebatch.tasks import task_of

    t = study.tuner
    return t.in_process and t.workers_per_trial == 1 and task_of(study.base).ray_data is None


def plan_study(study: StudyConfig, *, source: str, study_text: str, name: Optional[str], storage: Optional[str],
               mlflow_uri: Optional[str], run_root: str, resume_hint: Optional[str], live: bool) -> StudyPlan:
    """What will run: the trial configs' trees, the searcher's points (around_critical placed from B_noise first), the
    scheduler (sha: its rungs become checkpoint epochs), the stopper and the training-set sizes. Writes nothing."""
    from largebatch.storage import resolve_storage
    from largebatch.tasks.build import absolute_paths
    from largebatch.tracking import resolve_tracking_uri
    from largebatch.tune.critical import place_critical
    from largebatch.tune.space import create_searcher
    from largebatch.tune.stopper import create_stopper

    exp_name = name or study.name
    run_root = str(Path(run_root).resolve())  # absolute from here on: the driver may change directory
    tracking_uri = resolve_tracking_uri(mlflow_uri, run_root)
    storage_path = resolve_storage(storage, run_root)
    # ---- everything that can be wrong is checked before Ray starts or a run is created
    # relative paths (data.path, files named in task.kwargs) made absolute here, against the folder the study was
    # loaded (and its task checked) from: the profile and every trial, each in its own folder, read the same files
    cwd = os.getcwd()
    base_tree = absolute_paths(study.base.model_dump(mode="json"), cwd)
    baseline_tree = absolute_paths(baseline_trial(study, source).model_dump(mode="json"), cwd) \
        if study.baseline is not None else base_tree
    study, critical = place_critical(study, source, run_root)  # around_critical -> {grid: [..]}, else unchanged
    searcher, n_trials = create_searcher(study, {} if study.baseline is not None else None)
    scheduler = create_scheduler(study)
    rungs = getattr(scheduler, "rungs", None)
    if rungs:  # sha: every trial saves a checkpoint at each rung, where it may pause (tune/sha.py)
        if not runs_in_process(study):  # a Ray Data task: its trials go through TorchTrainer
            from largebatch.config.names import SHA_NEEDS_IN_PROCESS

            raise BadInput(SHA_NEEDS_IN_PROCESS + "; a Ray Data task's trials go through Ray Train", source=source,
                           field="tuner.scheduler")
        ckpt = base_tree.setdefault("checkpoint", {})
        ckpt["at_epochs"] = sorted(set(ckpt.get("at_epochs") or []) | set(rungs))
    stopper = create_stopper(study)  # budget.stop_at_target: searched trials end at the baseline's quality
    train_sizes = _train_sizes(study, [base_tree, baseline_tree])
    return StudyPlan(study=study, source=source, study_text=study_text, exp_name=exp_name,
                     run_root=run_root, tracking_uri=tracking_uri, storage_path=storage_path, mlflow_uri=mlflow_uri,
                     resume_hint=resume_hint, live=live, cwd=cwd, base_tree=base_tree, baseline_tree=baseline_tree,
                     critical=critical, searcher=searcher, n_trials=n_trials, scheduler=scheduler, stopper=stopper,
                     train_sizes=train_sizes, in_process=runs_in_process(study))


def preflight_study(plan: StudyPlan, *, resume: bool, extend: bool) -> None:
    """The checks before Ray starts or a run is written: storage and MLflow reachable and writable, and the run
    --resume continues or --extend adds to (an extension's searcher then yields only the trials that run lacks)."""
    from largebatch.storage import preflight_storage
    from largebatch.tracking import preflight_tracking
    from largebatch.tune.extend import extension_searcher, find_extendable
    from largebatch.tune.study_runs import find_resumable

    preflight_storage(plan.storage_path)
    preflight_tracking(plan.tracking_uri)
    plan.target = find_resumable(plan.storage_path, plan.exp_name, plan.tracking_uri) if resume else None
    plan.extending = find_extendable(plan.storage_path, plan.exp_name, plan.tracking_uri) if extend else None
    if plan.extending is not None:  # only the trials the study lacks, under its parent run
        plan.searcher, plan.n_trials = extension_searcher(plan.study, plan.base_tree, plan.baseline_tree, plan.source,
                                                          plan.tracking_uri, plan.extending)


def cluster_slots(plan: StudyPlan, info: dict) -> int:
    """How many trials run at once (tuner.max_concurrent, else what the cluster holds); BadInput when it cannot
    hold one trial."""
    t = plan.study.tuner
    per_trial = t.workers_per_trial * t.cpus_per_worker
    if info["cpus"] < per_trial or (t.use_gpu and info["gpus"] < t.workers_per_trial):
        need = f"{t.workers_per_trial} workers x {t.cpus_per_worker} CPUs" + (" + 1 GPU each" if t.use_gpu else "")
        raise BadInput(f"one trial needs {need}, but the Ray cluster has {info['cpus']} CPUs and {info['gpus']} "
                       f"GPUs; lower tuner.workers_per_trial or tuner.cpus_per_worker, or use a larger cluster",
                       source=plan.source, field="tuner.workers_per_trial")
    return t.max_concurrent or max(1, min(info["cpus"] // per_trial,
                                          info["gpus"] // t.workers_per_trial if t.use_gpu else 10**6))
