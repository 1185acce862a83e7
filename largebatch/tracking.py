"""MLflow: one experiment per study, one parent run per invocation, one child run per trial (docs/design.md §2.4).

Besides this module only mlflow_app.py (MLflow's server app) and tune/throughput.py (Metric and Param entities) import
mlflow. We use `MlflowClient` with explicit run ids (no fluent global state), so concurrent trials and restarted workers
log to the right run. Per-epoch metrics are logged by rank 0 only (`EpochLogger`), before the epoch's checkpoint is
reported (train/ray_worker.py, inprocess.py); on resume it backfills the checkpoint's epochs missing from MLflow, so
each epoch lands exactly once.

A tracking server that goes away mid-study stops nothing (docs/design.md §10): each MLflow call gives up quickly
(`HTTP_DEFAULTS`) and ours are retried with backoff for a bounded time (`with_retry`, LARGEBATCH_TRACKING_RETRY_S);
epochs that could not be logged wait in the EpochLogger and go out, in order and once, when the server answers
again; what still could not be logged is named (`Tracker.unlogged`), never raised into training.
"""
from __future__ import annotations

import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from largebatch.redact import redact_text
from largebatch.tracking_store import (  # noqa: F401  (check_sqlite_store, open_sqlite: re-exported)
    check_database_store, check_sqlite_store, database_scheme, open_sqlite, sqlite_path)
from largebatch.vocab import FINAL_STATUSES, PROBLEM_STATUSES  # noqa: F401  (FINAL_STATUSES: re-exported)

PARAM_MAX = 500  # MLflow caps a param value at 500 characters
_SECRET = re.compile(r"(secret|token|password|passwd|credential|access_key|session_key|api_key)", re.I)
TRIAL_TAG = "largebatch.trial_id"
TRIAL_DIR_TAG = "largebatch.trial_dir"  # the Tune trial folder's name
KIND_TAG = "largebatch.kind"  # study | trial
STATUS_TAG = "status"
NOTE_TAG = "mlflow.note.content"  # the run's description: MLflow shows it on the run page (Markdown)
NOTE_MAX = 5000
# The experiment kind MLflow 3.17 reads (key and value as in its UI code): a model-training experiment, not GenAI.
# Its UI also keeps a workflow switch of its own; largebatch/ui.py prints links that set it.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"


def default_tracking_uri(run_root: str | Path = "runs") -> str:
    return f"sqlite:///{Path(run_root).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(cli_value: Optional[str], run_root: str | Path = "runs") -> str:
    """--mlflow, else MLFLOW_TRACKING_URI, else the embedded SQLite store under the run folder."""
    return cli_value or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(run_root)


# MLflow's own HTTP client retries a refused connection 7 times with exponential backoff (minutes) and waits up to
# 120 s for an answer; ours retries on top of it (with_retry), so one call fails fast. A value the user set wins.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
RETRY_S_ENV = "LARGEBATCH_TRACKING_RETRY_S"  # how long one logging step keeps retrying an unreachable server
DEFAULT_RETRY_S = 300.0
# MLflow error codes that mean "not now" rather than "never": the server or its store is down, busy or restarting
_TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED",
                    "SERVICE_UNDER_MAINTENANCE", "ABORTED"}


