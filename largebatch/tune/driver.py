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
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    t = study.tuner
    if t.scheduler == "fifo":
        return FIFOScheduler()
    if t.scheduler == "asha":
        max_t = max(int(study.base.budget.epochs), t.grace_period_epochs)
        # stop_last_trials=False: a trial reaching max_t ends by itself, so it logs its final status and fit_s
        # (with the default, Tune kills it at its last epoch and it would be recorded stopped_early)
        return ASHAScheduler(time_attr="training_iteration", grace_period=t.grace_period_epochs, max_t=max_t,
                             reduction_factor=t.reduction_factor, stop_last_trials=False)
    from largebatch.errors import unknown_choice

    raise BadInput(unknown_choice("scheduler", t.scheduler, ["fifo", "asha"]), field="tuner.scheduler")


def _train_sizes(study: StudyConfig, trees: list[dict]) -> dict[int, int]:
    """Training-set sizes per train_subset, computed once on the driver (not in every trial), by the task."""
    from largebatch.tasks import task_of, train_size

    subsets = {t["data"].get("train_subset") or 0 for t in trees}
    for key, domain in study.search.items():
        if key == "data.train_subset":
            subsets |= {v or 0 for v in next(iter(domain.values()))}
    n = train_size(task_of(study.base), study.base)
    for s in subsets:
        if s > n:
            raise BadInput(f"got {s}, more than the {n} training examples; use at most {n}",
                           field="data.train_subset")
    return {s: s or n for s in subsets}


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
    from largebatch.storage import preflight_storage, resolve_storage
    from largebatch.metrics import summary_name
    from largebatch.tracking import Tracker, preflight_tracking, resolve_tracking_uri
    from largebatch.tune.space import create_searcher
    from largebatch.tune import progress
    from largebatch.tune.trainable import tune_trial

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
            print(f"[largebatch] resuming {redact_uri(target['path'])} (finished trials are kept, unfinished ones resume "
                  f"from their last checkpoint)", flush=True)
        ctx = {
            "base_tree": base_tree, "baseline_tree": baseline_tree, "source": source, "seeds": list(t.seeds),
            "workers_per_trial": t.workers_per_trial, "cpus_per_worker": t.cpus_per_worker, "use_gpu": t.use_gpu,
            "max_failures": t.max_failures, "train_sizes": train_sizes, "tracking_uri": tracking_uri,
            "experiment_id": exp_id, "parent_run_id": parent_id, "run_name": run_name,
            "storage_path": storage_path, "placement_strategy": "SPREAD" if info["nodes"] > 1 else "PACK",
        }
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
                                            scheduler=scheduler, num_samples=n_trials, metric=t.metric,
                                            mode=t.mode, time_budget_s=t.time_budget_s),
                run_config=tune.RunConfig(name=run_name, storage_path=storage_path, verbose=quiet.tune_verbose(),
                                          failure_config=tune.FailureConfig(max_failures=0),
                                          callbacks=[progress.create_callback()]),
            )
        display = StudyDisplay(title=exp_name, total=n_trials, metric=t.metric, score=summary_name(t.metric),
                               mode=t.mode or "max",
                               live=live and wants_live() and not quiet.is_verbose())
        progress.activate(display, ctx)
        t0 = time.time()
        try:
            display.start()
            try:
                grid = tuner.fit()
            finally:
                display.stop()
                progress.deactivate()
            study_s = time.time() - t0
            marked = _mark_unfinished(tracker, exp_id, parent_id, grid)
        except BaseException as e:  # KeyboardInterrupt too: SIGINT/SIGTERM/SIGHUP arrive as one
            raise _abort(tracker, exp_id, exp_name, parent_id, e, resume_hint) from None
    finally:
        if info["started"]:
            shutdown_ray()
    return finish_study(tracker, grid, ctx, study, marked=marked, study_s=study_s, n_trials=n_trials,
                        exp_name=exp_name, run_root=run_root, mlflow_uri=mlflow_uri)


