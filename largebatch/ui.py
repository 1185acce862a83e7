"""`largebatch ui`: the MLflow UI for the tracking store, opened on the latest study's runs.

It runs `mlflow server` as our child on 127.0.0.1 and a free port, waits until it answers, prints the URL of the
latest study's runs view and stays until Ctrl-C (or SIGTERM/SIGHUP), then stops the server by PID. The server dies
with us even if we are SIGKILLed (PR_SET_PDEATHSIG). For a tracking URI that already is a server (http[s]://) there
is nothing to start: it prints that server's URL.

MLflow 3.17's UI chooses between its GenAI pages and its model-training pages by a workflow switch kept in the
browser (local storage `mlflow.workflowType`, default GenAI; the experiment's `mlflow.experimentKind` tag is not
consulted while that switch is on, as it is in 3.17.2). The URL parameter `workflowType=machine_learning` overrides
it for that page only. The server we start is MLflow's app plus one page, /largebatch/open, that sets the switch and
then shows the study's runs (largebatch/mlflow_app.py): the printed link opens it, so run pages opened from the table
are model-training pages too. For a server we did not start, the printed link carries the URL parameter.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Optional

from largebatch.errors import BadInput

WORKFLOW_QUERY = "workflowType=machine_learning"


def runs_url(base: str, experiment_id: Optional[str]) -> str:
    """The UI page of an experiment's runs (the experiments list without one)."""
    base = base.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments?{WORKFLOW_QUERY}"
    return f"{base}/#/experiments/{experiment_id}/runs?{WORKFLOW_QUERY}"


def opener_url(base: str, experiment_id: Optional[str]) -> str:
    """The page of our own server that switches the UI to model-training mode for every page opened from it, run
    pages included, then shows the experiment's runs (largebatch/mlflow_app.py)."""
    from largebatch.mlflow_app import OPEN_PATH

    return f"{base.rstrip('/')}{OPEN_PATH}" + ("" if experiment_id is None else f"?experiment={experiment_id}")


def latest_study_experiment(uri: str) -> tuple[Optional[str], Optional[str]]:
    """(experiment id, experiment name) of the most recently started study run in the store; (None, None) if none."""
    from largebatch.tracking import RunTree

    tree = RunTree(uri)
    exps = tree.experiments(max_results=1000)
    if not exps:
        return None, None
    runs = tree.latest_study([e.experiment_id for e in exps][:100])
    if not runs:
        return None, None
    exp_id = runs[0].info.experiment_id
    return exp_id, next((e.name for e in exps if e.experiment_id == exp_id), None)


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"mlflow server did not answer at {url} in {timeout_s:.0f} s; see {log}")


def start_server(uri: str, port: int, log: Path) -> subprocess.Popen:
    from largebatch.raylib import _die_with_parent

    mlflow_bin = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", uri, "--app-name", "largebatch"]  # + the opener page (largebatch/mlflow_app.py)
    # the UI's job runner is for GenAI evaluation jobs; it also wants a server-side store of its own
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            preexec_fn=_die_with_parent)


def _check_port_free(port: int) -> None:
    """--port taken by another program is one line now, not the server's traceback later."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise BadInput(f"got {port}: port {port} on 127.0.0.1 is not free ({e.strerror}); pick another --port or "
                           f"leave it out for a free one", field="--port") from None


def run_ui(uri: str, port: Optional[int] = None, timeout_s: float = 120.0) -> int:
    from largebatch.raylib import free_port, stop_process
    from largebatch.redact import redact_uri
    from largebatch.tracking import check_sqlite_store, preflight_tracking, sqlite_path

    preflight_tracking(uri)  # checks only: nothing is created
    if (path := sqlite_path(uri)) is not None:
        check_sqlite_store(path.absolute(), must_exist=True)
    if port is not None and not uri.startswith(("http://", "https://")):
        _check_port_free(port)
    exp_id, exp_name = latest_study_experiment(uri)
    what = f"latest study {exp_name!r}" if exp_name else "no study yet: the experiments list"
    if uri.startswith(("http://", "https://")):
        print(f"MLflow UI ({what}):\n  {runs_url(redact_uri(uri), exp_id)}", flush=True)
        return 0
    port = port or free_port()
    fd, name = tempfile.mkstemp(prefix=f"largebatch-mlflow-ui-{port}-", suffix=".log")  # 0600, a fresh name
    os.close(fd)
    log = Path(name)
    proc = start_server(uri, port, log)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(base, proc, log, timeout_s)
        print(f"MLflow UI for {redact_uri(uri)} ({what}):\n  {opener_url(base, exp_id)}\n"
              f"Ctrl-C stops it.", flush=True)
        while proc.poll() is None:
            time.sleep(0.5)
        print(f"largebatch: the MLflow server stopped by itself (exit {proc.returncode}); see {log}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping the MLflow UI", flush=True)
        return 0
    finally:
        stop_process(proc, 20.0)
