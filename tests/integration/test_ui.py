"""`largebatch ui`: a real `mlflow server` on 127.0.0.1, the link to the latest study's runs, a clean Ctrl-C."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from procs import alive, descendants

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def _store_with_two_studies(tmp_path: Path) -> tuple[str, str]:
    from largebatch.tracking import KIND_TAG, Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    older = tracker.experiment_id("older-study", (tmp_path / "art").as_uri())
    tracker.start_run(older, "study 1", tags={KIND_TAG: "study"})
    time.sleep(0.05)
    newer = tracker.experiment_id("newer-study", (tmp_path / "art").as_uri())
    tracker.start_run(newer, "study 2", tags={KIND_TAG: "study"})
    return uri, newer


def test_ui_prints_the_latest_study_runs_url_and_stops_on_ctrl_c(tmp_path):
    uri, newer = _store_with_two_studies(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([str(VENV_BIN / "largebatch"), "ui", "--mlflow", uri], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines, url = [], None
        deadline = time.time() + 180
        while time.time() < deadline and url is None:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"(http://127\.0\.0\.1:\d+)/#/experiments/(\d+)/runs\?workflowType=machine_learning", line)
            if m:
                url, exp_id = m[1], m[2]
        assert url is not None, "".join(lines)
        assert exp_id == newer and "newer-study" in "".join(lines)
        # the server behind the link serves this store
        with urllib.request.urlopen(f"{url}/ajax-api/2.0/mlflow/experiments/get?experiment_id={exp_id}",
                                    timeout=10) as r:
            exp = json.loads(r.read())["experiment"]
        assert exp["name"] == "newer-study"
        assert {t["key"]: t["value"] for t in exp["tags"]}["mlflow.experimentKind"] == "custom_model_development"
        server = descendants(proc.pid)
        assert server, "no server process under the CLI"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        deadline = time.time() + 30
        while time.time() < deadline and any(alive(p) for p in server):
            time.sleep(0.3)
        assert not [p for p in server if alive(p)], "the MLflow server outlived `largebatch ui`"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ui_on_a_missing_store_is_one_line_exit_2(tmp_path):
    p = subprocess.run([str(VENV_BIN / "largebatch"), "ui", "--mlflow", f"sqlite:///{tmp_path / 'none.db'}"],
                       env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "--mlflow" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "none.db").exists()
