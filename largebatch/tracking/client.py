"""The MLflow client under every tracking call: URIs, the HTTP defaults, retries (`with_retry`) and the one-line
errors; params and metrics as MLflow takes them; the preflight check of a store. See the package docstring."""
from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path
from typing import Any, Optional

from largebatch.redact import redact_text
from largebatch.tracking_store import (
    check_database_store, check_sqlite_store, database_scheme, open_sqlite, sqlite_path)

PARAM_MAX = 500  # MLflow caps a param value at 500 characters
_SECRET = re.compile(r"(secret|token|password|passwd|credential|access_key|session_key|api_key)", re.I)


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
