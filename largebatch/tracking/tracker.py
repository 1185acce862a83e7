"""Driver-side: the study's experiment, its parent run and the trial runs under it (a `RunTree` that writes), each
call retried while MLflow is unreachable; what could not be logged is named, never raised into the study."""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from largebatch.redact import redact_text
from largebatch.tracking.client import numeric, safe_params, tracking_error, unreachable, with_retry
from largebatch.tracking.epochs import _log_missing_epochs
from largebatch.tracking.runs import NOTE_MAX, NOTE_TAG, PARENT_TAG, REASON_TAG, STATUS_TAG, TRIAL_TAG, RunTree
from largebatch.vocab import PROBLEM_STATUSES

# The experiment kind MLflow 3.17 reads (key and value as in its UI code): a model-training experiment, not GenAI.
# Its UI also keeps a workflow switch of its own; largebatch/ui.py prints links that set it.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"


class Tracker(RunTree):
    """Driver-side: experiments, the parent run and the child runs."""

    def __init__(self, uri: str, retry_s: Optional[float] = None):
        super().__init__(uri, create=True)
        self.retry_s = retry_s  # None: retry_budget_s()
        self.unlogged: list[str] = []  # what could not reach MLflow, in words (best_effort)
        self.gave_up = False  # a best_effort call spent its whole wait: the next ones try once, until one goes through

    def call(self, fn, *args, **kwargs):
        """A client call, retried while the server is unreachable (with_retry); raises once the budget is spent."""
        return with_retry(lambda: fn(*args, **kwargs), self.retry_s)

    def best_effort(self, what: str, fn, *args, **kwargs) -> bool:
        """A call that must not stop anything: retried, then, if MLflow is still unreachable, recorded in
        `unlogged` and reported in one line on stderr. False if it was not logged. One wait per outage: after a
        call gave up, the following ones try once (a server gone for good costs one budget, not one per call)."""
        try:
            with_retry(lambda: fn(*args, **kwargs), 0.0 if self.gave_up else self.retry_s)
            self.gave_up = False
            return True
        except Exception as e:
            self.gave_up = self.gave_up or unreachable(e)
            self.unlogged.append(what)
            print(f"[largebatch] MLflow: could not log {what} ({tracking_error(e)})", file=sys.stderr, flush=True)
            return False

    def experiment_id(self, name: str, artifact_location: Optional[str] = None) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.tags.get(EXPERIMENT_KIND_TAG) != TRAINING_KIND:  # made by an older version, or by hand
                self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
            return exp.experiment_id
        # MLflow 3's UI opens GenAI experiments on a traces overview; ours are training runs
        return self.client.create_experiment(name, artifact_location=artifact_location,
                                             tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})

    def start_run(self, experiment_id: str, name: str, *, parent_id: Optional[str] = None,
                  params: Optional[dict[str, Any]] = None, tags: Optional[dict[str, str]] = None) -> str:
        all_tags = {k: redact_text(str(v)) for k, v in (tags or {}).items()}
        if parent_id:
            all_tags[PARENT_TAG] = parent_id
        trial_id, tried = all_tags.get(TRIAL_TAG), list[bool]()

        def create() -> str:
            if tried and parent_id and trial_id:  # a lost answer may hide a run that was made: never make two
                found = self.child_with_tag(experiment_id, parent_id, TRIAL_TAG, trial_id)
                if found:
                    return found
            tried.append(True)
            return self.client.create_run(experiment_id, run_name=redact_text(name), tags=all_tags).info.run_id

        run_id = self.call(create)
        self.log_params(run_id, params or {})
        return run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """The params, masked, 100 a call (log_batch's limit); the same values again are accepted (idempotent), so a
        resumed trial whose run was created just before its process died logs them here."""
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in safe_params(params).items()]
        for i in range(0, len(items), 100):
            self.call(self.client.log_batch, run_id, params=items[i:i + 100])

    def find_child(self, experiment_id: str, parent_id: str, trial_id: str) -> Optional[str]:
        """The child run of Tune trial `trial_id`, or None (retried while MLflow is unreachable)."""
        return self.call(self.child_with_tag, experiment_id, parent_id, TRIAL_TAG, trial_id)

    def reopen(self, run_id: str) -> None:
        """The run is RUNNING again in MLflow (an aborted driver left it KILLED/FAILED; an extension reopens it)."""
        self.client.update_run(run_id, status="RUNNING")

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.client.set_tag(run_id, key, value)

    def log_metric(self, run_id: str, key: str, value: float) -> None:
        self.client.log_metric(run_id, key, value)

    def log_final(self, run_id: str, metrics: dict[str, Any], status: str, reason: Optional[str] = None,
                  step: Optional[int] = None, history: Optional[Iterable[dict[str, Any]]] = None) -> bool:
        """The run's end figures and status tag. With `history` (the trial's checkpointed per-epoch metrics), epochs
        the worker could not log (MLflow was down until it ended) are logged first. False if anything was not."""
        from mlflow.entities import Metric, RunTag

        ok = True
        if history:
            ok = self.best_effort(f"the missing epochs of run {run_id}", _log_missing_epochs, self.client, run_id,
                                  list(history))
        ts = int(time.time() * 1000)
        ms = [Metric(k, v, ts, step or 0) for k, v in numeric(metrics).items()]
        tags = [RunTag(STATUS_TAG, status)] + ([RunTag(REASON_TAG, redact_text(reason)[:5000])] if reason else [])
        return self.best_effort(f"the final status of run {run_id}", self.client.log_batch, run_id, metrics=ms,
                                tags=tags) and ok

    def set_note(self, run_id: str, text: str) -> bool:
        """The run's description in the MLflow UI."""
        return self.best_effort(f"the description of run {run_id}", self.client.set_tag, run_id, NOTE_TAG,
                                redact_text(text)[:NOTE_MAX])

    def end_run(self, run_id: str, status: str = "FINISHED") -> bool:
        return self.best_effort(f"the end ({status}) of run {run_id}", self.client.set_terminated, run_id,
                                status=status)

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: Optional[str] = None) -> bool:
        return self.best_effort(f"the artifacts {artifact_path or ''} of run {run_id}".replace("  ", " "),
                                self.client.log_artifacts, run_id, str(local_dir), artifact_path)

    def log_text(self, run_id: str, text: str, name: str) -> bool:
        # study files and tracebacks may hold URIs
        return self.best_effort(f"{name} of run {run_id}", self.client.log_text, run_id, redact_text(text), name)


