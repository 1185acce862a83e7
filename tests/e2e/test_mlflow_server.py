"""A study against a real MLflow tracking server (SQLite backend, artifacts on the S3 server), browsed in Chromium."""
from __future__ import annotations

import pytest

from browser import chromium
from conftest import DUMMY_AWS, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
EXPERIMENT = "e2e-digits"


# Credentials in the URIs themselves: a password in --mlflow (this server takes no auth and ignores it) and the S3
# keys in the storage URI (s3://KEY:SECRET@bucket, pyarrow's form, which Ray's storage and our s3.py read); neither
# may show anywhere (test_secrets_never_reach_params_tags_or_artifacts)
URI_PASSWORD = "uri-pa55w0rd-e2e"


def _with_password(url: str) -> str:
    return url.replace("http://", f"http://lbuser:{URI_PASSWORD}@", 1)


STORAGE = f"s3://{DUMMY_AWS['AWS_ACCESS_KEY_ID']}:{DUMMY_AWS['AWS_SECRET_ACCESS_KEY']}@lb-runs/studies"


@pytest.fixture(scope="module")
def study(s3_server, mlflow_server):
    env = {**s3_server.env, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}
    r = run_cli(["tune", "tune_spaces/digits-smoke.yaml", "--name", EXPERIMENT, "--mlflow",
                 _with_password(mlflow_server.url), "--storage", STORAGE, "--set", "budget.epochs=2"], env)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def _client(url):
    from mlflow.tracking import MlflowClient

    return MlflowClient(url)


def test_runs_metrics_and_artifacts_land_in_server_and_bucket(study, s3_server, mlflow_server):
    client = _client(mlflow_server.url)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.data.tags.get("largebatch.kind") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and len(children) == 5
    for c in children:
        assert c.data.tags["status"] == "completed"
        assert len(client.get_metric_history(c.info.run_id, "val_acc")) == 2
    # MLflow proxied the parent's artifacts (report, plots) into the S3 bucket
    keys = [o["Key"] for o in s3_server.client.list_objects_v2(Bucket="lb-mlflow")["Contents"]]
    for name in ("report/report.md", "report/report.json", "report/report.html", "report/val_acc_vs_batch.png",
                 "study.yaml"):
        assert any(k.endswith(name) for k in keys), (name, keys[:20])
    # and the report also sits next to the trials in the study's storage
    stored = [o["Key"] for o in s3_server.client.list_objects_v2(Bucket="lb-runs", Prefix="studies/")["Contents"]]
    assert any(k.endswith("report/report.md") for k in stored)


def test_secrets_never_reach_params_tags_or_artifacts(study, s3_server, mlflow_server):
    client = _client(mlflow_server.url)
    exp = client.get_experiment_by_name(EXPERIMENT)
    secrets = [DUMMY_AWS["AWS_SECRET_ACCESS_KEY"], DUMMY_AWS["AWS_ACCESS_KEY_ID"], URI_PASSWORD]
    for run in client.search_runs([exp.experiment_id]):
        blob = repr(run.data.params) + repr(run.data.tags)
        assert not any(s in blob for s in secrets), run.info.run_name
    for o in s3_server.client.list_objects_v2(Bucket="lb-mlflow")["Contents"]:
        body = s3_server.client.get_object(Bucket="lb-mlflow", Key=o["Key"])["Body"].read()
        assert not any(s.encode() in body for s in secrets), o["Key"]
    # the report next to the trials (report.json/md/html), as the driver wrote it
    for o in s3_server.client.list_objects_v2(Bucket="lb-runs", Prefix="studies/")["Contents"]:
        if "/report/" in o["Key"]:
            body = s3_server.client.get_object(Bucket="lb-runs", Key=o["Key"])["Body"].read()
            assert not any(s.encode() in body for s in secrets), o["Key"]
    leaked = [line for line in (study.stdout + study.stderr).splitlines() if any(s in line for s in secrets)]
    assert not leaked, leaked[:5]
    assert "lbuser:***@127.0.0.1" in study.stdout and "s3://***@lb-runs/studies" in study.stdout  # shown, masked


def test_mlflow_ui_shows_the_trial_runs_in_chromium(study, mlflow_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser = chromium(tmp_path)
    try:
        exp = _client(mlflow_server.url).get_experiment_by_name(EXPERIMENT)
        browser.get(f"{mlflow_server.url}/#/experiments/{exp.experiment_id}/runs")
        # the study's parent run is listed; its trials are nested under it: expand it
        WebDriverWait(browser, 60).until(ec.presence_of_element_located((By.XPATH, "//*[contains(text(), 'study ')]")))
        expand = "//button[contains(@data-component-id, 'runnamecellrenderer')]"
        WebDriverWait(browser, 30).until(ec.element_to_be_clickable((By.XPATH, expand))).click()
        WebDriverWait(browser, 60).until(
            ec.presence_of_element_located((By.XPATH, "//*[contains(text(), 'B=128 linear')]")))
        browser.save_screenshot(str(tmp_path / "mlflow_ui.png"))
        page = browser.page_source
        assert "baseline B=32 none" in page and "B=512 none" in page
    finally:
        browser.quit()
    assert (tmp_path / "mlflow_ui.png").stat().st_size > 10_000


def test_html_report_and_run_descriptions_in_chromium(study, mlflow_server, tmp_path):
    """The link `largebatch ui` prints opens the runs table; the study run's report.html opens in MLflow's artifact
    view with its tables and embedded plots; a trial's run page shows its key figures as the description."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from largebatch.ui import runs_url

    client = _client(mlflow_server.url)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("largebatch.kind") == "study")
    child = next(r for r in runs if r.info.run_name == "B=128 linear warmup=0ep")
    assert child.data.tags["mlflow.note.content"].startswith("best_val_acc ")
    browser = chromium(tmp_path)
    try:
        browser.get(runs_url(mlflow_server.url, exp.experiment_id))
        WebDriverWait(browser, 60).until(ec.presence_of_element_located((By.XPATH, "//*[contains(text(), 'study ')]")))
        browser.get(f"{mlflow_server.url}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}"
                    f"/artifacts/report/report.html")
        frame = WebDriverWait(browser, 60).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, "iframe.mlflow-html-iframe")))
        browser.switch_to.frame(frame)
        WebDriverWait(browser, 60).until(ec.presence_of_element_located((By.TAG_NAME, "table")))
        headers = [th.text for th in browser.find_elements(By.TAG_NAME, "th")]
        assert "batch" in headers and "recipe" in headers, headers
        text = browser.find_element(By.TAG_NAME, "body").text
        assert "max_safe_batch" in text and "B=128 linear warmup=0ep" in text
        plots = browser.find_elements(By.CSS_SELECTOR, "img[src^='data:image/png;base64,']")
        assert plots, "no embedded plot"
        widths = [browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", p) for p in plots]
        assert all(w and w > 100 for w in widths), widths  # the PNGs decode in the page
        browser.switch_to.default_content()
        browser.save_screenshot(str(tmp_path / "report_html.png"))
        browser.get(f"{mlflow_server.url}/#/experiments/{exp.experiment_id}/runs/{child.info.run_id}")
        WebDriverWait(browser, 60).until(
            ec.presence_of_element_located((By.XPATH, "//*[contains(text(), 'best_val_acc ')]")))
    finally:
        browser.quit()
    assert (tmp_path / "report_html.png").stat().st_size > 10_000
