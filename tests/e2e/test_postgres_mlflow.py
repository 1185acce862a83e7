"""MLflow on PostgreSQL, as the k8s deployment runs it: a real PostgreSQL server (tests/e2e/pgserver.py), an
`mlflow server` with the postgresql:// backend store and artifacts on the S3 server; and `--mlflow postgresql://...`
directly (MLflow's SQLAlchemy store, no server). A whole study lands, `largebatch report` rebuilds it from the store
alone, `--resume` finishes a study whose driver was stopped and `--extend` adds trials under the same parent run.
The database password never shows in what a command prints."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from conftest import DUMMY_AWS, REPO, VENV_BIN, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
SMOKE = REPO / "tune_spaces" / "digits-smoke.yaml"
N_SMOKE = 5  # digits-smoke: the baseline + a 2 x 2 grid
STORAGE = f"s3://{DUMMY_AWS['AWS_ACCESS_KEY_ID']}:{DUMMY_AWS['AWS_SECRET_ACCESS_KEY']}@lb-runs/pg-studies"


def _password(uri: str) -> str:
    password = urlsplit(uri).password
    assert password and len(password) >= 16
    return password


def _no_secret(r: subprocess.CompletedProcess, *secrets: str) -> None:
    text = r.stdout + r.stderr
    leaked = [line for line in text.splitlines() if any(s in line for s in secrets)]
    assert not leaked, leaked[:5]


def _env(s3_server) -> dict:
    return {**s3_server.env, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "MLFLOW_TRACKING_URI": None}


def _children(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("largebatch.kind") == "study"]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], children


def _epochs_once(client, children, epochs: int) -> None:
    for c in children:
        assert c.data.tags["status"] == "completed", (c.info.run_name, c.data.tags.get("status"))
        steps = sorted(m.step for m in client.get_metric_history(c.info.run_id, "val_acc"))
        assert steps == list(range(epochs)), (c.info.run_name, steps)  # each epoch exactly once


def _rows_in_postgres(backend: str, experiment: str) -> int:
    """Runs of `experiment` as PostgreSQL itself holds them (not through MLflow): the study is in this database."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(backend)
    try:
        with engine.connect() as con:
            return con.execute(sqlalchemy.text(
                "SELECT count(*) FROM runs JOIN experiments ON runs.experiment_id = experiments.experiment_id "
                "WHERE experiments.name = :name"), {"name": experiment}).scalar()
    finally:
        engine.dispose()


def _report(uri: str, experiment: str, env: dict, cwd) -> tuple[dict, subprocess.CompletedProcess]:
    r = run_cli(["report", "--mlflow", uri, "--experiment", experiment, "--json"], env, cwd=cwd, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout), r


EXPERIMENT = "e2e-pg"
EPOCHS = 2


