"""The embedded SQLite store (largebatch/tracking_store.py): created once under a lock, so studies started at once
in one fresh folder both work; a store that cannot work is one line before anything is written."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from largebatch.errors import BadInput
from largebatch.tracking import check_sqlite_store, preflight_tracking

REPO_ROOT = Path(__file__).resolve().parents[2]

_OPEN = """
import sys, time
from largebatch.tracking import Tracker
go = float(sys.argv[2])
while time.time() < go:
    time.sleep(0.002)
t = Tracker(sys.argv[1])
print(t.experiment_id(sys.argv[3]))
"""


def test_studies_started_at_once_in_a_fresh_folder_create_the_store_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    go = time.time() + 15  # every process has imported MLflow by then: they open the new store together
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN, uri, str(go), f"study{i}"], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    results = [p.communicate(timeout=240) + (p.returncode,) for p in procs]
    for _out, err, rc in results:
        assert rc == 0, err[-2000:]
    assert len({out.strip() for out, _, _ in results}) == 3  # three experiments in one store
    from mlflow.tracking import MlflowClient

    names = {e.name for e in MlflowClient(uri).search_experiments()}
    assert {"study0", "study1", "study2"} <= names


def test_a_half_made_store_is_one_line(tmp_path):
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    db = tmp_path / "mlflow.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    _initialize_tables(engine)  # a whole store, then what an interrupted migration leaves: an older revision and
    with engine.begin() as con:  # alembic's temporary table
        con.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = 'cfd24bdc0731'"))
        con.execute(sqlalchemy.text("CREATE TABLE _alembic_tmp_tags (key TEXT)"))
    engine.dispose()
    from largebatch.tracking import Tracker

    with pytest.raises(BadInput, match=r"--mlflow: cannot open the MLflow store .*mlflow.db.*move it away"):
        Tracker(f"sqlite:///{db}")


@pytest.mark.parametrize("make, match", [
    (lambda p: p.mkdir(), "is not a file"),
    (lambda p: p.write_text("not a database at all"), "is not an SQLite database"),
])
def test_a_store_that_is_not_one_is_refused_before_opening(tmp_path, make, match):
    db = tmp_path / "mlflow.db"
    make(db)
    with pytest.raises(BadInput, match=match):
        preflight_tracking(f"sqlite:///{db}")


def test_a_parent_that_is_a_file_is_refused_and_nothing_is_made(tmp_path):
    (tmp_path / "afile").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(BadInput, match=r"afile' is a file, so the MLflow store"):
        preflight_tracking(f"sqlite:///{tmp_path / 'afile' / 'sub' / 'child.db'}")
    assert sorted(tmp_path.rglob("*")) == before


def test_the_preflight_checks_and_creates_nothing(tmp_path):
    preflight_tracking(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    assert not (tmp_path / "runs").exists()


def test_reading_a_store_that_does_not_exist_makes_none(tmp_path):
    with pytest.raises(BadInput, match="no MLflow store"):
        check_sqlite_store(tmp_path / "runs" / "mlflow.db", must_exist=True)
    from largebatch.tracking import _client

    with pytest.raises(BadInput, match="no MLflow store"):
        _client(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    assert not list(tmp_path.iterdir())
