"""The end of a study: the report, built from MLflow (from Tune's results when MLflow cannot be read), written to a
local folder first, then copied to s3:// storage and logged on the parent run (docs/design.md §10)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from largebatch.config import StudyConfig
from largebatch.console import command_start
from largebatch.redact import redact_uri
from largebatch.tune.runtime import StudyRuntime
from largebatch.vocab import Status

if TYPE_CHECKING:
    from ray.tune import ResultGrid

    from largebatch.tracking import Tracker


@dataclass
class StudyEnd:
    """What the close stage reads (tune/driver.py close_study): Tune's results, the trials' runtime, the study and
    what the run stage measured and could not log."""
    tracker: Tracker
    grid: ResultGrid | list
    rt: StudyRuntime
    study: StudyConfig
    marked: Optional[str]  # what closing the unfinished trials' runs could not log (MLflow down)
    study_s: float
    n_trials: int
    slots: int
    exp_name: str
    run_root: str
    mlflow_uri: Optional[str]
    profile: Optional[dict] = None
    profile_s: float = 0.0


def finish_study(tracker, grid, rt: StudyRuntime, study: StudyConfig, *, marked: Optional[str], study_s: float,
                 n_trials: int, slots: int, exp_name: str, run_root: str,
                 mlflow_uri: Optional[str], profile: Optional[dict] = None, profile_s: float = 0.0) -> dict[str, Any]:
    """`report_study` with its StudyEnd given field by field."""
    return report_study(StudyEnd(tracker, grid, rt, study, marked=marked, study_s=study_s, n_trials=n_trials,
                                 slots=slots, exp_name=exp_name, run_root=run_root, mlflow_uri=mlflow_uri,
                                 profile=profile, profile_s=profile_s))


def report_study(end: StudyEnd) -> dict[str, Any]:
    """The report, after Tune is done: built from MLflow (from Tune's results if MLflow cannot be read), written to
    a local folder, copied to s3:// storage, logged on the parent run, printed."""
    # From here on nothing stops on MLflow or S3 being down (docs/design.md §10): the report is always written to a
    # local folder first; what could not be logged or uploaded is said in one line, with where the report is.
    unlogged: list[str] = [] if end.marked is None else [end.marked]
    unlogged += _unpersisted_checkpoints(end.grid, end.rt)
    records = _records(end, unlogged)
    report, verdict = _report(end, records)
    local_dir, where = _write(end, report, records, unlogged)
    _close_parent(end, report, records, local_dir, verdict)
    unlogged += [f"MLflow: {u}" for u in end.tracker.unlogged]
    _print_end(end, report, where[0], local_dir, unlogged)
    return report


def _records(end: StudyEnd, unlogged: list[str]) -> list[dict]:
    """The trial records from MLflow; from Tune's results when MLflow cannot be read (said in `unlogged`)."""
    from largebatch.records import records_from_mlflow
    from largebatch.tracking import tracking_error, with_retry

    rt = end.rt
    try:
        return with_retry(lambda: records_from_mlflow(rt.tracking_uri, rt.experiment_id, rt.parent_run_id))
    except Exception as e:
        records = _records_from_tune(end.grid, rt)
        unlogged.append(f"the trial records (read from Tune's results instead: {tracking_error(e)})")
        return records


def _report(end: StudyEnd, records: list[dict]) -> tuple[dict[str, Any], Optional[str]]:
    """The report dict, with the study's section (cost and payback: report/verdict.py), and the line saying why the
    study has no verdict (None: it has one)."""
    from largebatch.failures import no_verdict
    from largebatch.metrics import summary_name
    from largebatch.report import build_report
    from largebatch.report.target import explicit_target
    from largebatch.tune.costs import study_costs

    study, rt, t = end.study, end.rt, end.study.tuner
    report = build_report(records, tolerance=study.report.tolerance, metric=summary_name(t.metric),
                          mode=t.mode or "max", units=study.report.tolerance_units, profile=end.profile,
                          target=explicit_target(t.metric, study.base.budget.target_val_acc))
    report["study"] = {"name": end.exp_name, "parent_run_id": rt.parent_run_id, "experiment_id": rt.experiment_id,
                       "tracking_uri": redact_uri(rt.tracking_uri), "storage": redact_uri(rt.storage_path),
                       "study_s": end.study_s,
                       "n_trials": end.n_trials, **report.get("study", {})}  # cost and payback: report/verdict.py
    report["study"].update(study_costs(records, end.study_s, end.slots, end.profile_s))
    if rt.extra.get("budget"):  # tuner.budget_runs: what the budget did (tune/stopper.py TargetStopper.accounts)
        report["study"]["budget"] = rt.extra["budget"]
    # every trial failed, or the baseline did: the CLI exits 1 (failures.py). No record in MLflow (e.g. every trial
    # died before its run was created): Tune's results say what happened
    verdict = no_verdict(records or _records_from_tune(end.grid, rt))
    if verdict is not None:
        report["study"]["no_verdict"] = verdict
    return report, verdict


def _write(end: StudyEnd, report: dict, records: list[dict], unlogged: list[str]) -> tuple[Path, list[str]]:
    """The report's files in a local folder, then copied to s3:// storage: (that folder, where the report is, the
    s3:// copy first when it took)."""
    from largebatch.report import write_report
    from largebatch.report.html import write_html
    from largebatch.storage import report_dir_for, upload_dir

    out_dir = report_dir_for(end.rt.storage_path, end.rt.run_name, end.run_root)
    # an s3:// report is written here first and stays (the copy to read if the upload fails)
    local_dir = Path(end.run_root) / end.rt.run_name / "report" if out_dir.startswith("s3://") else Path(out_dir)
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
    return local_dir, where


def _close_parent(end: StudyEnd, report: dict, records: list[dict], local_dir: Path, verdict: Optional[str]) -> None:
    """The report on the parent run (artifacts, descriptions, headline metrics), and its status."""
    tracker, parent_id = end.tracker, end.rt.parent_run_id
    tracker.log_artifacts(parent_id, local_dir, "report")
    _describe_runs(tracker, parent_id, records, report)
    tracker.log_final(parent_id, {"study_s": end.study_s, "max_safe_batch": report.get("max_safe_batch") or 0,
                                  **_headline(report)}, Status.COMPLETED.value, verdict)
    # no verdict: the run shows FAILED with the line as its reason; its status tag stays completed (every trial
    # ended, so --resume has nothing to continue and --extend may add trials)
    tracker.end_run(parent_id, "FINISHED" if verdict is None else "FAILED")


def _print_end(end: StudyEnd, report: dict, where: str, local_dir: Path, unlogged: list[str]) -> None:
    """The report's table and where it is, the study's costs, what could not be logged, how to browse it."""
    from largebatch.report import format_table
    from largebatch.tune.costs import costs_line

    print(format_table(report))
    print(f"[largebatch] report: {where}/report.md and report.html  (MLflow parent run {end.rt.parent_run_id}, "
          f"{end.study_s:.0f} s)")
    command_s = time.time() - command_start()
    print(costs_line(report["study"], end.study_s, command_s))
    if unlogged:  # also kept beside the local report, for whoever finds it there
        (local_dir / "not_logged.txt").write_text(redact_uri("\n".join(unlogged)) + "\n")
        print(redact_uri(f"[largebatch] not logged: {'; '.join(unlogged)}. The whole report is in {local_dir}"),
              flush=True)
    mlflow_uri = end.mlflow_uri
    print("[largebatch] browse it: largebatch ui" + (f" --mlflow {redact_uri(mlflow_uri)}" if mlflow_uri else ""))


def _headline(report: dict) -> dict[str, float]:
    """The time-to-target headline as parent-run metrics (report/target.py), where the report has it."""
    tt, rec = report.get("time_to_target") or {}, report.get("recommended") or {}
    cost = report.get("study") or {}
    out = {"target_value": tt.get("value"), "baseline_time_to_target_s": tt.get("baseline_time_s"),
           "cost_baseline_runs": cost.get("cost_baseline_runs"), "payback_trainings": cost.get("payback_trainings"),
           "recommended_time_to_target_s": rec.get("time_to_target_s"),
           "recommended_target_speedup": rec.get("target_speedup"),
           "recommended_global_batch_size": rec.get("global_batch_size")}
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float))}


