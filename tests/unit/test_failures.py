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
    from largebatch.tune.abort import abort_study as _abort

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
    from largebatch.tune.abort import abort_study as _abort

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


# ----------------------------------------------------------------------------- issue #26: a study with no verdict
SCALAR = "RuntimeError: grad can be implicitly created only for scalar outputs"


def _rec(name, status, reason=None, baseline=False):
    return {"name": name, "status": status, "reason": reason, "is_baseline": baseline}


def test_every_trial_failed_is_no_verdict_naming_the_first_cause_and_its_hint():
    from largebatch.failures import no_verdict

    line = no_verdict([_rec("baseline B=16", "failed", SCALAR, True), _rec("B=64 linear", "failed", SCALAR)])
    assert line.startswith("no verdict: the baseline failed") and "\n" not in line
    assert f"the baseline, baseline B=16: {SCALAR}; the task's loss must be a scalar mean over the batch: reduce " \
           f"it with .mean()" in line


@pytest.mark.parametrize("records, words", [
    # the baseline is the reference: without it there is no speed-up or tolerance to measure
    ([_rec("b", "diverged", "loss nan at step 3", True), _rec("B=64", "completed")],
     "the baseline diverged, so there is no reference to compare against (2 of 2 trials ran to an outcome); "
     "the baseline, b: loss nan at step 3"),
    ([_rec("b", "completed", baseline=True), _rec("B=64", "failed", "FileNotFoundError: x.npz"),
      _rec("B=128", "failed", "ValueError: y")],
     "no verdict: all 2 searched trials failed; the first, B=64: FileNotFoundError: x.npz"),
    ([], "no trial ran"),
])
def test_what_gives_no_verdict(records, words):
    from largebatch.failures import no_verdict

    assert words in no_verdict(records)


@pytest.mark.parametrize("records", [
    [_rec("b", "completed", baseline=True), _rec("B=64", "diverged", "loss inf"), _rec("B=128", "failed", "x")],
    [_rec("b", "completed", baseline=True), _rec("B=64", "stopped_early")],
    [_rec("b", "completed", baseline=True), _rec("b1", "failed", "x", True), _rec("B=64", "completed")],
    [_rec("B=32", "completed"), _rec("B=64", "failed", "x")],  # no baseline arm: the smallest batch is the reference
])
def test_diverged_trials_are_findings_and_a_baseline_seed_suffices(records):
    from largebatch.failures import no_verdict

    assert no_verdict(records) is None


def test_hint_only_for_the_known_cause():
    from largebatch.failures import hint, with_hint

    assert hint("ValueError: x") is None and with_hint("ValueError: x") == "ValueError: x"
    assert with_hint(SCALAR).endswith("reduce it with .mean()")
    assert with_hint(with_hint(SCALAR)) == with_hint(SCALAR)  # said once


def test_tune_exits_1_with_the_line_when_the_report_has_no_verdict():
    from largebatch.failures import verdict_exit

    assert verdict_exit({"study": {"name": "s"}}) == 0
    with pytest.raises(StudyAborted) as e:
        verdict_exit({"study": {"no_verdict": "no verdict: all 2 searched trials failed; ..."}})
    assert e.value.exit_code == 1 and str(e.value) == "largebatch: no verdict: all 2 searched trials failed; ..."


def test_a_finished_study_whose_trials_all_died_has_no_verdict_on_its_run(tmp_path):
    """Every trial died before its MLflow run existed (no records): Tune's results name the cause; the report is
    written, says so, and the parent run ends FAILED with the line as its reason."""
    from pathlib import Path
    from types import SimpleNamespace

    from largebatch.config import baseline_trial, load_study
    from largebatch.tracking import Tracker
    from largebatch.tune.finish import finish_study
    from largebatch.tune.runtime import StudyRuntime

    smoke = Path(__file__).resolve().parents[2] / "tune_spaces" / "digits-smoke.yaml"
    study = load_study(smoke)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    exp = tracker.experiment_id("dead", (tmp_path / "art").as_uri())
    parent = tracker.start_run(exp, "study")
    rt = StudyRuntime(base_tree=study.base.model_dump(mode="json"),
                      baseline_tree=baseline_trial(study, str(smoke)).model_dump(mode="json"), source=str(smoke),
                      seeds=(0,), workers_per_trial=2, cpus_per_worker=1, use_gpu=False, max_failures=0,
                      train_sizes={0: 1437}, tracking_uri=uri, experiment_id=exp, parent_run_id=parent,
                      run_name="dead-1", storage_path=str(tmp_path / "storage"))
    died = RuntimeError("ModuleNotFoundError: No module named 'my_task'")
    grid = [SimpleNamespace(config={"arm": arm, "seed": 0, "overrides": {"data.global_batch_size": b}}, metrics={},
                            checkpoint=None, error=died, path=f"/x/t{b}") for arm, b in (("baseline", 32),
                                                                                        ("search", 128))]
    report = finish_study(tracker, grid, rt, study, marked=None, study_s=1.0, n_trials=2, slots=1, exp_name="dead",
                          run_root=str(tmp_path / "runs"), mlflow_uri=None)
    line = report["study"]["no_verdict"]
    assert line.startswith("no verdict: the baseline failed") and "No module named 'my_task'" in line
    run = tracker.client.get_run(parent)
    assert run.info.status == "FAILED" and run.data.tags["reason"] == line
    assert run.data.tags["status"] == "completed"  # every trial ended: --resume has nothing to continue
    assert (Path(rt.storage_path) / "dead-1" / "report" / "report.json").is_file()


def test_a_trials_recorded_reason_carries_the_hint():
    """describe() is what every trial records as its reason (MLflow tag, report, console): the hint is there."""
    try:
        import torch

        torch.ones(3, requires_grad=True).mul(2).backward()
    except RuntimeError as e:
        err = e
    assert describe(TrainingFailedError("wrapped")) == "TrainingFailedError: wrapped"
    wrapped = TrainingFailedError("Training failed")
    wrapped.__cause__ = err
    assert describe(wrapped) == ("RuntimeError: grad can be implicitly created only for scalar outputs; the task's "
                                 "loss must be a scalar mean over the batch: reduce it with .mean()")
