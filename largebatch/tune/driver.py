"""`largebatch tune`: run a study on Ray Tune, record it in MLflow, print and store the report.

Flow: validate everything (config, cluster fit, storage, MLflow) -> parent MLflow run -> Tuner over the searcher
(baseline first) -> mark ASHA-stopped trials -> rebuild trial records FROM MLFLOW -> report. The report is built
from MLflow alone, so `largebatch report` gives the same answer later.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import yaml

from largebatch.config import StudyConfig, baseline_trial, flatten
from largebatch.errors import BadInput
from largebatch.redact import redact_uri


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
              live: bool = True) -> dict[str, Any]:
    """Run a study; with resume=True continue the newest run of this study (same name + storage) whose driver
    died: finished trials are kept, unfinished ones resume from their checkpoints, the MLflow parent is reused.

    Once the parent run exists, anything that stops the driver (a signal, Ray failing under it) closes the MLflow
    runs as KILLED/FAILED and raises StudyAborted with `resume_hint`, the command that continues the study.

    Progress shows live on a terminal (live=False: plain lines, as anywhere else); see largebatch/console.py."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from largebatch import quiet
    from largebatch.console import StudyDisplay, wants_live
    from largebatch.raylib import init_ray, shutdown_ray
    from largebatch.report import build_report, format_table, write_report
    from largebatch.report_html import write_html
    from largebatch.storage import preflight_storage, report_dir_for, resolve_storage, upload_dir
    from largebatch.metrics import summary_name
    from largebatch.tracking import Tracker, preflight_tracking, records_from_mlflow, resolve_tracking_uri
    from largebatch.tune.space import create_searcher
    from largebatch.tune import progress
    from largebatch.tune.costs import costs_line, study_costs
    from largebatch.tune.trainable import tune_trial
    from largebatch.tune.throughput import study_profile

    t = study.tuner
    exp_name = name or study.name
    run_root = str(Path(run_root).resolve())  # absolute from here on: the driver may change directory
    tracking_uri = resolve_tracking_uri(mlflow_uri, run_root)
    storage_path = resolve_storage(storage, run_root)
    # ---- everything that can be wrong is checked before Ray starts or a run is created
    base_tree = study.base.model_dump(mode="json")
    baseline_tree = baseline_trial(study, source).model_dump(mode="json") if study.baseline is not None else base_tree
    searcher, n_trials = create_searcher(study, {} if study.baseline is not None else None)
    scheduler = create_scheduler(study)
    train_sizes = _train_sizes(study, [base_tree, baseline_tree])
    preflight_storage(storage_path)
    preflight_tracking(tracking_uri)
    target = find_resumable(storage_path, exp_name, tracking_uri) if resume else None

    per_trial = t.workers_per_trial * t.cpus_per_worker
    in_process = runs_in_process(study)
    info = init_ray(address)
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
        if tracking_uri.startswith("sqlite:"):
            artifact_location = (Path(run_root).resolve() / "mlartifacts").as_uri()
        exp_id = tracker.experiment_id(exp_name, artifact_location)
        if target is not None:
            run_name, parent_id = target["run_name"], target["parent_id"]
            tracker.client.update_run(parent_id, status="RUNNING")  # an aborted driver left it KILLED/FAILED
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_name = f"{exp_name}-{stamp}"
            parent_id = _start_parent(tracker, exp_id, stamp, run_name, study, t, source, study_text, n_trials,
                                      max_conc, storage_path, info, base_tree)
        print(f"[largebatch] study {exp_name!r}: {n_trials} trials, {max_conc} at a time, "
              f"{t.workers_per_trial} worker(s) x {t.cpus_per_worker} CPU each; MLflow {redact_uri(tracking_uri)} "
              f"(parent run {parent_id}); storage {redact_uri(storage_path)}", flush=True)
        if target is not None:
            print(f"[largebatch] resuming {target['path']} (finished trials are kept, unfinished ones resume "
                  f"from their last checkpoint)", flush=True)
        ctx = {
            "base_tree": base_tree, "baseline_tree": baseline_tree, "source": source, "seeds": list(t.seeds),
            "workers_per_trial": t.workers_per_trial, "cpus_per_worker": t.cpus_per_worker, "use_gpu": t.use_gpu,
            "max_failures": t.max_failures, "train_sizes": train_sizes, "tracking_uri": tracking_uri,
            "experiment_id": exp_id, "parent_run_id": parent_id, "run_name": run_name,
            "storage_path": storage_path, "placement_strategy": "SPREAD" if info["nodes"] > 1 else "PACK",
            "in_process": in_process,
        }
        if in_process:  # the trial's process trains: it holds the worker's CPUs (and GPU)
            resources = {"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}
        else:
            # The trial's function holds no CPU (its DDP workers hold them): a bundle of {CPU: 0} alone is refused,
            # so it takes 1 MiB of "memory", which every node has. The ConcurrencyLimiter caps how many run at once.
            resources = {"CPU": 0, "memory": 2**20}
        trainable = tune.with_resources(tune.with_parameters(tune_trial, ctx=ctx), resources)
        if target is not None:
            # the searcher (and its position), scheduler and trial list come back from the run folder
            tuner = tune.Tuner.restore(target["path"], trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            # the ConcurrencyLimiter alone caps concurrency (Tune warns when max_concurrent_trials repeats it);
            # verbose=0 with the old output engine keeps Tune's tables off (largebatch/quiet.py)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=max_conc),
                                            reuse_actors=in_process,  # one process, its data cache, many trials
                                            scheduler=scheduler, num_samples=n_trials, metric=t.metric,
                                            mode=t.mode, time_budget_s=t.time_budget_s),
                run_config=tune.RunConfig(name=run_name, storage_path=storage_path, verbose=quiet.tune_verbose(),
                                          # in-process trials: Tune restarts a killed trial from its checkpoint
                                          # (TorchTrainer trials: Ray Train restarts their workers itself)
                                          failure_config=tune.FailureConfig(
                                              max_failures=t.max_failures if in_process else 0),
                                          checkpoint_config=tune.CheckpointConfig(
                                              num_to_keep=study.base.checkpoint.num_to_keep),
                                          callbacks=[progress.create_callback()]),
            )
        display = StudyDisplay(title=exp_name, total=n_trials, metric=t.metric, score=summary_name(t.metric),
                               mode=t.mode or "max",
                               live=live and wants_live() and not quiet.is_verbose())
        progress.activate(display, ctx)
        t0 = time.time()
        try:
            # each batch size's step time measured alone, before any trial shares the machine (tune/throughput.py)
            profile = study_profile(study, tracker, parent_id, base_tree, baseline_tree, run_root, target is not None)
            display.start()
            try:
                grid = tuner.fit()
            finally:
                display.stop()
                progress.deactivate()
            study_s = time.time() - t0
            _mark_unfinished(tracker, exp_id, parent_id, grid)
        except BaseException as e:  # KeyboardInterrupt too: SIGINT/SIGTERM/SIGHUP arrive as one
            raise _abort(tracker, exp_id, exp_name, parent_id, e, resume_hint) from None
    finally:
        if info["started"]:
            shutdown_ray()
    records = records_from_mlflow(tracking_uri, exp_id, parent_id)
    report = build_report(records, tolerance=study.report.tolerance, metric=summary_name(t.metric),
                          mode=t.mode or "max", units=study.report.tolerance_units, profile=profile)
    report["study"] = {"name": exp_name, "parent_run_id": parent_id, "experiment_id": exp_id,
                       "tracking_uri": redact_uri(tracking_uri), "storage": redact_uri(storage_path),
                       "study_s": study_s,
                       "n_trials": n_trials}
    report["study"].update(study_costs(records, study_s, max_conc))
    out_dir = report_dir_for(storage_path, run_name, run_root)
    with tempfile.TemporaryDirectory() as tmp:
        local_dir = Path(tmp) if out_dir.startswith("s3://") else Path(out_dir)
        local_dir.mkdir(parents=True, exist_ok=True)
        write_report(report, records, local_dir)
        write_html(report, local_dir)  # report/report.html: the MLflow UI's artifact view shows it as a page
        tracker.log_artifacts(parent_id, local_dir, "report")
        if out_dir.startswith("s3://"):
            upload_dir(local_dir, out_dir)
    _describe_runs(tracker, parent_id, records, report)
    tracker.log_final(parent_id, {"study_s": study_s, "max_safe_batch": report.get("max_safe_batch") or 0},
                      "completed")
    tracker.end_run(parent_id)
    print(format_table(report))
    print(f"[largebatch] report: {redact_uri(out_dir)}/report.md and report.html  (MLflow parent run {parent_id}, "
          f"{study_s:.0f} s)")
    print(costs_line(report["study"], study_s))
    print("[largebatch] browse it: largebatch ui" + (f" --mlflow {redact_uri(mlflow_uri)}" if mlflow_uri else ""))
    return report


