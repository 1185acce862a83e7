"""`largebatch tune`: run a study on Ray Tune, record it in MLflow, print and store the report.

Flow: validate everything (config, cluster fit, storage, MLflow) -> parent MLflow run -> Tuner over the searcher
(baseline first) -> mark ASHA-stopped trials -> rebuild trial records FROM MLFLOW -> report. The report is built
from MLflow alone, so `largebatch report` gives the same answer later.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

from largebatch.config import StudyConfig, baseline_trial, flatten
from largebatch.errors import BadInput
from largebatch.redact import redact_uri
from largebatch.tune.abort import child_runs
from largebatch.tune.study_runs import find_resumable
from largebatch.vocab import Status


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


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


def run_study(study: StudyConfig, *, source: str, study_text: str, name: Optional[str] = None,
              storage: Optional[str] = None, mlflow_uri: Optional[str] = None, address: Optional[str] = None,
              run_root: str = "runs", resume: bool = False, resume_hint: Optional[str] = None,
              live: bool = True, extend: bool = False) -> dict[str, Any]:
    """Run a study; with resume=True continue the newest run of this study (same name + storage) whose driver
    died: finished trials are kept, unfinished ones resume from their checkpoints, the MLflow parent is reused.
    With extend=True run only the trials the newest completed run of this study lacks, under its parent
    (tune/extend.py). A `search:` entry {around_critical: [..]} is placed from B_noise first (tune/critical.py).

    Once the parent run exists, anything that stops the driver (a signal, Ray failing under it) closes the MLflow
    runs as KILLED/FAILED and raises StudyAborted with `resume_hint`, the command that continues the study.

    Progress shows live on a terminal (live=False: plain lines, as anywhere else); see largebatch/console.py."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter, SearchAlgorithm, Searcher

    from largebatch import interrupts, quiet
    from largebatch.console import StudyDisplay, wants_live
    from largebatch.raylib import init_ray, shutdown_ray
    from largebatch.raywatch import on_cluster_lost
    from largebatch.tune.abort import abort_study, report_hint
    from largebatch.storage import preflight_storage, resolve_storage
    from largebatch.metrics import summary_name
    from largebatch.tracking import Tracker, preflight_tracking, resolve_tracking_uri
    from largebatch.tracking_store import database_scheme
    from largebatch.tune.space import create_searcher
    from largebatch.tune import progress
    from largebatch.tune.finish import finish_study
    from largebatch.tune.runtime import StudyRuntime
    from largebatch.tune.trainable import tune_trial
    from largebatch.tune.critical import log_placement, place_critical
    from largebatch.tune.extend import extension_searcher, find_extendable, reopen_parent
    from largebatch.tune.throughput import fingerprint_while_ray_starts, study_profile
    from largebatch.tune.stopper import create_stopper
    from largebatch.tasks.build import absolute_paths
    from largebatch.report.speed import step_times
    from largebatch.report.target import explicit_target

    t = study.tuner
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
    preflight_storage(storage_path)
    preflight_tracking(tracking_uri)
    target = find_resumable(storage_path, exp_name, tracking_uri) if resume else None
    extending = find_extendable(storage_path, exp_name, tracking_uri) if extend else None
    if extending is not None:  # only the trials the study lacks, under its parent run
        searcher, n_trials = extension_searcher(study, base_tree, baseline_tree, source, tracking_uri, extending)

    per_trial = t.workers_per_trial * t.cpus_per_worker
    in_process = runs_in_process(study)
    fingerprint = None if resume else fingerprint_while_ray_starts(study, base_tree)  # the profile's cache key
    info = init_ray(address)
    aborted: Optional[BaseException] = None
    parent_id: Optional[str] = None
    undo_lost = None
    try:
        if info["cpus"] < per_trial or (t.use_gpu and info["gpus"] < t.workers_per_trial):
            need = f"{t.workers_per_trial} workers x {t.cpus_per_worker} CPUs" + (" + 1 GPU each" if t.use_gpu else "")
            raise BadInput(f"one trial needs {need}, but the Ray cluster has {info['cpus']} CPUs and {info['gpus']} "
                           f"GPUs; lower tuner.workers_per_trial or tuner.cpus_per_worker, or use a larger cluster",
                           source=source, field="tuner.workers_per_trial")
        max_conc = t.max_concurrent or max(1, min(info["cpus"] // per_trial,
                                                  info["gpus"] // t.workers_per_trial if t.use_gpu else 10**6))

        tracker = Tracker(tracking_uri)
        artifact_location = None
        if tracking_uri.startswith("sqlite:") or database_scheme(tracking_uri) is not None:  # not <cwd>/mlruns
            artifact_location = (Path(run_root).resolve() / "mlartifacts").as_uri()
        exp_id = tracker.experiment_id(exp_name, artifact_location)
        if target is not None:
            run_name, parent_id = target["run_name"], target["parent_id"]
            tracker.client.update_run(parent_id, status="RUNNING")  # an aborted driver left it KILLED/FAILED
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_name = f"{exp_name}-{stamp}"
            if extending is not None:
                parent_id = extending["parent_id"]
                reopen_parent(tracker, extending, run_name, study_text, stamp)
                if stopper is not None:  # no baseline runs in an extension: the finished one sets the target
                    from largebatch.records import records_from_mlflow

                    stopper.learn_from_records(records_from_mlflow(tracking_uri, exp_id, parent_id))
            else:
                parent_id = _start_parent(tracker, exp_id, stamp, run_name, study, t, source, study_text, n_trials,
                                          max_conc, storage_path, info, base_tree)
        log_placement(tracker, parent_id, critical)
        # the head lost while the main thread is blocked in Ray: the watch's thread closes the runs (raywatch.py)
        undo_lost = on_cluster_lost(lambda e: str(abort_study(tracker, exp_id, exp_name, parent_id, e, resume_hint)))
        print(f"[largebatch] study {exp_name!r}: {n_trials} trials, {max_conc} at a time, "
              f"{t.workers_per_trial} worker(s) x {t.cpus_per_worker} CPU each; MLflow {redact_uri(tracking_uri)} "
              f"(parent run {parent_id}); storage {redact_uri(storage_path)}", flush=True)
        if target is not None:
            print(f"[largebatch] resuming {redact_uri(target['path'])} (finished trials are kept, unfinished ones "
                  f"resume from their last checkpoint)", flush=True)
        runtime = StudyRuntime(
            base_tree=base_tree, baseline_tree=baseline_tree, source=source, seeds=tuple(t.seeds),
            workers_per_trial=t.workers_per_trial, cpus_per_worker=t.cpus_per_worker, use_gpu=t.use_gpu,
            max_failures=t.max_failures, train_sizes=train_sizes, tracking_uri=tracking_uri, experiment_id=exp_id,
            parent_run_id=parent_id, run_name=run_name, storage_path=storage_path,
            placement_strategy="SPREAD" if info["nodes"] > 1 else "PACK", in_process=in_process, cwd=cwd,
            credentials=study.credentials())
        resources: dict[str, float]
        if in_process:  # the trial's process trains: it holds the worker's CPUs (and GPU)
            resources = {"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}
        else:
            # The trial's function holds no CPU (its DDP workers hold them): a bundle of {CPU: 0} alone is refused,
            # so it takes 1 MiB of "memory", which every node has. The ConcurrencyLimiter caps how many run at once.
            resources = {"CPU": 0, "memory": 2**20}
        trainable = tune.with_resources(tune.with_parameters(tune_trial, rt=runtime), resources)
        if target is not None:
            # the searcher (and its position), scheduler and trial list come back from the run folder
            tuner = tune.Tuner.restore(target["path"], trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            limited = ConcurrencyLimiter(searcher, max_concurrent=max_conc)
            search_alg: Searcher | SearchAlgorithm = limited
            if hasattr(scheduler, "holding"):  # sha: trial processes kept between rungs (tune/sha.py HeldSearch)
                from largebatch.tune.sha import HeldSearch

                search_alg = HeldSearch(limited)
            # the ConcurrencyLimiter alone caps concurrency (Tune warns when max_concurrent_trials repeats it);
            # verbose=0 with the old output engine keeps Tune's tables off (largebatch/quiet.py)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=search_alg,
                                            reuse_actors=in_process,  # one process, its data cache, many trials
                                            scheduler=scheduler, num_samples=n_trials, metric=t.metric,
                                            mode=t.mode, time_budget_s=t.time_budget_s),
                run_config=tune.RunConfig(name=run_name, storage_path=storage_path, verbose=quiet.tune_verbose(),
                                          stop=stopper,
                                          # in-process trials: Tune restarts a killed trial from its checkpoint
                                          # (TorchTrainer trials: Ray Train restarts their workers itself)
                                          failure_config=tune.FailureConfig(
                                              max_failures=t.max_failures if in_process else 0),
                                          checkpoint_config=tune.CheckpointConfig(
                                              num_to_keep=study.base.checkpoint.num_to_keep),
                                          callbacks=[progress.create_callback()]),
            )
        display = StudyDisplay(title=exp_name, total=n_trials, metric=t.metric, score=summary_name(t.metric),
                               mode=t.mode or "max", slots=max_conc,
                               live=live and wants_live() and not quiet.is_verbose(),
                               # the best so far on the report's basis: tolerance, units, target, step times
                               tolerance=study.report.tolerance, units=study.report.tolerance_units,
                               target=explicit_target(t.metric, study.base.budget.target_val_acc))
        progress.activate(display, runtime)
        t0 = time.time()
        try:
            # each batch size's step time measured alone, before any trial shares the machine (tune/throughput.py)
            profile = study_profile(study, tracker, parent_id, base_tree, baseline_tree, run_root, target is not None,
                                    fingerprint=fingerprint)
            profile_s = time.time() - t0
            display.step_s = step_times(profile)  # projected times to target, as the report's (report/speed.py)
            if stopper is not None and target is None:  # tuner.budget_runs: step times, unit, gate (tune/stopper.py)
                stopper.plan(profile, runtime, searcher)
            display.start()
            grid: tune.ResultGrid | list  # Tune's results, or the trials it ended with (tune/progress.py)
            try:
                grid = tuner.fit()
            except Exception as e:
                # once every trial has ended, Ray reads the study's results back from storage (tune/tune.py `run` ->
                # ExperimentAnalysis): with S3 down that raises, though nothing is lost (docs/design.md §10)
                ended = progress.ended_results()
                if ended is None:
                    raise
                grid = ended
                first = (str(e).strip().splitlines() or [""])[0][:300]
                print(redact_uri(f"[largebatch] Tune could not read the results back from {storage_path} "
                                 f"({type(e).__name__}: {first}); using the trials it ended with"), flush=True)
            finally:
                display.stop()
                progress.deactivate()
            study_s = time.time() - t0
            marked = _mark_unfinished(tracker, exp_id, parent_id, grid, stopper.stopped if stopper else {})
            if stopper is not None and stopper.budget_runs is not None:
                runtime.extra["budget"] = stopper.finish()  # what the budget did: printed, and for the report
        except BaseException as e:  # KeyboardInterrupt too: SIGINT/SIGTERM/SIGHUP arrive as one
            aborted = e
    except BaseException as e:  # before the trials start: with the parent open, it is closed like any abort
        if parent_id is None:
            raise
        aborted = e
    finally:
        if undo_lost is not None:
            undo_lost()
        if info["started"]:
            shutdown_ray()
            interrupts.reinstall()  # ray.shutdown() leaves SIGTERM at its default: the report is still ours to close
    if aborted is not None:
        # closed only now, with our head (and every trial process on it) stopped: a trial that was starting when
        # the signal came cannot open its run after the open runs were listed and closed
        raise abort_study(tracker, exp_id, exp_name, parent_id, aborted, resume_hint) from None
    try:
        return finish_study(tracker, grid, runtime, study, marked=marked, study_s=study_s, n_trials=n_trials,
                            slots=max_conc, exp_name=exp_name, run_root=run_root, mlflow_uri=mlflow_uri,
                            profile_s=profile_s, profile=profile)
    except KeyboardInterrupt as e:  # a signal while the report is built: the parent is closed KILLED, not left RUNNING
        raise abort_study(tracker, exp_id, exp_name, parent_id, e, report_hint(tracker, parent_id, resume_hint,
                                                                              exp_name)) from None


def _start_parent(tracker, exp_id: str, stamp: str, run_name: str, study: StudyConfig, t, source: str,
                  study_text: str, n_trials: int, max_conc: int, storage_path: str, info: dict,
                  base_tree: dict) -> str:
    from largebatch.report.target import explicit_target
    from largebatch.tracking import KIND_TAG

    parent_id = tracker.start_run(exp_id, f"study {stamp}", params={
        **{f"tuner.{k}": v for k, v in t.model_dump(mode="json").items()},
        **{f"report.{k}": v for k, v in study.report.model_dump(mode="json").items()},  # tolerance and its units
        "study": study.name, "source": source, "n_trials": n_trials, "max_concurrent": max_conc,
        "report.tolerance": study.report.tolerance, "storage": redact_uri(storage_path),
        "report.target": explicit_target(t.metric, study.base.budget.target_val_acc),
        "search_keys": ",".join(study.search)},
        tags={KIND_TAG: "study", "git_commit": _git_commit(), "ray_address": info["address"],
              "ray_nodes": str(info["nodes"]), "storage": redact_uri(storage_path), "run_name": run_name})
    tracker.log_text(parent_id, study_text, "study.yaml")
    tracker.log_text(parent_id, json.dumps({"search": study.search, "baseline": study.baseline,
                                            "resolved_base": flatten(base_tree)}, indent=2, default=str),
                     "search_space.json")
    return parent_id


def _open_children(tracker, exp_id: str, parent_id: str) -> list:
    """The study's child runs whose status tag still says running."""
    from largebatch.tracking import STATUS_TAG

    return [r for r in child_runs(tracker, exp_id, parent_id) if r.data.tags.get(STATUS_TAG) == Status.RUNNING]


def _mark_unfinished(tracker, exp_id: str, parent_id: str, grid, at_target: Optional[dict] = None) -> Optional[str]:
    """Close every child run that did not log its own end: a trial whose last report was its final one (it could
    not log its end: MLflow was down) -> the status it reported; stopped by the scheduler (ASHA) -> stopped_early;
    at_target: {Tune trial id: reason} of the trials the target stopper ended (tune/stopper.py). Its Tune trial
    errored (its process was killed, e.g. by Ray's memory monitor or a SIGKILL) -> failed, with the reason. Tune
    finished, so a run still open after that ended without a word: failed.
    Returns what could not be done when MLflow cannot be reached (None when all went through); never raises."""
    from largebatch.failures import describe

    from largebatch.tracking import FINAL_STATUSES, TRIAL_DIR_TAG, TRIAL_TAG, tracking_error

    # a trial killed before its first report has no trial_id among its metrics: its folder name still matches
    by_trial = {(r.metrics or {}).get("trial_id"): r for r in grid if (r.metrics or {}).get("trial_id")}
    by_dir = {Path(r.path).name: r for r in grid if getattr(r, "path", None)}
    try:
        open_runs = tracker.call(_open_children, tracker, exp_id, parent_id)
    except Exception as e:
        return f"the end of unfinished trial runs ({tracking_error(e)})"
    for run in open_runs:
        tags = run.data.tags
        r = by_trial.get(tags.get(TRIAL_TAG)) or by_dir.get(tags.get(TRIAL_DIR_TAG, ""))
        err = getattr(r, "error", None) if r is not None else None
        m = dict(getattr(r, "metrics", None) or {})
        if r is not None and err is None and m.get("is_final") and m.get("status") in FINAL_STATUSES:
            status, reason = m["status"], m.get("reason")
        elif r is not None and err is None:
            status = Status.STOPPED_EARLY.value
            reason = (at_target or {}).get(m.get("trial_id")) or "stopped by the scheduler (ASHA)"
        else:
            status = Status.FAILED.value
            reason = describe(err) if err is not None else "the trial's process ended without a final report"
        tracker.log_final(run.info.run_id,
                          {k: m[k] for k in ("best_val_acc", "wall_s", "steps", "startup_s") if k in m},
                          status, reason)
        tracker.end_run(run.info.run_id, "KILLED" if status == Status.STOPPED_EARLY else
                        "FAILED" if status == Status.FAILED else "FINISHED")
    return None
