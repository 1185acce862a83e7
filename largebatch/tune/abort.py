"""How a study whose driver cannot go on ends (tune/driver.py): its open MLflow runs closed KILLED (a signal) or
FAILED (Ray failing under it), and the one paragraph that says how to continue."""
from __future__ import annotations

from typing import Optional

from largebatch.redact import redact_uri
from largebatch.vocab import Status


def child_runs(tracker, exp_id: str, parent_id: str) -> list:
    return tracker.children(exp_id, parent_id)


def report_hint(tracker, parent_id: str, resume_hint: Optional[str], exp_name: str) -> Optional[str]:
    """What continues a study stopped while its report was built: --resume (every trial is kept, the report is
    built again), or `largebatch report` once the parent is marked completed (--resume then has nothing to do)."""
    from largebatch.tracking import STATUS_TAG

    try:
        status = tracker.run(parent_id).data.tags.get(STATUS_TAG)
    except Exception:
        return resume_hint
    if status != Status.COMPLETED:
        return resume_hint
    return f"largebatch report --experiment {exp_name} --run {parent_id} --mlflow {redact_uri(tracker.uri)}"


def abort_study(tracker, exp_id: str, exp_name: str, parent_id: str, e: BaseException,
           resume_hint: Optional[str]):
    """The driver cannot go on: close the open MLflow runs (never leave them RUNNING) and say how to continue."""
    from largebatch import interrupts
    from largebatch.failures import StudyAborted, describe, signal_name
    from largebatch.tracking import FINAL_STATUSES, REASON_TAG, STATUS_TAG

    if isinstance(e, KeyboardInterrupt):
        import signal

        what, status, code = (f"interrupted by {signal_name(interrupts.received() or signal.SIGINT)}", "KILLED",
                              interrupts.exit_code())
    else:
        what, status, code = describe(e), "FAILED", 1
    finished, note = "?", ""
    try:
        runs = child_runs(tracker, exp_id, parent_id)
        for run in runs:
            if run.data.tags.get(STATUS_TAG) == Status.RUNNING:
                tracker.end_run(run.info.run_id, status)  # the status tag stays 'running': --resume continues it
        finished = str(sum(r.data.tags.get(STATUS_TAG) in FINAL_STATUSES for r in runs))
        tracker.set_tag(parent_id, REASON_TAG, redact_uri(what)[:5000])  # errors may quote URIs
        tracker.end_run(parent_id, status)
    except Exception as te:  # MLflow may be what failed
        note = f" (MLflow could not be updated: {describe(te)})"
    hint = resume_hint or f"largebatch tune STUDY.yaml --name {exp_name} --resume"
    return StudyAborted(
        f"largebatch: the study stopped: {what}. {finished} finished trial(s) are safe in MLflow (experiment "
        f"{exp_name!r}, parent run {parent_id}, marked {status}){note}; unfinished trials continue from their last "
        f"checkpoint. Continue the study with:\n  {hint}", code)
