"""Bad network-facing input through the real CLI: one line, exit 2, no traceback, nothing written."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "largebatch")


@pytest.mark.parametrize("args,field,needle", [
    (["tune", "STUDY", "--mlflow", "http://127.0.0.1:9"], "--mlflow", "cannot reach the MLflow server"),
    (["tune", "STUDY", "--mlflow", "ftp://x"], "--mlflow", "use http(s)://host:port"),
    (["train", "STUDY", "--address", "127.0.0.1:9"], "--address", "cannot reach a Ray cluster"),
    (["train", "STUDY", "--workers", "4"], "--workers", "the Ray cluster has"),
])
def test_unreachable_or_too_small_is_one_line_exit_2(tmp_path, args, field, needle):
    study = str(REPO / "tune_spaces" / "digits-smoke.yaml")
    t0 = time.time()
    r = subprocess.run([CLI, *[study if a == "STUDY" else a for a in args]], cwd=tmp_path, capture_output=True,
                       text=True, timeout=180)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("largebatch: error:")]
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1 and field in lines[0] and needle in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "runs" / "mlflow.db").exists()
    assert time.time() - t0 < 120  # bounded timeouts, not a minutes-long retry loop