def _client(uri: str, create: bool = False):
    """An MlflowClient on `uri`. An SQLite store is checked first and created under a lock (tracking_store.py),
    and only with create=True (a study's Tracker): `report`, `ui` and `--resume` never make an empty one."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if redact_text(uri) != uri:
        # MLflow prints "View run ... at: <tracking URI>/#/..." when a run ends, credentials and all
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    from mlflow.tracking import MlflowClient

    path = sqlite_path(uri)
    if path is None:
        return MlflowClient(tracking_uri=uri)
    return open_sqlite(uri, path, create, lambda: MlflowClient(tracking_uri=uri), tracking_error)


def retry_budget_s() -> float:
    try:
        return max(0.0, float(os.environ.get(RETRY_S_ENV, DEFAULT_RETRY_S)))
    except ValueError:
        return DEFAULT_RETRY_S


def unreachable(e: BaseException) -> bool:
    """True for a failure that may pass: no connection, a timeout, a 5xx/429 from the server or its store."""
    if isinstance(e, OSError):  # ConnectionError, TimeoutError, and requests' exceptions (IOError subclasses)
        return True
    msg = str(e)
    return getattr(e, "error_code", None) in _TRANSIENT_CODES or (msg.startswith("API request to")
                                                                   and " failed with " in msg)


def with_retry(fn, budget_s: Optional[float] = None, *, sleep=None, clock=None):
    """fn(), retried with exponential backoff (0.5 s doubling, at most 10 s) while it fails `unreachable`, for at
    most budget_s seconds (default retry_budget_s()); then its last error is raised. Other errors raise at once."""
    sleep, clock = sleep or time.sleep, clock or time.monotonic
    deadline = clock() + (retry_budget_s() if budget_s is None else budget_s)
    delay = 0.5
    while True:
        try:
            return fn()
        except Exception as e:
            if not unreachable(e) or clock() + delay > deadline:
                raise
        sleep(delay)
        delay = min(2 * delay, 10.0)


def tracking_error(e: BaseException) -> str:
    """One line for a person, credentials masked (MLflow's messages carry the server URL, userinfo included)."""
    text = str(e).strip().splitlines()
    return redact_text(f"{type(e).__name__}: {text[0] if text else ''}")[:500]


def safe_params(flat: dict[str, Any]) -> dict[str, str]:
    """Params as strings, secret keys dropped, URI credentials masked, values capped at MLflow's limit."""
    out = {}
    for k, v in flat.items():
        if _SECRET.search(k):
            continue
        s = redact_text(str(v))
        out[k] = s if len(s) <= PARAM_MAX else s[: PARAM_MAX - 3] + "..."
    return out


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite-or-NaN float metrics of a report (MLflow takes NaN; strings and bools go to tags)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[k] = float(v) if not math.isinf(v) else (1e308 if v > 0 else -1e308)
    return out


class Tracker:
    """Driver-side: experiments, the parent run and the child runs."""

    def __init__(self, uri: str, retry_s: Optional[float] = None):
        self.uri = uri
        self.client = _client(uri, create=True)
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
            all_tags["mlflow.parentRunId"] = parent_id
        trial_id, tried = all_tags.get(TRIAL_TAG), list[bool]()

        def create() -> str:
            if tried and parent_id and trial_id:  # a lost answer may hide a run that was made: never make two
                found = self._find_child(experiment_id, parent_id, trial_id)
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

    def _find_child(self, experiment_id: str, parent_id: str, trial_id: str) -> Optional[str]:
        runs = self.client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and "
                                                                      f"tags.`{TRIAL_TAG}` = '{trial_id}'")
        return runs[0].info.run_id if runs else None

    def find_child(self, experiment_id: str, parent_id: str, trial_id: str) -> Optional[str]:
        return self.call(self._find_child, experiment_id, parent_id, trial_id)

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
        tags = [RunTag(STATUS_TAG, status)] + ([RunTag("reason", redact_text(reason)[:5000])] if reason else [])
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


def _epoch_metrics(metrics: dict[str, Any], ts: int):
    from mlflow.entities import Metric

    epoch = int(metrics["epoch"])
    # fit_before_s: the earlier runs' trial time, for the final fit_s (train/loop.py), not a series of its own
    return [Metric(k, v, ts, epoch) for k, v in numeric(metrics).items()
            if k not in ("epoch", "is_final", "fit_before_s")]


def _logged_epochs(client, run_id: str) -> set[int]:
    return {m.step for m in client.get_metric_history(run_id, "val_loss")}  # every task reports val_loss


def _log_missing_epochs(client, run_id: str, history: list[dict[str, Any]]) -> None:
    """Log each epoch of `history` whose step MLflow does not hold yet, in epoch order."""
    present = _logged_epochs(client, run_id)
    ts = int(time.time() * 1000)
    for h in sorted(history, key=lambda h: int(h["epoch"])):
        if int(h["epoch"]) not in present:
            client.log_batch(run_id, metrics=_epoch_metrics(h, ts))
            present.add(int(h["epoch"]))


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


