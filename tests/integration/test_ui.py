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

import pytest
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


def _start_ui(uri: str, cwd: Path) -> tuple[subprocess.Popen, str, str, str]:
    """`largebatch ui` on the store: (its process, the server's base URL, the experiment id, all it printed)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([str(VENV_BIN / "largebatch"), "ui", "--mlflow", uri], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deadline = time.time() + 180
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"(http://127\.0\.0\.1:\d+)/largebatch/open\?experiment=(\d+)$", line.strip())
        if m:
            return proc, m[1], m[2], "".join(lines)
    proc.kill()
    raise AssertionError("".join(lines))


def test_ui_prints_the_latest_study_runs_url_and_stops_on_ctrl_c(tmp_path):
    uri, newer = _store_with_two_studies(tmp_path)
    proc, url, exp_id, printed = _start_ui(uri, tmp_path)
    try:
        assert exp_id == newer and "newer-study" in printed
        # the server behind the link serves this store
        with urllib.request.urlopen(f"{url}/ajax-api/2.0/mlflow/experiments/get?experiment_id={exp_id}",
                                    timeout=10) as r:
            exp = json.loads(r.read())["experiment"]
        assert exp["name"] == "newer-study"
        # the printed page sets the UI's model-training switch, then shows the study's runs
        with urllib.request.urlopen(f"{url}/largebatch/open?experiment={exp_id}", timeout=10) as r:
            page = r.read().decode()
        assert 'localStorage.setItem("mlflow.workflowType_v1", JSON.stringify("machine_learning"))' in page
        assert f'location.replace("/#/experiments/{exp_id}/runs?workflowType=machine_learning")' in page
        with urllib.request.urlopen(f"{url}/", timeout=10) as r:  # MLflow's own pages are still there
            assert "<html" in r.read().decode().lower()
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


@pytest.mark.slow
def test_run_pages_opened_after_the_printed_link_are_model_training_pages(tmp_path):
    """In Chromium: a run page opened without the URL parameter is a GenAI page on a fresh browser; after the printed
    link it is a model-training page (the UI's switch was set by /largebatch/open)."""
    from browser import chromium
    from selenium.webdriver.support.ui import WebDriverWait

    from largebatch.tracking import Tracker

    uri, exp_id = _store_with_two_studies(tmp_path)
    run_id = Tracker(uri).start_run(exp_id, "B=64 sqrt", tags={"largebatch.kind": "trial"})
    proc, base, _, _ = _start_ui(uri, tmp_path)
    url = f"{base}/largebatch/open?experiment={exp_id}"
    browser = None
    try:
        browser = chromium(tmp_path)
        wait = WebDriverWait(browser, 90)

        def run_page_nav() -> str:
            browser.get(f"{base}/#/experiments/{exp_id}/runs/{run_id}")
            wait.until(lambda b: "B=64 sqrt" in b.page_source and ("Model registry" in b.page_source or
                                                                   "Prompts" in b.page_source))
            return browser.page_source

        page = run_page_nav()
        assert "Prompts" in page and "Model registry" not in page  # MLflow's default: GenAI pages
        browser.get(url)
        wait.until(lambda b: f"/experiments/{exp_id}/runs" in b.current_url)
        assert browser.execute_script("return localStorage.getItem('mlflow.workflowType_v1')") == '"machine_learning"'
        page = run_page_nav()
        assert "Model registry" in page and "Prompts" not in page
    finally:
        if browser is not None:
            browser.quit()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
