"""A database MLflow store (postgresql://...) with no server behind it: one line naming --mlflow, the URI with its
password masked and the fix, exit 2, nothing written, before Ray starts (largebatch/tracking_store.py)."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from largebatch.cli import main
from largebatch.errors import BadInput
from largebatch.tracking_store import check_database_store, database_scheme

REPO_ROOT = Path(__file__).resolve().parents[2]
SMOKE = REPO_ROOT / "tune_spaces" / "digits-smoke.yaml"
PASSWORD = "pg-Pa55w0rd-unit"


def _dead_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed: refused, not filtered)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _uri(port: int, scheme: str = "postgresql") -> str:
    return f"{scheme}://lbuser:{PASSWORD}@127.0.0.1:{port}/mlflow"


def test_database_schemes():
    assert database_scheme("postgresql://u:p@h/db") == "postgresql"
    assert database_scheme("postgresql+psycopg://u:p@h/db") == "postgresql"
    assert database_scheme("mysql+pymysql://u:p@h/db") == "mysql"
    assert database_scheme("postgres://u:p@h/db") == "postgres"
    for other in ("sqlite:///x.db", "http://127.0.0.1:5000", "file:///tmp/mlruns", "runs/mlflow.db"):
        assert database_scheme(other) is None


def test_no_server_is_one_line_with_the_password_masked():
    port = _dead_port()
    with pytest.raises(BadInput) as e:
        check_database_store(_uri(port), timeout_s=5)
    line = str(e.value)
    assert "\n" not in line and PASSWORD not in line
    assert line.startswith("--mlflow: cannot reach the MLflow store ")
    assert f"postgresql://lbuser:***@127.0.0.1:{port}/mlflow" in line
    assert "Connection refused" in line and "start the database server or fix --mlflow" in line


@pytest.mark.parametrize("uri, must_contain", [
    (_uri(5432, "postgres"), "takes postgresql://, not postgres://"),
    (f"postgresql://lbuser:{PASSWORD}@127.0.0.1:notaport/mlflow", "not a database URI"),
    (_uri(5432, "postgresql+nosuchdriver"), "postgresql+nosuchdriver://lbuser:***@"),
])
def test_unusable_database_uris_are_one_line(uri, must_contain):
    with pytest.raises(BadInput) as e:
        check_database_store(uri, timeout_s=5)
    line = str(e.value)
    assert "\n" not in line and PASSWORD not in line and must_contain in line, line


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def no_ray(*a, **k):
        raise AssertionError("Ray was started for a store that cannot work")

    import largebatch.raylib

    monkeypatch.setattr(largebatch.raylib, "init_ray", no_ray)
    return tmp_path


@pytest.mark.parametrize("argv", [
    ["tune", str(SMOKE), "--mlflow", "{uri}"],
    ["tune", str(SMOKE), "--resume", "--mlflow", "{uri}"],
    ["report", "--experiment", "digits-smoke", "--mlflow", "{uri}"],
    ["ui", "--mlflow", "{uri}"],
], ids=["tune", "tune-resume", "report", "ui"])
def test_cli_with_no_database_server_is_one_line_exit_2_nothing_written(argv, in_tmp, capsys):
    port = _dead_port()
    rc = main([a.replace("{uri}", _uri(port)) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("largebatch: error: --mlflow: cannot reach the MLflow store"), err
    assert f"lbuser:***@127.0.0.1:{port}/mlflow" in lines[0] and "start the database server" in lines[0]
    assert PASSWORD not in out + err
    assert not list(in_tmp.iterdir()), sorted(p.name for p in in_tmp.iterdir())
