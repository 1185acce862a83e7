"""MLflow: one experiment per study, one parent run per invocation, one child run per trial (docs/design.md §2.4).

Every MLflow call, run, tag and search filter lives behind this package's API: the rest of largebatch (records.py,
tune/, ui.py, ...) asks `Tracker` and `RunTree` by name (`children`, `study_named`, `latest_study`, `reopen`,
`set_tag`, `log_metric`, `log_step_metrics`, ...) and never calls the MLflow client or builds a filter string.
Besides this package only mlflow_app.py (MLflow's server app) imports mlflow; tests/unit/test_tracking_boundary.py
holds that line.

- client.py: tracking URIs, the MLflow client (`_client`), retries (`with_retry`), one-line errors, the preflight.
- runs.py: the study's run tree, named once: its tags, its search filters, and `RunTree`, the read side.
- tracker.py: `Tracker`, the driver side (a RunTree that writes, retried; what it could not log is named).
- epochs.py: `EpochLogger`, the worker side (per-epoch metrics).

We use `MlflowClient` with explicit run ids (no fluent global state), so concurrent trials and restarted workers
log to the right run. Per-epoch metrics are logged by rank 0 only (`EpochLogger`), before the epoch's checkpoint is
reported (train/runner.py, for train/ray_worker.py and inprocess.py); on resume it backfills the checkpoint's
epochs missing from MLflow, so each epoch lands exactly once.

A tracking server that goes away mid-study stops nothing (docs/design.md §10): each MLflow call gives up quickly
(`HTTP_DEFAULTS`) and ours are retried with backoff for a bounded time (`with_retry`, LARGEBATCH_TRACKING_RETRY_S);
epochs that could not be logged wait in the EpochLogger and go out, in order and once, when the server answers
again; what still could not be logged is named (`Tracker.unlogged`), never raised into training.
"""
from __future__ import annotations

import time  # noqa: F401  (tests patch tracking.time.sleep/monotonic, which with_retry reads)

from largebatch.tracking.client import (  # noqa: F401  (the package's API)
    DEFAULT_RETRY_S, HTTP_DEFAULTS, PARAM_MAX, RETRY_S_ENV, _client, check_database_store, check_sqlite_store,
    database_scheme, default_tracking_uri, numeric, open_sqlite, preflight_tracking, resolve_tracking_uri,
    retry_budget_s, safe_params, sqlite_path, tracking_error, unreachable, with_retry)
from largebatch.tracking.epochs import EpochLogger  # noqa: F401
from largebatch.tracking.runs import (  # noqa: F401
    KIND_TAG, NOTE_MAX, NOTE_TAG, PARENT_TAG, REASON_TAG, RUN_NAME_TAG, STATUS_TAG, STUDY_FILTER, TRIAL_DIR_TAG,
    TRIAL_INDEX_TAG, TRIAL_TAG, RunTree)
from largebatch.tracking.tracker import (  # noqa: F401
    EXPERIMENT_KIND_TAG, TRAINING_KIND, Tracker, log_step_metrics, trial_note)
from largebatch.vocab import FINAL_STATUSES  # noqa: F401  (re-exported: the statuses a trial run ends with)