def _describe_runs(tracker, parent_id: str, records: list[dict], report: dict) -> None:
    """Key figures as run descriptions, so the MLflow UI shows them without picking columns: each trial's
    headline numbers, and the report table on the study's run."""
    from largebatch.report import format_table
    from largebatch.tracking import trial_note

    for r in records:
        tracker.set_note(r["run_id"], trial_note(r["status"], r, r.get("reason")))
    tracker.set_note(parent_id, format_table(report) + "\n\nThe whole report with its plots: artifacts, "
                                "report/report.html")


def _start_parent(tracker, exp_id: str, stamp: str, run_name: str, study: StudyConfig, t, source: str,
                  study_text: str, n_trials: int, max_conc: int, storage_path: str, info: dict,
                  base_tree: dict) -> str:
    from largebatch.tracking import KIND_TAG

    parent_id = tracker.start_run(exp_id, f"study {stamp}", params={
        **{f"tuner.{k}": v for k, v in t.model_dump(mode="json").items()},
        **{f"report.{k}": v for k, v in study.report.model_dump(mode="json").items()},  # tolerance and its units
        "study": study.name, "source": source, "n_trials": n_trials, "max_concurrent": max_conc,
        "report.tolerance": study.report.tolerance, "storage": redact_uri(storage_path),
        "search_keys": ",".join(study.search)},
        tags={KIND_TAG: "study", "git_commit": _git_commit(), "ray_address": info["address"],
              "ray_nodes": str(info["nodes"]), "storage": redact_uri(storage_path), "run_name": run_name})
    tracker.log_text(parent_id, study_text, "study.yaml")
    tracker.log_text(parent_id, json.dumps({"search": study.search, "baseline": study.baseline,
                                            "resolved_base": flatten(base_tree)}, indent=2, default=str),
                     "search_space.json")
    return parent_id