def log_step_metrics(tracker: Tracker, run_id: str, points: list[tuple[str, float, int]],
                     params: dict[str, str]) -> None:
    """One call: metrics (key, value, step) and params on a run (the throughput profile: step = the batch size)."""
    from mlflow.entities import Metric, Param

    ts = int(time.time() * 1000)
    tracker.client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v, step in points],
                             params=[Param(k, v) for k, v in params.items()])


def trial_note(status: str, metrics: dict[str, Any], reason: Optional[str] = None) -> str:
    """A trial's key figures in one line, for its run description: 'best_val_acc 96.94% · training 0.5 s · ...'.
    Every best_<metric> the task reported leads (val_bpb for charlm, val_mse for a regression, ...)."""
    parts = []
    for key in sorted(k for k in metrics if k.startswith("best_val_")):
        v = metrics[key]
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            parts.append(f"{key} {100 * v:.2f}%" if key.endswith("_acc") else f"{key} {v:.4g}")
    for key, fmt in (("wall_s", "training {:.1f} s"), ("fit_s", "{:.1f} s with start-up"), ("steps", "{:.0f} steps")):
        v = metrics.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            parts.append(fmt.format(v))
    parts.append(status + (f": {reason}" if reason and status in PROBLEM_STATUSES else ""))
    return " · ".join(parts)


