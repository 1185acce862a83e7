"""`largebatch tune`: run a study on Ray Tune, record it in MLflow, print and store the report.

The study runs in explicit stages, their state in one `StudyState` (tune/plan.py): plan (what will run: the
searcher's points, the scheduler and what it derives, the stopper; tune/plan.py) -> preflight (storage, MLflow, the
run to resume or extend, before Ray starts or a run is written; tune/plan.py) -> open runs (the parent MLflow run:
new, resumed or extended; here and tune/parent.py) -> run (the throughput profile, then the Tuner over the searcher,
baseline first; unfinished trials' runs closed) -> close (the report, rebuilt FROM MLFLOW, the parent's status, the
exit code; tune/finish.py). The report is built from MLflow alone, so `largebatch report` gives the same answer later.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from largebatch.config import StudyConfig
from largebatch.redact import redact_uri
from largebatch.tune.abort import child_runs
from largebatch.tune.plan import StudyState
from largebatch.vocab import Status

if TYPE_CHECKING:
    from concurrent.futures import Future

    from ray.tune import ResultGrid, Tuner

    from largebatch.console import StudyDisplay
    from largebatch.tune.runtime import StudyRuntime


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
    from largebatch.raylib import init_ray
    from largebatch.tune.plan import plan_study, preflight_study
    from largebatch.tune.throughput import fingerprint_while_ray_starts

    plan = plan_study(study, source=source, study_text=study_text, name=name, storage=storage, mlflow_uri=mlflow_uri,
                      run_root=run_root, resume_hint=resume_hint, live=live)
    preflight_study(plan, resume=resume, extend=extend)
    fingerprint = None if resume else fingerprint_while_ray_starts(plan.study, plan.base_tree)  # the profile's key
    import_before_ray()
    state = StudyState(plan, init_ray(address))
    _on_ray(state, fingerprint)
    return close_study(state)


# Every package module the stages import once Ray runs. Inside `ray job submit` the package is the job's working_dir
# copy on the head, and an import in the seconds after the driver joined Ray failed once in CI under load
# (ModuleNotFoundError for tune/parent.py, which the package holds); run_study imports them all before Ray starts,
# as it did before the stages were split out. tests/unit/test_driver_imports.py keeps this list complete.
AFTER_RAY_IMPORTS = (
    "largebatch.config.names", "largebatch.console", "largebatch.errors", "largebatch.failures",
    "largebatch.interrupts", "largebatch.metrics", "largebatch.quiet", "largebatch.raylib", "largebatch.raywatch",
    "largebatch.records", "largebatch.report", "largebatch.report.html", "largebatch.report.speed",
    "largebatch.report.target", "largebatch.storage", "largebatch.tasks", "largebatch.tasks.build",
    "largebatch.tracking", "largebatch.tracking_store", "largebatch.train.persist", "largebatch.train.trial",
    "largebatch.tune.abort", "largebatch.tune.costs", "largebatch.tune.critical", "largebatch.tune.extend",
    "largebatch.tune.finish", "largebatch.tune.parent", "largebatch.tune.plan", "largebatch.tune.progress",
    "largebatch.tune.runtime", "largebatch.tune.schedulers", "largebatch.tune.sha", "largebatch.tune.space",
    "largebatch.tune.stopper", "largebatch.tune.study_runs", "largebatch.tune.throughput", "largebatch.tune.trainable",
)


def import_before_ray() -> None:
    import importlib

    for name in AFTER_RAY_IMPORTS:
        importlib.import_module(name)


def _on_ray(state: StudyState, fingerprint: Optional[Future]) -> None:
    """The stages that need Ray: the cluster's fit, open runs, run. Anything that stops them once the parent run
    exists closes the runs (StudyAborted), after Ray (when started here) has stopped."""
    from largebatch import interrupts
    from largebatch.raylib import shutdown_ray
    from largebatch.tune.abort import abort_study
    from largebatch.tune.plan import cluster_slots

    plan = state.plan
    aborted: Optional[BaseException] = None
    try:
        state.max_conc = cluster_slots(plan, state.info)
        open_runs(state)
        run_trials(state, fingerprint)
    except BaseException as e:  # KeyboardInterrupt too: SIGINT/SIGTERM/SIGHUP arrive as one
        if state.parent_id is None:  # before the parent run exists: nothing to close
            raise
        aborted = e
    finally:
        if state.undo_lost is not None:
            state.undo_lost()
        if state.info["started"]:
            shutdown_ray()
            interrupts.reinstall()  # ray.shutdown() leaves SIGTERM at its default: the report is still ours to close
    if aborted is not None:
        # closed only now, with our head (and every trial process on it) stopped: a trial that was starting when
        # the signal came cannot open its run after the open runs were listed and closed
        tracker, exp_id, parent_id = state.runs()
        raise abort_study(tracker, exp_id, plan.exp_name, parent_id, aborted, plan.resume_hint) from None


def open_runs(state: StudyState) -> None:
    """The parent run: reopened (--resume), reopened to add trials (--extend) or new (tune/parent.py); state's
    tracker, exp_id, parent_id and run_name are set as each is known, so an abort closes what is open. Then the
    around_critical placement logged on it, the lost-head watch, and the study's first lines."""
    from largebatch.raywatch import on_cluster_lost
    from largebatch.tracking import Tracker
    from largebatch.tracking_store import database_scheme
    from largebatch.tune.abort import abort_study
    from largebatch.tune.critical import log_placement
    from largebatch.tune.parent import open_parent

    plan = state.plan
    t, exp_name, tracking_uri, target = plan.study.tuner, plan.exp_name, plan.tracking_uri, plan.target
    tracker = state.tracker = Tracker(tracking_uri)
    artifact_location = None
    if tracking_uri.startswith("sqlite:") or database_scheme(tracking_uri) is not None:  # not <cwd>/mlruns
        artifact_location = (Path(plan.run_root).resolve() / "mlartifacts").as_uri()
    exp_id = state.exp_id = tracker.experiment_id(exp_name, artifact_location)
    if target is not None:
        parent_id = target["parent_id"]
        state.run_name, state.parent_id = target["run_name"], parent_id
        tracker.reopen(parent_id)  # an aborted driver left it KILLED/FAILED
    else:
        open_parent(state, tracker, exp_id)
    parent_id = state.runs()[2]
    log_placement(tracker, parent_id, plan.critical)
    # the head lost while the main thread is blocked in Ray: the watch's thread closes the runs (raywatch.py)
    state.undo_lost = on_cluster_lost(
        lambda e: str(abort_study(tracker, exp_id, exp_name, parent_id, e, plan.resume_hint)))
    print(f"[largebatch] study {exp_name!r}: {plan.n_trials} trials, {state.max_conc} at a time, "
          f"{t.workers_per_trial} worker(s) x {t.cpus_per_worker} CPU each; MLflow {redact_uri(tracking_uri)} "
          f"(parent run {parent_id}); storage {redact_uri(plan.storage_path)}", flush=True)
    if target is not None:
        print(f"[largebatch] resuming {redact_uri(target['path'])} (finished trials are kept, unfinished ones "
              f"resume from their last checkpoint)", flush=True)