def _run_folders(storage_path: str, exp_name: str) -> list[tuple[str, str]]:
    """(folder name, restorable path) of this study's Tune run folders `<name>-<YYYYmmdd-HHMMSS>`, newest first."""
    import re

    pattern = re.compile(re.escape(exp_name) + r"-\d{8}-\d{6}$")
    base, _, query = storage_path.partition("?")
    if base.startswith("s3://"):
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(storage_path)
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        names = [i.base_name for i in infos if i.type == pafs.FileType.Directory]
    else:
        root = Path(base)
        names = [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    names = sorted((n for n in names if pattern.match(n)), key=lambda n: n[-15:], reverse=True)
    return [(n, base.rstrip("/") + "/" + n + (f"?{query}" if query else "")) for n in names]


def find_resumable(storage_path: str, exp_name: str, tracking_uri: str) -> dict[str, str]:
    """The newest run of study `exp_name` under the storage, and its MLflow parent run; BadInput if none."""
    from ray import tune

    from largebatch.tracking import KIND_TAG, STATUS_TAG, _client

    folders = _run_folders(storage_path, exp_name)
    hint = "check --name and --storage, or drop --resume to start a new study"
    if not folders:
        raise BadInput(f"nothing to resume: no run of study {exp_name!r} under {storage_path}; {hint}",
                       field="--resume")
    run_name, path = folders[0]
    if not tune.Tuner.can_restore(path):
        raise BadInput(f"nothing to resume: {path} holds no Tune experiment state; {hint}", field="--resume")
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(exp_name)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.run_name = '{run_name}' and "
                              f"tags.`{KIND_TAG}` = 'study'", max_results=1) if exp is not None else []
    if not runs:
        raise BadInput(f"nothing to resume: no MLflow study run tagged run_name={run_name!r} in {tracking_uri}; "
                       f"pass the --mlflow the study was started with", field="--resume")
    if runs[0].data.tags.get(STATUS_TAG) == "completed":
        raise BadInput(f"nothing to resume: study run {run_name!r} already completed (parent run "
                       f"{runs[0].info.run_id}); {hint}", field="--resume")
    return {"run_name": run_name, "path": path, "parent_id": runs[0].info.run_id}


