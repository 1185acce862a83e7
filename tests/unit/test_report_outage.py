"""The end of a study when MLflow or S3 is down (docs/design.md §10): the driver never dies on it, always writes the
report to a local folder, and says in one line what was not logged or uploaded and where the report is.
(tests/integration/test_outages.py does the same against real stopped servers.)"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from largebatch.config import baseline_trial, load_study
from largebatch.tracking import Tracker
from largebatch.tune import driver, finish
from largebatch.tune.runtime import StudyRuntime

SMOKE = Path(__file__).resolve().parents[2] / "tune_spaces" / "digits-smoke.yaml"


class Down(ConnectionError):
    pass


def _refused(*a, **k):
    raise Down("HTTPConnectionPool(host='127.0.0.1'): Max retries exceeded (Connection refused)")


def _result(arm: str, overrides: dict, status: str, best: float, trial_id: str):
    metrics = {"trial_id": trial_id, "status": status, "is_final": True, "best_val_acc": best, "val_acc": best,
               "wall_s": 1.5, "steps": 40, "startup_s": 2.0, "epoch": 3}
    return SimpleNamespace(config={"arm": arm, "seed": 0, "overrides": overrides}, metrics=metrics, checkpoint=None,
                           error=None, path=f"/x/tune_trial_{trial_id}")


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("LARGEBATCH_TRACKING_RETRY_S", "0")
    study = load_study(SMOKE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    exp = tracker.experiment_id("outage", (tmp_path / "art").as_uri())
    parent = tracker.start_run(exp, "study")
    base_tree = study.base.model_dump(mode="json")
    ctx = StudyRuntime(base_tree=base_tree,
                       baseline_tree=baseline_trial(study, str(SMOKE)).model_dump(mode="json"),
                       source=str(SMOKE), seeds=(0,), workers_per_trial=2, cpus_per_worker=1, use_gpu=False,
                       max_failures=0, train_sizes={0: 1437}, tracking_uri=uri, experiment_id=exp,
                       parent_run_id=parent, run_name="outage-20260101-000000", storage_path=str(tmp_path / "storage"))
    grid = [_result("baseline", {"data.global_batch_size": 32}, "completed", 0.95, "a"),
            _result("search", {"data.global_batch_size": 128, "scaling.rule": "linear"}, "completed", 0.94, "b"),
            _result("search", {"data.global_batch_size": 512, "scaling.rule": "none"}, "diverged", 0.2, "c")]
    return SimpleNamespace(study=study, tracker=tracker, ctx=ctx, grid=grid, tmp=tmp_path)


def _finish(s, **kw):
    return finish.finish_study(s.tracker, s.grid, s.ctx, s.study, marked=kw.pop("marked", None), study_s=12.0,
                               n_trials=3, slots=2, exp_name="outage", run_root=str(s.tmp / "runs"), mlflow_uri=None)


def test_mlflow_down_at_the_end_still_writes_the_report_from_tune_results(setup, monkeypatch, capsys):
    import largebatch.records as records

    monkeypatch.setattr(records, "records_from_mlflow", _refused)
    for name in ("log_batch", "set_tag", "set_terminated", "log_artifacts"):
        monkeypatch.setattr(setup.tracker.client, name, _refused)
    report = _finish(setup)  # no exception
    out = capsys.readouterr().out
    local = Path(setup.ctx.storage_path) / setup.ctx.run_name / "report"
    assert (local / "report.md").is_file() and (local / "report.json").is_file() and (local / "report.html").is_file()
    assert report["max_safe_batch"] == 128  # from Tune's results: B=128 linear is within 1 point of 95%
    line = next(ln for ln in out.splitlines() if ln.startswith("[largebatch] not logged:"))
    assert "trial records" in line and "artifacts report" in line and str(local) in line, line
    assert "artifacts report" in (local / "not_logged.txt").read_text()
    assert "| 128 " in (local / "report.md").read_text() and "B=512 none warmup=0ep [c]: diverged" in \
        (local / "report.md").read_text()


def test_s3_down_at_the_report_upload_keeps_it_on_local_disk(setup, capsys):
    setup.ctx = dataclasses.replace(
        setup.ctx, storage_path="s3://lb-runs/studies?endpoint_override=http://lb:pa55w0rd-xyz@127.0.0.1:9")
    _finish(setup)
    out = capsys.readouterr().out
    local = setup.tmp / "runs" / setup.ctx.run_name / "report"
    assert (local / "report.md").is_file()
    line = next(ln for ln in out.splitlines() if ln.startswith("[largebatch] not logged:"))
    assert "report upload to s3://lb-runs/studies" in line and str(local) in line, line
    assert f"report: {local}/report.md" in out
    assert "pa55w0rd" not in out + (local / "report.json").read_text() + (local / "report.md").read_text()
    # MLflow was up: the parent run got the report and its end
    run = setup.tracker.client.get_run(setup.ctx.parent_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"


def test_an_unreachable_mlflow_when_closing_trials_is_named_not_fatal(setup, monkeypatch, capsys):
    monkeypatch.setattr(setup.tracker.client, "search_runs", _refused)
    assert "unfinished trial runs" in driver._mark_unfinished(setup.tracker, setup.ctx.experiment_id,
                                                              setup.ctx.parent_run_id, setup.grid)


def test_credentials_in_uris_never_show_when_everything_is_down(setup, monkeypatch, capfd):
    """A password in --mlflow http://user:PW@host and in the storage URI (secret_key=, and userinfo in
    endpoint_override) reaches no print, no report file and no error line, even in MLflow's and boto3's own
    failure messages."""
    pw, key = "pa55w0rd-xyz", "s3cr3t-key-xyz"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://lb:{pw}@127.0.0.1:9"  # nothing listens
    setup.tracker = Tracker(uri, retry_s=0)
    setup.ctx = dataclasses.replace(
        setup.ctx, tracking_uri=uri, storage_path=(f"s3://lb-runs/studies?endpoint_override=http://lb:{pw}@127.0.0.1:9"
                                                   f"&access_key=AKIA&secret_key={key}"))
    report = finish.finish_study(setup.tracker, setup.grid, setup.ctx, setup.study, marked=None, study_s=1.0,
                                 n_trials=3, slots=2, exp_name="outage", run_root=str(setup.tmp / "runs"),
                                 mlflow_uri=uri)
    printed = capfd.readouterr()
    files = "".join(p.read_text(errors="replace") for p in (setup.tmp / "runs").rglob("*") if p.is_file()
                    and p.suffix in (".md", ".json", ".html"))
    blob = printed.out + printed.err + files + repr(report)
    assert "not logged:" in printed.out and "lb:***@127.0.0.1:9" in printed.out
    assert pw not in blob and key not in blob


def test_records_from_tune_tell_a_stopped_trial_from_a_finished_one(setup):
    stopped = _result("search", {"data.global_batch_size": 128, "scaling.rule": "none"}, "completed", 0.8, "d")
    stopped.metrics["is_final"] = False  # ASHA stopped it after an early epoch
    crashed = _result("search", {"data.global_batch_size": 512, "scaling.rule": "linear"}, "completed", 0.1, "e")
    crashed.error, crashed.metrics = RuntimeError("killed"), {}
    records = finish._records_from_tune(setup.grid + [stopped, crashed], setup.ctx)
    assert [r["status"] for r in records] == ["completed", "completed", "diverged", "stopped_early", "failed"]
    assert records[1]["name"] == "B=128 linear warmup=0ep" and records[0]["is_baseline"]
    assert records[1]["peak_lr"] == 0.2 and records[1]["best_val_acc"] == 0.94
