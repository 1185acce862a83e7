"""How a study that cannot go on ends: the failure named in one line, MLflow runs closed, the resume command."""
from __future__ import annotations

import signal

import pytest

from largebatch.cli import build_parser, resume_command
from largebatch.failures import StudyAborted, describe, exception_chain
from largebatch.redact import redact_uri

RAY_OOM_TEXT = ("Task was killed due to the node running low on memory.\nMemory on the node (IP: 10.0.0.2, ID: ab12) "
                "where the lease (actor ID: cd34) was running was 22.38GB / 23.48GB (0.953), which exceeds the "
                "memory usage threshold of 0.95.")


class OutOfMemoryError(Exception):  # the name Ray's exception has; describe() reads names, not Ray's classes
    pass


class TrainingFailedError(Exception):
    pass


def test_oom_named_with_the_memory_figures():
    try:
        try:
            raise OutOfMemoryError(RAY_OOM_TEXT)
        except OutOfMemoryError as inner:
            raise RuntimeError(f"Caught unexpected exception: {inner}") from inner
    except RuntimeError as e:
        line = describe(e)
    assert line.startswith("node out of memory: 22.4 of 23.5 GB used"), line
    assert "\n" not in line


def test_oom_without_figures_reads_this_machine():
    line = describe(RuntimeError("9 worker(s) were killed due to the node running low on memory"))
    assert line.startswith("node out of memory")
    assert " GB used" in line  # from /proc/meminfo


def test_user_exception_is_named_not_the_wrapper():
    try:
        try:
            raise ValueError("bad shape (3, 4)")
        except ValueError as inner:
            raise TrainingFailedError("Training failed due to worker errors:\n...") from inner
    except TrainingFailedError as e:
        assert describe(e) == "ValueError: bad shape (3, 4)"


def test_exception_chain_stops_on_cycles():
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a
    assert exception_chain(a) == [a, b]


@pytest.mark.parametrize("uri,expected", [
    ("postgresql://lb:s3cr3t@db:5432/mlflow", "postgresql://lb:***@db:5432/mlflow"),
    ("http://token123@mlflow:5000", "http://***@mlflow:5000"),
    ("s3://bucket/p?endpoint_override=http://127.0.0.1:9000&secret_key=abc", "s3://bucket/p?endpoint_override=http://127.0.0.1:9000&secret_key=***"),
    ("postgresql://lb:p@ss@db:5432/m", "postgresql://lb:***@db:5432/m"),
    ("sqlite:///runs/mlflow.db", "sqlite:///runs/mlflow.db"),
    ("see http://tok@h/x and mail ops@example.com", "see http://***@h/x and mail ops@example.com"),
    ("runs/ray", "runs/ray"),
])
def test_redact_uri(uri, expected):
    assert redact_uri(uri) == expected


def test_resume_command_repeats_the_invocation_without_credentials():
    args = build_parser().parse_args(["tune", "my study.yaml", "--set", "tuner.num_samples=2", "--smoke", "--name",
                                      "s1", "--mlflow", "postgresql://u:pw@h/db", "--storage", "s3://b/p"])
    cmd = resume_command(args)
    assert cmd == ("largebatch tune 'my study.yaml' --set tuner.num_samples=2 --smoke --name s1 --storage s3://b/p "
                   "--mlflow 'postgresql://u:***@h/db' --resume")
    assert "pw" not in cmd


def test_abort_closes_runs_and_says_how_to_continue(tmp_path):
    from largebatch.tracking import Tracker
    from largebatch.tune.driver import _abort

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = tracker.experiment_id("st")
    parent = tracker.start_run(exp, "study", tags={"largebatch.kind": "study"})
    done = tracker.start_run(exp, "B=32", parent_id=parent, tags={"status": "completed"})
    tracker.end_run(done)
    open_run = tracker.start_run(exp, "B=64", parent_id=parent, tags={"status": "running"})

    err = _abort(tracker, exp, "st", parent, RuntimeError(RAY_OOM_TEXT), "largebatch tune s.yaml --resume")
    assert isinstance(err, StudyAborted) and err.exit_code == 1
    text = str(err)
    assert "node out of memory: 22.4 of 23.5 GB used" in text
    assert "1 finished trial(s) are safe in MLflow" in text and "marked FAILED" in text
    assert text.rstrip().endswith("largebatch tune s.yaml --resume")
    assert tracker.client.get_run(parent).info.status == "FAILED"
    reopened = tracker.client.get_run(open_run)
    assert reopened.info.status == "FAILED" and reopened.data.tags["status"] == "running"  # --resume continues it


def test_abort_on_a_signal_is_killed_with_128_plus_signal(tmp_path, monkeypatch):
    from largebatch import interrupts
    from largebatch.tracking import Tracker
    from largebatch.tune.driver import _abort

    monkeypatch.setattr(interrupts, "_received", signal.SIGTERM)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = tracker.experiment_id("st")
    parent = tracker.start_run(exp, "study")
    err = _abort(tracker, exp, "st", parent, KeyboardInterrupt(), None)
    assert err.exit_code == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM" in str(err) and "--resume" in str(err)
    assert tracker.client.get_run(parent).info.status == "KILLED"


def test_credentials_never_reach_mlflow(tmp_path):
    from largebatch.tracking import Tracker

    secret = "pa55w0rd-xyz"
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = tracker.experiment_id("st", (tmp_path / "artifacts").as_uri())
    run = tracker.start_run(exp, "r", params={"data.path": f"s3://bkt/p?secret_key={secret}",
                                              "mlflow": f"postgresql://lb:{secret}@db/m"},
                            tags={"storage": f"http://lb:{secret}@minio:9000/b"})
    tracker.log_final(run, {}, "failed", f"cannot reach postgresql://lb:{secret}@db/m")
    tracker.log_text(run, f"mlflow: postgresql://lb:{secret}@db/m\n", "study.yaml")
    got = tracker.client.get_run(run)
    text = str(got.data.params) + str(got.data.tags) + (tmp_path / "mlflow.db").read_bytes().decode("latin-1")
    (logged,) = (tmp_path / "artifacts").rglob("study.yaml")
    assert secret not in text and secret not in logged.read_text() and "lb:***@db" in logged.read_text()
    assert got.data.params["mlflow"] == "postgresql://lb:***@db/m"


def test_bad_input_message_is_redacted(tmp_path, capsys, monkeypatch):
    from largebatch.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(["report", "--experiment", "x", "--mlflow", "http://lb:pa55w0rd-xyz@127.0.0.1:1"])
    err = capsys.readouterr().err
    assert rc == 2 and "pa55w0rd-xyz" not in err and "lb:***@" in err, err