def _child_runs(tracker, exp_id: str, parent_id: str) -> list:
    return tracker.client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                                      max_results=5000)


def _open_children(tracker, exp_id: str, parent_id: str) -> list:
    """The study's child runs whose status tag still says running."""
    from largebatch.tracking import STATUS_TAG

    return [r for r in _child_runs(tracker, exp_id, parent_id) if r.data.tags.get(STATUS_TAG) == "running"]


def _mark_unfinished(tracker, exp_id: str, parent_id: str, grid) -> None:
    """Close every child run that did not log its own end: stopped by the scheduler (ASHA) -> stopped_early; its
    Tune trial errored (its process was killed, e.g. by Ray's memory monitor or a SIGKILL) -> failed, with the
    reason. Tune finished, so a run still open after that ended without a word: failed."""
    from largebatch.failures import describe

    from largebatch.tracking import TRIAL_DIR_TAG, TRIAL_TAG

    # a trial killed before its first report has no trial_id among its metrics: its folder name still matches
    by_trial = {(r.metrics or {}).get("trial_id"): r for r in grid if (r.metrics or {}).get("trial_id")}
    by_dir = {Path(r.path).name: r for r in grid if getattr(r, "path", None)}
    for run in _open_children(tracker, exp_id, parent_id):
        tags = run.data.tags
        r = by_trial.get(tags.get(TRIAL_TAG)) or by_dir.get(tags.get(TRIAL_DIR_TAG, ""))
        err = getattr(r, "error", None) if r is not None else None
        if r is not None and err is None:
            status, reason = "stopped_early", "stopped by the scheduler (ASHA)"
        else:
            status = "failed"
            reason = describe(err) if err is not None else "the trial's process ended without a final report"
        m = dict(getattr(r, "metrics", None) or {})
        tracker.log_final(run.info.run_id,
                          {k: m[k] for k in ("best_val_acc", "wall_s", "steps", "startup_s") if k in m},
                          status, reason)
        tracker.end_run(run.info.run_id, "KILLED" if status == "stopped_early" else "FAILED")


def _abort(tracker, exp_id: str, exp_name: str, parent_id: str, e: BaseException,
           resume_hint: Optional[str]):
    """The driver cannot go on: close the open MLflow runs (never leave them RUNNING) and say how to continue."""
    from largebatch import interrupts
    from largebatch.failures import StudyAborted, describe, signal_name
    from largebatch.tracking import FINAL_STATUSES, STATUS_TAG

    if isinstance(e, KeyboardInterrupt):
        import signal

        what, status, code = (f"interrupted by {signal_name(interrupts.received() or signal.SIGINT)}", "KILLED",
                              interrupts.exit_code())
    else:
        what, status, code = describe(e), "FAILED", 1
    finished, note = "?", ""
    try:
        runs = _child_runs(tracker, exp_id, parent_id)
        for run in runs:
            if run.data.tags.get(STATUS_TAG) == "running":
                tracker.end_run(run.info.run_id, status)  # the status tag stays 'running': --resume continues it
        finished = str(sum(r.data.tags.get(STATUS_TAG) in FINAL_STATUSES for r in runs))
        tracker.client.set_tag(parent_id, "reason", what[:5000])
        tracker.end_run(parent_id, status)
    except Exception as te:  # MLflow may be what failed
        note = f" (MLflow could not be updated: {describe(te)})"
    hint = resume_hint or f"largebatch tune STUDY.yaml --name {exp_name} --resume"
    return StudyAborted(
        f"largebatch: the study stopped: {what}. {finished} finished trial(s) are safe in MLflow (experiment "
        f"{exp_name!r}, parent run {parent_id}, marked {status}){note}; unfinished trials continue from their last "
        f"checkpoint. Continue the study with:\n  {hint}", code)
