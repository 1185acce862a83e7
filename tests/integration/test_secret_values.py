"""A password in a searched task.kwargs value (issue #28 item 6): a real study on the test's local Ray, then every
file under its run folder (Ray's trial folders, params.json, result.json, the experiment state, the MLflow store and
its artifacts), every MLflow run name, tag and param, Ray's own session logs, and the command's stdout/stderr are
searched for the passwords. The trials must still get the real URLs (the task refuses a masked one)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

# each password holds a quote: a mask that ended at the quote would leave the rest in clear
SEARCHED = ["s3cr'et-one", 'tok"en-two', "qu0te'dthr33-x"]
BASE = "base-pa55'fourth-xy"
URLS = [f"postgresql://lb:{SEARCHED[0]}@db.example:5432/m", f"https://{SEARCHED[1]}@store.example/x",
        f"s3://bucket/p?secret_key={SEARCHED[2]}"]
# what must never be found: the passwords, and the parts after the quote (Ray turns "'" into "_" in folder names)
NEEDLES = SEARCHED + [BASE] + [p.replace("'", "\"").split("\"")[-1] for p in SEARCHED + [BASE]]

STUDY = {
    "name": "it-secrets",
    "base": {"task": {"name": "tests.integration.secret_tasks:regression_with_store",
                      "kwargs": {"store_url": f"postgresql://lb:{BASE}@db/m"}},
             "data": {"global_batch_size": 16},
             "optim": {"name": "sgd", "base_lr": 0.02, "base_batch_size": 16}, "budget": {"epochs": 1}},
    "search": {"task.kwargs.store_url": {"grid": URLS}},
    "tuner": {"metric": "val_mse", "searcher": "grid", "workers_per_trial": 1, "cpus_per_worker": 1},
    "baseline": {"data.global_batch_size": 16},
}


def _leaks(text: str) -> list[str]:
    return [n for n in NEEDLES if n in text]


@pytest.fixture(scope="module")
def secret_study(examples_importable, tmp_path_factory):
    root = tmp_path_factory.mktemp("secrets")
    path = root / "it-secrets.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    return root, path


def test_validate_prints_no_password(secret_study, capsys):
    from largebatch.cli import main

    _, path = secret_study
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert _leaks(out + err) == [], out + err
    assert "postgresql://lb:***@db.example:5432/m (secret 1)" in out  # the user still sees which value is which


@pytest.mark.slow
def test_a_study_with_passwords_in_searched_values_writes_and_prints_none(secret_study, local_ray, capfd):
    import ray
    from mlflow.tracking import MlflowClient

    from largebatch.config import load_study
    from largebatch.tune.driver import run_study

    root, path = secret_study
    report = run_study(load_study(path), source=str(path), study_text=path.read_text(), run_root=str(root / "runs"),
                       live=False)
    out, err = capfd.readouterr()
    assert _leaks(out + err) == [], "the console"

    # the trials ran with the real URLs: the task refuses a masked one
    client = MlflowClient(report["study"]["tracking_uri"])
    runs = client.search_runs([report["study"]["experiment_id"]])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 4 and all(r.data.tags["status"] == "completed" for r in children), \
        [(r.info.run_name, r.data.tags.get("reason")) for r in children]
    shown = {r.data.params.get("task.kwargs.store_url") for r in children}
    assert "postgresql://lb:***@db.example:5432/m" in shown and "s3://bucket/p?secret_key=***" in shown

    for r in runs:  # MLflow: names, tags, params
        assert _leaks(" ".join([r.info.run_name or "", *map(str, r.data.tags.items()),
                                *map(str, r.data.params.items())])) == [], r.info.run_name

    files = [p for p in (root / "runs").rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"params.json", "result.json", "mlflow.db"} <= names and any(n.startswith("experiment_state") for n in names)
    for p in files:  # Ray's trial folders and their files, the experiment state, the MLflow store and artifacts
        assert _leaks(str(p.relative_to(root))) == [], p
        assert _leaks(p.read_bytes().decode("latin-1")) == [], p

    session = ray._private.worker._global_node.get_session_dir_path()  # this module's own head (local_ray)
    for p in Path(session, "logs").rglob("*"):
        if p.is_file() and p.stat().st_size < 50 * 2**20:
            assert _leaks(p.read_bytes().decode("latin-1")) == [], p