class EpochLogger:
    """Worker-side (rank 0): per-epoch metrics at step=epoch, exactly once per epoch across restarts and outages.

    An epoch that cannot be logged waits in `pending`; each later epoch first sends what waits, in epoch order,
    skipping steps MLflow already holds (after a failed call it asks again: a lost answer may hide a write that
    happened). `close()` waits a bounded time for the server at the end. Nothing here raises into training."""

    def __init__(self, uri: str, run_id: str, retry_s: Optional[float] = None):
        self.client = _client(uri)
        self.run_id = run_id
        self.retry_s = retry_s  # close()'s wait; None: retry_budget_s()
        self.pending: dict[int, dict[str, Any]] = {}
        self.last_logged: Optional[int] = None  # the highest epoch MLflow holds; None until it has answered
        self.down = False  # said once per outage
        self.flush()

    @classmethod
    def from_spec(cls, spec: Optional[dict]) -> Optional["EpochLogger"]:
        if not spec or not spec.get("run_id"):
            return None
        return cls(spec["uri"], spec["run_id"])

    def log_epoch(self, metrics: dict[str, Any]) -> bool:
        """Queue this epoch and send everything that waits (one try). True if nothing waits any more."""
        epoch = int(metrics["epoch"])
        if self.last_logged is None or epoch > self.last_logged:
            self.pending[epoch] = dict(metrics)
        return self.flush()

    def backfill(self, history: Iterable[dict[str, Any]]) -> bool:
        for h in history:
            epoch = int(h["epoch"])
            if self.last_logged is None or epoch > self.last_logged:
                self.pending.setdefault(epoch, dict(h))
        return self.flush()

    def close(self) -> bool:
        """At the end of the trial: wait (bounded) for the server to take what waits."""
        return self.flush(retry_budget_s() if self.retry_s is None else self.retry_s)

    def flush(self, budget_s: float = 0.0) -> bool:
        try:
            with_retry(self._send, budget_s)
        except Exception as e:
            if not self.down:
                self.down = True
                waiting = f"epochs {sorted(self.pending)}" if self.pending else "epochs"
                print(f"[largebatch] MLflow unreachable: {waiting} of run {self.run_id} wait to be logged "
                      f"({tracking_error(e)})", file=sys.stderr, flush=True)
            return False
        if self.down:
            self.down = False
            print(f"[largebatch] MLflow: logging to run {self.run_id} again", file=sys.stderr, flush=True)
        return True

    def _send(self) -> None:
        if self.last_logged is None:
            self.last_logged = max(_logged_epochs(self.client, self.run_id), default=-1)
        ts = int(time.time() * 1000)
        for epoch in sorted(self.pending):
            if epoch > self.last_logged:
                try:
                    self.client.log_batch(self.run_id, metrics=_epoch_metrics(self.pending[epoch], ts))
                except Exception as e:
                    if unreachable(e):
                        self.last_logged = None  # did it land? MLflow is asked before the next try
                        raise
                    print(f"[largebatch] MLflow refused epoch {epoch} of run {self.run_id}: {tracking_error(e)}",
                          file=sys.stderr, flush=True)  # it never will take it: not retried
                else:
                    self.last_logged = epoch
            del self.pending[epoch]

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            try:
                with_retry(lambda k=k, v=v: self.client.set_tag(self.run_id, k, str(v)[:5000]), 0.0)
            except Exception as e:
                print(f"[largebatch] MLflow: tag {k} of run {self.run_id} not logged ({tracking_error(e)})",
                      file=sys.stderr, flush=True)


def preflight_tracking(uri: str, timeout_s: float = 10.0) -> None:
    """Fail before any trial starts if the tracking store is unreachable."""
    from largebatch.errors import BadInput

    path = sqlite_path(uri)
    if path is not None:  # checked, not created: the store is made when the study's first run is (Tracker)
        check_sqlite_store(path.absolute())
        return
    if uri.startswith(("http://", "https://")):
        import base64
        import urllib.request
        from urllib.parse import unquote, urlsplit, urlunsplit

        try:
            u = urlsplit(uri.rstrip("/"))
            # urllib takes no user:password@ in a URL (MLflow's client, through requests, does): send it as Basic auth
            request = urllib.request.Request(urlunsplit(u._replace(netloc=u.netloc.rpartition("@")[2])) + "/health")
            if u.username is not None:
                pair = f"{unquote(u.username)}:{unquote(u.password or '')}".encode()
                request.add_header("Authorization", "Basic " + base64.b64encode(pair).decode())
            with urllib.request.urlopen(request, timeout=timeout_s) as r:
                r.read()
        except Exception as e:
            raise BadInput(f"cannot reach the MLflow server at {redact_text(uri)} "
                           f"({redact_text(str(getattr(e, 'reason', e)))}); start it or fix --mlflow / "
                           f"MLFLOW_TRACKING_URI", field="--mlflow") from None
        return
    if database_scheme(uri) is not None:  # postgresql://, mysql://, ... and the postgres:// alias: one connection
        check_database_store(uri, timeout_s)
        return
    if "://" in uri and not uri.startswith(("file:", "postgresql", "mysql", "databricks")):
        raise BadInput(f"got {redact_text(uri)!r}: use http(s)://host:port, sqlite:///path or postgresql://...",
                       field="--mlflow")