def test_study_on_the_postgres_backed_server_resume_report_extend(s3_server, mlflow_pg_server, tmp_path):
    """One study against the server: its driver stopped (SIGTERM) after some trials, `--resume` finishes it, the
    report is rebuilt from MLflow alone and equals the study's own, `--extend` adds the grid's new batch size."""
    from mlflow.tracking import MlflowClient

    env = _env(s3_server)
    password = _password(mlflow_pg_server.backend)
    base = ["tune", str(SMOKE), "--name", EXPERIMENT, "--mlflow", mlflow_pg_server.url, "--storage", STORAGE,
            "--set", f"budget.epochs={EPOCHS}"]
    client = MlflowClient(mlflow_pg_server.url)
    log = tmp_path / "first.log"
    merged = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    with log.open("w") as out:
        proc = subprocess.Popen([str(VENV_BIN / "largebatch"), *base], env=merged, cwd=tmp_path, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline, done = time.time() + 600, 0
        while time.time() < deadline and proc.poll() is None:
            if client.get_experiment_by_name(EXPERIMENT) is not None:
                _, children = _children(client, EXPERIMENT)
                done = sum(c.data.tags.get("status") == "completed" for c in children)
                if done >= 2:
                    break
            time.sleep(1)
        assert done >= 2 and proc.poll() is None, log.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)  # the driver closes its runs and prints how to continue
        rc = proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    first = log.read_text()
    assert rc == 128 + signal.SIGTERM, (rc, first[-3000:])
    assert "Continue the study with:" in first and password not in first
    parent, before = _children(client, EXPERIMENT)
    assert 2 <= len(before) and parent.info.status == "KILLED", (len(before), parent.info.status)

    r = run_cli([*base, "--resume"], env, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "resuming" in r.stdout
    _no_secret(r, password)
    parent_after, children = _children(client, EXPERIMENT)
    assert parent_after.info.run_id == parent.info.run_id and parent_after.info.status == "FINISHED"
    assert len(children) == N_SMOKE, [c.info.run_name for c in children]  # no trial got a second run
    assert {c.info.run_id for c in before if c.data.tags.get("status") == "completed"} <= \
        {c.info.run_id for c in children}  # finished trials were kept, not re-run
    _epochs_once(client, children, EPOCHS)
    # the study is in PostgreSQL (the parent and every trial), and its artifacts in the bucket
    assert _rows_in_postgres(mlflow_pg_server.backend, EXPERIMENT) == N_SMOKE + 1
    keys = [o["Key"] for o in s3_server.client.list_objects_v2(Bucket="lb-mlflow", Prefix="pg/")["Contents"]]
    for name in ("report/report.json", "report/report.html", "study.yaml"):
        assert any(k.endswith(name) for k in keys), (name, keys[:20])

    # the report from MLflow alone is the study's own
    report, rr = _report(mlflow_pg_server.url, EXPERIMENT, env, tmp_path)
    _no_secret(rr, password)
    stored = s3_server.client.list_objects_v2(Bucket="lb-runs", Prefix="pg-studies/")["Contents"]
    key = next(o["Key"] for o in stored if o["Key"].endswith("report/report.json"))
    own = json.loads(s3_server.client.get_object(Bucket="lb-runs", Key=key)["Body"].read())
    assert report["counts"] == own["counts"] and report["counts"]["completed"] == N_SMOKE
    assert report["recommended"]["global_batch_size"] == own["recommended"]["global_batch_size"]
    assert report["study"]["parent_run_id"] == parent.info.run_id

    # --extend: a batch size the grid lacked, its trials under the same parent, the old ones untouched
    raw = yaml.safe_load(SMOKE.read_text())
    raw["search"]["data.global_batch_size"] = {"grid": [128, 256, 512]}
    extended = tmp_path / "digits-smoke-256.yaml"
    extended.write_text(yaml.safe_dump(raw))
    r = run_cli(["tune", str(extended), *base[2:], "--extend"], env, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    _no_secret(r, password)
    parent_ext, after = _children(client, EXPERIMENT)
    assert parent_ext.info.run_id == parent.info.run_id
    new = [c for c in after if c.info.run_id not in {c.info.run_id for c in children}]
    assert len(after) == N_SMOKE + 2 and {int(c.data.params["data.global_batch_size"]) for c in new} == {256}
    _epochs_once(client, after, EPOCHS)
    assert _rows_in_postgres(mlflow_pg_server.backend, EXPERIMENT) == N_SMOKE + 3
    report, _ = _report(mlflow_pg_server.url, EXPERIMENT, env, tmp_path)
    assert report["counts"]["completed"] == N_SMOKE + 2
    assert 256 in {row["global_batch_size"] for row in report["configs"]}


def _database(server_uri: str, name: str) -> str:
    """A second, empty database on the same server (so the direct store shares nothing with the server's)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(server_uri, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as con:
            con.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return urlunsplit(urlsplit(server_uri)._replace(path=f"/{name}"))


def test_study_with_mlflow_postgresql_directly(s3_server, postgres_uri, tmp_path):
    """`--mlflow postgresql://USER:PASSWORD@HOST:PORT/DB`: the driver and every trial write to PostgreSQL through
    MLflow's SQLAlchemy store; the report works from it; the URI is shown with its password masked."""
    from mlflow.tracking import MlflowClient

    uri = _database(postgres_uri, "direct")
    password = _password(uri)
    env = _env(s3_server)
    name = "e2e-pg-direct"
    r = run_cli(["tune", str(SMOKE), "--name", name, "--mlflow", uri, "--storage", str(tmp_path / "runs"),
                 "--set", f"budget.epochs={EPOCHS}"], env, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    _no_secret(r, password)
    assert f"lbuser:***@127.0.0.1:{urlsplit(uri).port}/direct" in r.stdout  # shown, masked
    client = MlflowClient(uri)
    parent, children = _children(client, name)
    assert len(children) == N_SMOKE and parent.info.status == "FINISHED"
    _epochs_once(client, children, EPOCHS)
    assert _rows_in_postgres(uri, name) == N_SMOKE + 1
    report, rr = _report(uri, name, env, tmp_path)
    _no_secret(rr, password)
    assert report["counts"]["completed"] == N_SMOKE and report["study"]["parent_run_id"] == parent.info.run_id
    text = run_cli(["report", "--mlflow", uri, "--experiment", name], env, cwd=tmp_path, timeout=300)
    assert text.returncode == 0 and "max_safe_batch" in text.stdout, text.stderr[-2000:]
    _no_secret(text, password)


def test_refused_password_and_missing_database_are_one_line(s3_server, postgres_uri, tmp_path):
    """A server that is there but refuses: one line naming --mlflow, the URI masked and the fix, exit 2, before Ray,
    nothing written in the working folder."""
    u = urlsplit(postgres_uri)
    wrong_password = "not-the-pa55word"
    cases = {
        "password": (urlunsplit(u._replace(netloc=f"lbuser:{wrong_password}@{u.hostname}:{u.port}")),
                     "fix the user or password in --mlflow"),
        "database": (urlunsplit(u._replace(path="/no_such_db")), "create the database"),
    }
    for what, (uri, fix) in cases.items():
        cwd = tmp_path / what
        cwd.mkdir()
        r = run_cli(["tune", str(SMOKE), "--mlflow", uri], _env(s3_server), cwd=cwd, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, (what, r.stderr[-2000:])
        assert lines[0].startswith("largebatch: error: --mlflow: cannot reach the MLflow store postgresql://lbuser:***@")
        assert fix in lines[0], lines[0]
        _no_secret(r, _password(postgres_uri), wrong_password)
        assert not list(cwd.iterdir()), sorted(p.name for p in cwd.iterdir())
        # refused before Ray started (tests/unit/test_tracking_store_database.py checks that in-process)
        assert "[largebatch] study" not in r.stdout and "Ray" not in r.stderr, r.stdout[-2000:]