def run_trials(state: StudyState, fingerprint: Optional[Future]) -> None:
    """The run stage: each batch size's step time measured alone, before any trial shares the machine
    (tune/throughput.py), then Tune's fit, then every child run that did not log its own end closed."""
    from largebatch.report.speed import step_times
    from largebatch.tune import progress
    from largebatch.tune.throughput import study_profile

    plan, stopper = state.plan, state.plan.stopper
    tracker, exp_id, parent_id = state.runs()
    runtime = state.runtime = _runtime(state)
    tuner = _tuner(state, runtime)
    display = _display(state)
    progress.activate(display, runtime)
    t0 = time.time()
    profile = state.profile = study_profile(plan.study, tracker, parent_id, plan.base_tree, plan.baseline_tree,
                                            plan.run_root, plan.target is not None, fingerprint=fingerprint)
    state.profile_s = time.time() - t0
    display.step_s = step_times(profile)  # projected times to target, as the report's (report/speed.py)
    if stopper is not None and plan.target is None:  # tuner.budget_runs: step times, unit, gate (tune/stopper.py)
        stopper.plan(profile, runtime, plan.searcher)
    display.start()
    state.grid = _fit(tuner, display, plan.storage_path)
    state.study_s = time.time() - t0
    state.marked = _mark_unfinished(tracker, exp_id, parent_id, state.grid, stopper.stopped if stopper else {})
    if stopper is not None and stopper.budget_runs is not None:
        runtime.extra["budget"] = stopper.finish()  # what the budget did: printed, and for the report


def _runtime(state: StudyState) -> StudyRuntime:
    """What every trial shares (tune/runtime.py)."""
    from largebatch.tune.runtime import StudyRuntime

    plan, t = state.plan, state.plan.study.tuner
    _, exp_id, parent_id = state.runs()
    return StudyRuntime(
        base_tree=plan.base_tree, baseline_tree=plan.baseline_tree, source=plan.source, seeds=tuple(t.seeds),
        workers_per_trial=t.workers_per_trial, cpus_per_worker=t.cpus_per_worker, use_gpu=t.use_gpu,
        max_failures=t.max_failures, train_sizes=plan.train_sizes, tracking_uri=plan.tracking_uri,
        experiment_id=exp_id, parent_run_id=parent_id, run_name=state.run_name, storage_path=plan.storage_path,
        placement_strategy="SPREAD" if state.info["nodes"] > 1 else "PACK", in_process=plan.in_process,
        cwd=plan.cwd, credentials=plan.study.credentials())