def _records_from_tune(grid, rt: StudyRuntime) -> list[dict]:
    """Trial records (as records_from_mlflow makes them) from Tune's results and the trials' checkpoints, for a
    report when MLflow cannot be read: each trial's config is resolved again, its figures are its last report."""
    from largebatch.metrics import TRIAL_FIGURES
    from largebatch.tracking import FINAL_STATUSES
    from largebatch.train.trial import read_history

    records = []
    for r in grid:
        conf, m = dict(r.config or {}), dict(r.metrics or {})
        try:
            spec, overrides = rt.trial_spec(conf)
        except Exception:
            continue
        arm, seed, cfg, summary = spec.arm, spec.cfg.seed, spec.cfg, spec.res.summary()
        try:
            history, _ = read_history(getattr(r, "checkpoint", None))
        except Exception:
            history = []
        if getattr(r, "error", None) is not None or not m:
            status = Status.FAILED.value
        elif m.get("is_final") and m.get("status") in FINAL_STATUSES:
            status = m["status"]
        else:  # its last report was not its last epoch's: the scheduler stopped it
            status = Status.STOPPED_EARLY.value
        searched = [k for k in overrides if k not in ("data.global_batch_size", "scaling.rule",
                                                      "schedule.warmup_epochs", "optim.name", "optim.base_lr")]
        records.append({
            "trial_id": m.get("trial_id") or Path(getattr(r, "path", "") or "?").name, "run_id": None,
            "name": rt.label(spec, overrides),
            "is_baseline": arm == "baseline", "global_batch_size": summary["global_batch_size"],
            "rule": summary["rule"], "warmup_epochs": summary["warmup_epochs"], "optimizer": cfg.optim.name,
            "base_lr": summary["base_lr"], "peak_lr": summary["peak_lr"], "seed": seed, "status": status,
            "reason": (m.get("reason") or _error_line(getattr(r, "error", None))) if status == Status.FAILED else None,
            **{k: v for k, v in m.items() if k.startswith(("best_", "final_"))},
            "wall_s": m.get("wall_s"), "startup_s": m.get("startup_s"),
            "steps": int(m["steps"]) if "steps" in m else None, **{k: m.get(k) for k in TRIAL_FIGURES},
            "grad_noise_scale_mean": None, "batch_ramp": "batch_ramp" in summary,
            "variant": " ".join(f"{k.split('.')[-1]}={overrides[k]}" for k in searched),
            "history": history,
        })
    return records


def _error_line(err) -> Optional[str]:
    from largebatch.failures import describe

    return describe(err) if isinstance(err, BaseException) else None


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


def _unpersisted_checkpoints(grid, rt: StudyRuntime) -> list[str]:
    """Trials whose last checkpoint storage did not take (train/persist.py): where each one is on local disk."""
    from largebatch.train.persist import KEPT_KEY

    out = []
    for r in grid:
        m = dict(getattr(r, "metrics", None) or {})
        if not (m.get("is_final") and m.get(KEPT_KEY)):
            continue
        try:
            name = rt.label(*rt.trial_spec(dict(r.config or {})))
        except Exception:
            name = str(m.get("trial_id") or "?")
        out.append(f"the last checkpoint of trial {name} to {redact_uri(rt.storage_path)} (kept at {m[KEPT_KEY]})")
    return out