def finish_study(tracker, grid, ctx: dict, study: StudyConfig, *, marked: Optional[str], study_s: float,
                 n_trials: int, exp_name: str, run_root: str, mlflow_uri: Optional[str]) -> dict[str, Any]:
    """The report, after Tune is done: built from MLflow (from Tune's results if MLflow cannot be read), written to
    a local folder, copied to s3:// storage, logged on the parent run, printed."""
    from largebatch.metrics import summary_name
    from largebatch.report import build_report, format_table, write_report
    from largebatch.report_html import write_html
    from largebatch.storage import report_dir_for, upload_dir
    from largebatch.tracking import records_from_mlflow, tracking_error, with_retry

    t = study.tuner
    tracking_uri, exp_id, parent_id = ctx["tracking_uri"], ctx["experiment_id"], ctx["parent_run_id"]
    storage_path, run_name = ctx["storage_path"], ctx["run_name"]
    # From here on nothing stops on MLflow or S3 being down (docs/design.md §10): the report is always written to a
    # local folder first; what could not be logged or uploaded is said in one line, with where the report is.
    unlogged: list[str] = [] if marked is None else [marked]
    try:
        records = with_retry(lambda: records_from_mlflow(tracking_uri, exp_id, parent_id))
    except Exception as e:
        records = _records_from_tune(grid, ctx)
        unlogged.append(f"the trial records (read from Tune's results instead: {tracking_error(e)})")
    report = build_report(records, tolerance=study.report.tolerance, metric=summary_name(t.metric),
                          mode=t.mode or "max", units=study.report.tolerance_units)
    report["study"] = {"name": exp_name, "parent_run_id": parent_id, "experiment_id": exp_id,
                       "tracking_uri": redact_uri(tracking_uri), "storage": redact_uri(storage_path),
                       "study_s": study_s,
                       "n_trials": n_trials}
    out_dir = report_dir_for(storage_path, run_name, run_root)
    # an s3:// report is written here first and stays (the copy to read if the upload fails)
    local_dir = Path(run_root) / run_name / "report" if out_dir.startswith("s3://") else Path(out_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    write_report(report, records, local_dir)
    write_html(report, local_dir)  # report/report.html: the MLflow UI's artifact view shows it as a page
    where = [str(local_dir)]
    if out_dir.startswith("s3://"):
        try:
            upload_dir(local_dir, out_dir)
            where.insert(0, redact_uri(out_dir))
        except Exception as e:  # BadInput from s3.py: one line naming the endpoint problem
            unlogged.append(f"the report upload to {redact_uri(out_dir)} ({redact_uri(str(e))})")
    tracker.log_artifacts(parent_id, local_dir, "report")
    _describe_runs(tracker, parent_id, records, report)
    tracker.log_final(parent_id, {"study_s": study_s, "max_safe_batch": report.get("max_safe_batch") or 0},
                      "completed")
    tracker.end_run(parent_id)
    unlogged += [f"MLflow: {u}" for u in tracker.unlogged]
    print(format_table(report))
    print(f"[largebatch] report: {where[0]}/report.md and report.html  (MLflow parent run {parent_id}, "
          f"{study_s:.0f} s)")
    if unlogged:  # also kept beside the local report, for whoever finds it there
        (local_dir / "not_logged.txt").write_text(redact_uri("\n".join(unlogged)) + "\n")
        print(redact_uri(f"[largebatch] not logged: {'; '.join(unlogged)}. The whole report is in {local_dir}"),
              flush=True)
    print("[largebatch] browse it: largebatch ui" + (f" --mlflow {redact_uri(mlflow_uri)}" if mlflow_uri else ""))
    return report


def _records_from_tune(grid, ctx: dict) -> list[dict]:
    """Trial records (as records_from_mlflow makes them) from Tune's results and the trials' checkpoints, for a
    report when MLflow cannot be read: each trial's config is resolved again, its figures are its last report."""
    from largebatch.config import apply_overrides, parse_trial, resolve
    from largebatch.metrics import TRIAL_FIGURES
    from largebatch.tracking import FINAL_STATUSES
    from largebatch.train.trial import read_history
    from largebatch.tune.trainable import trial_label

    records = []
    for r in grid:
        conf, m = dict(r.config or {}), dict(r.metrics or {})
        arm, seed, overrides = conf.get("arm", "search"), int(conf.get("seed", 0)), dict(conf.get("overrides") or {})
        try:
            cfg = parse_trial(apply_overrides(ctx["baseline_tree"] if arm == "baseline" else ctx["base_tree"],
                                              {**overrides, "seed": seed}), source=ctx["source"])
            summary = resolve(cfg, ctx["workers_per_trial"], source=ctx["source"],
                              train_size=ctx["train_sizes"].get(cfg.data.train_subset or 0)).summary()
        except Exception:
            continue
        try:
            history, _ = read_history(getattr(r, "checkpoint", None))
        except Exception:
            history = []
        if getattr(r, "error", None) is not None or not m:
            status = "failed"
        elif m.get("is_final") and m.get("status") in FINAL_STATUSES:
            status = m["status"]
        else:  # its last report was not its last epoch's: the scheduler stopped it
            status = "stopped_early"
        searched = [k for k in overrides if k not in ("data.global_batch_size", "scaling.rule",
                                                      "schedule.warmup_epochs", "optim.name", "optim.base_lr")]
        records.append({
            "trial_id": m.get("trial_id") or Path(getattr(r, "path", "") or "?").name, "run_id": None,
            "name": trial_label(summary, arm, overrides if arm == "search" else {}, seed, len(ctx["seeds"])),
            "is_baseline": arm == "baseline", "global_batch_size": summary["global_batch_size"],
            "rule": summary["rule"], "warmup_epochs": summary["warmup_epochs"], "optimizer": cfg.optim.name,
            "base_lr": summary["base_lr"], "peak_lr": summary["peak_lr"], "seed": seed, "status": status,
            "reason": m.get("reason") if status == "failed" else None,
            **{k: v for k, v in m.items() if k.startswith(("best_", "final_"))},
            "wall_s": m.get("wall_s"), "startup_s": m.get("startup_s"),
            "steps": int(m["steps"]) if "steps" in m else None, **{k: m.get(k) for k in TRIAL_FIGURES},
            "grad_noise_scale_mean": None, "batch_ramp": "batch_ramp" in summary,
            "variant": " ".join(f"{k.split('.')[-1]}={overrides[k]}" for k in searched),
            "history": history,
        })
    return records


def _describe_runs(tracker, parent_id: str, records: list[dict], report: dict) -> None:
    """Key figures as run descriptions, so the MLflow UI shows them without picking columns: each trial's
    headline numbers, and the report table on the study's run."""
    from largebatch.report import format_table
    from largebatch.tracking import trial_note

    for r in records:
        if r.get("run_id"):  # None: a record rebuilt from Tune while MLflow was down
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


def _mark_unfinished(tracker, exp_id: str, parent_id: str, grid) -> Optional[str]:
    """Close every child run that did not log its own end: a trial whose last report was its final one (it could
    not log its end: MLflow was down) -> the status it reported; stopped by the scheduler (ASHA) -> stopped_early;
    its Tune trial errored (its process was killed, e.g. by Ray's memory monitor or a SIGKILL) -> failed, with the
    reason. Tune finished, so a run still open after that ended without a word: failed.
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
            status, reason = "stopped_early", "stopped by the scheduler (ASHA)"
        else:
            status = "failed"
            reason = describe(err) if err is not None else "the trial's process ended without a final report"
        tracker.log_final(run.info.run_id,
                          {k: m[k] for k in ("best_val_acc", "wall_s", "steps", "startup_s") if k in m},
                          status, reason)
        tracker.end_run(run.info.run_id, "KILLED" if status == "stopped_early" else
                        "FAILED" if status == "failed" else "FINISHED")
    return None


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
        tracker.client.set_tag(parent_id, "reason", redact_uri(what)[:5000])  # errors may quote URIs
        tracker.end_run(parent_id, status)
    except Exception as te:  # MLflow may be what failed
        note = f" (MLflow could not be updated: {describe(te)})"
    hint = resume_hint or f"largebatch tune STUDY.yaml --name {exp_name} --resume"
    return StudyAborted(
        f"largebatch: the study stopped: {what}. {finished} finished trial(s) are safe in MLflow (experiment "
        f"{exp_name!r}, parent run {parent_id}, marked {status}){note}; unfinished trials continue from their last "
        f"checkpoint. Continue the study with:\n  {hint}", code)