def _tuner(state: StudyState, runtime: StudyRuntime) -> Tuner:
    """Tune's Tuner, each trial holding its resources; a resumed study's comes back from its run folder."""
    from ray import tune

    from largebatch.tune.trainable import tune_trial

    plan, t = state.plan, state.plan.study.tuner
    resources: dict[str, float]
    if plan.in_process:  # the trial's process trains: it holds the worker's CPUs (and GPU)
        resources = {"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}
    else:
        # The trial's function holds no CPU (its DDP workers hold them): a bundle of {CPU: 0} alone is refused,
        # so it takes 1 MiB of "memory", which every node has. The ConcurrencyLimiter caps how many run at once.
        resources = {"CPU": 0, "memory": 2**20}
    trainable = tune.with_resources(tune.with_parameters(tune_trial, rt=runtime), resources)
    if plan.target is not None:
        # the searcher (and its position), scheduler and trial list come back from the run folder
        return tune.Tuner.restore(plan.target["path"], trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    return _new_tuner(state, trainable)


def _new_tuner(state: StudyState, trainable: Callable[..., Any]) -> Tuner:
    """A new study's Tuner: the searcher behind a ConcurrencyLimiter (sha: and HeldSearch), the scheduler, the
    stopper, the progress callback."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter, SearchAlgorithm, Searcher

    from largebatch import quiet
    from largebatch.tune import progress

    plan, t, in_process = state.plan, state.plan.study.tuner, state.plan.in_process
    limited = ConcurrencyLimiter(plan.searcher, max_concurrent=state.max_conc)
    search_alg: Searcher | SearchAlgorithm = limited
    if hasattr(plan.scheduler, "holding"):  # sha: trial processes kept between rungs (tune/sha.py HeldSearch)
        from largebatch.tune.sha import HeldSearch

        search_alg = HeldSearch(limited)
    # the ConcurrencyLimiter alone caps concurrency (Tune warns when max_concurrent_trials repeats it);
    # verbose=0 with the old output engine keeps Tune's tables off (largebatch/quiet.py)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=search_alg,
                                    reuse_actors=in_process,  # one process, its data cache, many trials
                                    scheduler=plan.scheduler, num_samples=plan.n_trials, metric=t.metric,
                                    mode=t.mode, time_budget_s=t.time_budget_s),
        run_config=tune.RunConfig(name=state.run_name, storage_path=plan.storage_path, verbose=quiet.tune_verbose(),
                                  stop=plan.stopper,
                                  # in-process trials: Tune restarts a killed trial from its checkpoint
                                  # (TorchTrainer trials: Ray Train restarts their workers itself)
                                  failure_config=tune.FailureConfig(
                                      max_failures=t.max_failures if in_process else 0),
                                  checkpoint_config=tune.CheckpointConfig(
                                      num_to_keep=plan.study.base.checkpoint.num_to_keep),
                                  callbacks=[progress.create_callback()]),
    )


def _display(state: StudyState) -> StudyDisplay:
    """The study's progress on the console (largebatch/console.py)."""
    from largebatch import quiet
    from largebatch.console import StudyDisplay, wants_live
    from largebatch.metrics import summary_name
    from largebatch.report.target import explicit_target

    plan, t = state.plan, state.plan.study.tuner
    return StudyDisplay(title=plan.exp_name, total=plan.n_trials, metric=t.metric, score=summary_name(t.metric),
                        mode=t.mode or "max", slots=state.max_conc,
                        live=plan.live and wants_live() and not quiet.is_verbose(),
                        # the best so far on the report's basis: tolerance, units, target, step times
                        tolerance=plan.study.report.tolerance, units=plan.study.report.tolerance_units,
                        target=explicit_target(t.metric, plan.study.base.budget.target_val_acc))


def _fit(tuner: Tuner, display: StudyDisplay, storage_path: str) -> ResultGrid | list:
    """Tune's results, or the trials it ended with (tune/progress.py) when it cannot read them back."""
    from largebatch.tune import progress

    try:
        return tuner.fit()
    except Exception as e:
        # once every trial has ended, Ray reads the study's results back from storage (tune/tune.py `run` ->
        # ExperimentAnalysis): with S3 down that raises, though nothing is lost (docs/design.md §10)
        ended = progress.ended_results()
        if ended is None:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(redact_uri(f"[largebatch] Tune could not read the results back from {storage_path} "
                         f"({type(e).__name__}: {first}); using the trials it ended with"), flush=True)
        return ended
    finally:
        display.stop()
        progress.deactivate()


def close_study(state: StudyState) -> dict[str, Any]:
    """The close stage (tune/finish.py): the report, the parent run's status (FAILED without a verdict: the CLI
    exits 1). A signal while the report is built closes the parent KILLED, not left RUNNING."""
    from largebatch.tune.abort import abort_study, report_hint
    from largebatch.tune.finish import StudyEnd, report_study

    plan = state.plan
    tracker, exp_id, parent_id = state.runs()
    assert state.runtime is not None and state.grid is not None  # run_trials set both
    try:
        return report_study(StudyEnd(tracker, state.grid, state.runtime, plan.study, marked=state.marked,
                                     study_s=state.study_s, n_trials=plan.n_trials, slots=state.max_conc,
                                     exp_name=plan.exp_name, run_root=plan.run_root, mlflow_uri=plan.mlflow_uri,
                                     profile=state.profile, profile_s=state.profile_s))
    except KeyboardInterrupt as e:  # a signal while the report is built: the parent is closed KILLED, not left RUNNING
        raise abort_study(tracker, exp_id, plan.exp_name, parent_id, e,
                          report_hint(tracker, parent_id, plan.resume_hint, plan.exp_name)) from None


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
