"""`largebatch train` runs the same preflight as `tune` before Ray starts: the --output-json folder (test_cli_errors),
the local storage folder (test_cli_errors), and an s3:// storage: bucket, credentials, endpoint. `train` logs nothing
to MLflow (it has no --mlflow), so there is no tracking store to check. Keys in the URI never show."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from largebatch.cli import main

SMOKE = Path(__file__).resolve().parents[2] / "tune_spaces" / "digits-smoke.yaml"


def test_train_checks_an_s3_storage_before_ray_and_masks_its_keys(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    t0 = time.monotonic()
    rc = main(["train", str(SMOKE), "--storage",
               "s3://AKIAEXAMPLE:s3cr3t-xyz@lb-runs/train?endpoint_override=http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "--storage" in err and "cannot reach the S3 endpoint" in err and "s3://***@lb-runs/train" in err
    assert "s3cr3t" not in err and "AKIAEXAMPLE" not in err
    assert time.monotonic() - t0 < 60
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    assert not (tmp_path / "runs").exists()


def test_train_has_no_mlflow_to_preflight():
    from largebatch.cli import build_parser

    train = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]
    assert "--mlflow" not in {o for a in train._actions for o in a.option_strings}
