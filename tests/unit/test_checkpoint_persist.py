"""Checkpoints that storage does not take (train/persist.py, docs/design.md §10): the epoch is reported without its
checkpoint, the newest checkpoint is kept locally until a later one is persisted, the last one gets a bounded wait.
Storage is an in-process fake here; tests/e2e/test_s3_checkpoint_outage.py stops a real S3 server mid-trial."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from largebatch.train import persist
from largebatch.train.persist import KEPT_KEY, CheckpointKeeper, StorageFailure, probe_storage

from fake_clock import Clock


class FakeStorage:
    """A Backend: `up` says whether storage answers; `copy_fails` makes the copy itself fail (storage went away
    between the probe and the copy)."""

    where, name = "s3://bucket/study/trial", "study/trial"

    def __init__(self):
        self.up, self.copy_fails, self.error = True, False, None
        # (epoch, what the persisted checkpoint held or None, metrics)
        self.reports: list[tuple[int, object, dict]] = []
        self.probes = 0

    def probe(self):
        self.probes += 1
        return None if self.up else "OSError: Could not connect to server"

    def report_with_checkpoint(self, metrics, ckpt_dir):
        if self.error is not None:
            raise self.error
        if self.copy_fails:
            raise StorageFailure("copy failed") from OSError("connection reset")
        self.reports.append((metrics["epoch"], json.loads(Path(ckpt_dir, "h.json").read_text()), dict(metrics)))

    def report_metrics(self, metrics):
        self.reports.append((metrics["epoch"], None, dict(metrics)))


def _ckpt(tmp_path: Path, epoch: int) -> str:
    d = tmp_path / "work" / f"ckpt-{epoch}"
    d.mkdir(parents=True)
    (d / "h.json").write_text(json.dumps({"epoch": epoch}))
    return str(d)


def _keeper(storage, tmp_path, retry_s=30.0):
    clock, lines = Clock(), []
    k = CheckpointKeeper(storage, retry_s=retry_s, clock=clock, sleep=clock.sleep, log=lines.append,
                         root=tmp_path / "kept")
    return k, clock, lines


def test_an_outage_mid_trial_keeps_every_epoch_and_the_newest_checkpoint(tmp_path):
    storage = FakeStorage()
    k, clock, lines = _keeper(storage, tmp_path)
    kept_dir = tmp_path / "kept" / "study" / "trial"
    for epoch in range(6):
        storage.up = epoch not in (2, 3)
        final = epoch == 5
        k.report({"epoch": epoch, "val_loss": 1.0 / (epoch + 1), "is_final": final}, _ckpt(tmp_path, epoch))
        if epoch == 2:
            assert sorted(p.name for p in kept_dir.iterdir()) == ["epoch-00003"]
        if epoch == 3:  # the newer one replaces it: one checkpoint per trial on local disk
            assert sorted(p.name for p in kept_dir.iterdir()) == ["epoch-00004"]
            assert json.loads((kept_dir / "epoch-00004" / "h.json").read_text()) == {"epoch": 3}
    # every epoch reported exactly once, in order; the two down epochs without a checkpoint, naming their local copy
    assert [e for e, _, _ in storage.reports] == [0, 1, 2, 3, 4, 5]
    assert [c for _, c, _ in storage.reports] == [{"epoch": 0}, {"epoch": 1}, None, None, {"epoch": 4}, {"epoch": 5}]
    assert storage.reports[2][2][KEPT_KEY].endswith(str(kept_dir / "epoch-00003"))
    assert storage.reports[3][2][KEPT_KEY].endswith(str(kept_dir / "epoch-00004"))
    assert all(KEPT_KEY not in m for e, _, m in storage.reports if e not in (2, 3))
    # a persisted checkpoint supersedes the local copy; the work folders are gone either way
    assert not kept_dir.exists() and not any((tmp_path / "work").iterdir())
    assert k.final_kept is None and clock.sleeps == []  # no wait but at the last epoch, which storage took
    # one warning for the outage (naming storage and the local copy), one line when storage takes them again
    assert len(lines) == 2, lines
    assert "storage s3://bucket/study/trial did not take the checkpoint of epoch 3" in lines[0]
    assert str(kept_dir / "epoch-00003") in lines[0] and "Could not connect" in lines[0]
    assert "takes checkpoints again (epoch 5)" in lines[1] and "epoch 4 is removed" in lines[1]


def test_the_last_checkpoint_waits_a_bounded_time_then_stays_local(tmp_path):
    storage = FakeStorage()
    k, clock, lines = _keeper(storage, tmp_path, retry_s=30.0)
    storage.up = False
    k.report({"epoch": 0, "is_final": False}, _ckpt(tmp_path, 0))
    assert clock.sleeps == []  # not the last epoch: one try, no wait
    k.report({"epoch": 1, "is_final": True, "status": "completed"}, _ckpt(tmp_path, 1))
    assert clock.sleeps == [1.0, 2.0, 4.0, 8.0, 10.0] and clock.t <= 30  # backoff within the budget
    assert [(e, c) for e, c, _ in storage.reports] == [(0, None), (1, None)]
    kept = tmp_path / "kept" / "study" / "trial" / "epoch-00002"
    assert k.final_kept is not None and k.final_kept.endswith(str(kept)) and k.kept == kept
    assert json.loads((kept / "h.json").read_text()) == {"epoch": 1}
    assert storage.reports[1][2][KEPT_KEY] == k.final_kept
    assert "did not take the last checkpoint (epoch 2) within 30 s" in lines[-1] and str(kept) in lines[-1]


def test_the_last_checkpoint_goes_out_when_storage_returns_during_its_wait(tmp_path):
    storage = FakeStorage()
    k, clock, _ = _keeper(storage, tmp_path, retry_s=60.0)
    storage.up = False
    k.report({"epoch": 0}, _ckpt(tmp_path, 0))
    real_probe = storage.probe

    def probe():
        storage.up = clock.t >= 5  # back 5 s into the wait
        return real_probe()

    storage.probe = probe
    k.report({"epoch": 1, "is_final": True}, _ckpt(tmp_path, 1))
    assert [(e, c) for e, c, _ in storage.reports] == [(0, None), (1, {"epoch": 1})]
    assert k.final_kept is None and not (tmp_path / "kept" / "study" / "trial").exists()


def test_a_copy_that_fails_after_the_probe_is_an_outage_too(tmp_path):
    storage = FakeStorage()
    k, _, lines = _keeper(storage, tmp_path)
    storage.copy_fails = True
    k.report({"epoch": 0}, _ckpt(tmp_path, 0))
    assert [(e, c) for e, c, _ in storage.reports] == [(0, None)]
    assert "connection reset" in lines[0]


def test_an_error_that_is_not_storage_is_raised(tmp_path):
    storage = FakeStorage()
    k, _, _ = _keeper(storage, tmp_path)
    storage.error = ValueError("a bug, not an outage")
    with pytest.raises(ValueError):
        k.report({"epoch": 0}, _ckpt(tmp_path, 0))
    assert storage.reports == []


def test_an_epoch_without_a_checkpoint_does_not_ask_storage(tmp_path):
    storage = FakeStorage()
    k, _, _ = _keeper(storage, tmp_path)
    storage.up = False
    k.report({"epoch": 0}, None)
    assert storage.probes == 0 and storage.reports == [(0, None, {"epoch": 0})]


def test_probe_storage_answers_within_its_timeout(tmp_path):
    import pyarrow.fs

    local = pyarrow.fs.LocalFileSystem()
    (tmp_path / "marker").write_text("")
    assert probe_storage(local, str(tmp_path / "marker")) is None
    assert "is missing" in probe_storage(local, str(tmp_path / "nothing"))

    class Refused:
        def get_file_info(self, path):
            raise OSError("When getting information for key 'x': AWS Error NETWORK_CONNECTION\nmore")

    assert probe_storage(Refused(), "x") == (
        "OSError: When getting information for key 'x': AWS Error NETWORK_CONNECTION")
    release = threading.Event()

    class Silent:  # accepts the connection, never answers
        def get_file_info(self, path):
            release.wait(30)

    t0 = time.monotonic()
    assert probe_storage(Silent(), "x", timeout_s=0.3) == "no answer in 0.3 s"
    assert time.monotonic() - t0 < 5
    release.set()


def test_storage_where_names_the_run_folder_without_credentials():
    class Fs:
        type_name = "s3"

    class Storage:
        storage_filesystem = Fs()
        experiment_fs_path = "bucket/studies/run-1"

    assert persist.storage_where(Storage()) == ("s3://bucket/studies/run-1", "bucket/studies/run-1/" + persist.MARKER)
    Storage.experiment_fs_path = "/abs/runs/ray/run-1"
    Fs.type_name = "local"
    assert persist.storage_where(Storage())[0] == "/abs/runs/ray/run-1"


def test_retry_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(persist.RETRY_S_ENV, "12")
    assert persist.retry_budget_s() == 12.0
    monkeypatch.setenv(persist.RETRY_S_ENV, "soon")
    assert persist.retry_budget_s() == persist.DEFAULT_RETRY_S


def test_a_failed_tune_report_puts_its_counters_back(monkeypatch, tmp_path):
    """Ray's Tune session counts the result and the checkpoint before it copies; a copy that fails leaves both
    moved. The backend puts them back, so the epoch's report without a checkpoint carries the same iteration."""
    from types import SimpleNamespace

    import ray.train._internal.session as session_mod
    from ray import tune

    session = SimpleNamespace(iteration=3, storage=SimpleNamespace(current_checkpoint_index=1))

    def report(metrics, checkpoint=None):
        session.iteration += 1
        if checkpoint is not None:
            session.storage.current_checkpoint_index += 1
            raise OSError("AWS Error NETWORK_CONNECTION during HeadObject operation")

    monkeypatch.setattr(session_mod, "get_session", lambda: session)
    monkeypatch.setattr(tune, "report", report)
    backend = persist.TuneBackend.__new__(persist.TuneBackend)  # no Tune context needed for the report path
    with pytest.raises(StorageFailure) as err:
        backend.report_with_checkpoint({"epoch": 2}, _ckpt(tmp_path, 2))
    assert "NETWORK_CONNECTION" in str(err.value)
    assert (session.iteration, session.storage.current_checkpoint_index) == (3, 1)
    backend.report_metrics({"epoch": 2})
    assert session.iteration == 4 and session.storage.current_checkpoint_index == 1


def test_outcome_uses_what_rank_0_left_when_its_last_checkpoint_stayed_local():
    from types import SimpleNamespace

    from largebatch.train.trial import outcome

    history = [{"epoch": 0, "val_acc": 0.5}, {"epoch": 1, "val_acc": 0.7}]
    stale = SimpleNamespace(metrics={"epoch": 0, "status": "completed"}, checkpoint=None, error=None)
    out = outcome(stale, time.time(), {"metrics": {"epoch": 1, "status": "diverged", "is_final": True},
                                       "history": history})
    assert out["status"] == "diverged" and out["epoch"] == 1 and out["history"] == history

    class Unreadable:  # storage went away after it took the last checkpoint
        def as_directory(self):
            raise OSError("Could not connect to server")

    out = outcome(SimpleNamespace(metrics={"epoch": 4, "val_acc": 0.8, "status": "completed"},
                                  checkpoint=Unreadable(), error=None), time.time())
    assert out["status"] == "completed" and [h["epoch"] for h in out["history"]] == [4]
    assert "history" not in out["history"][0]


def test_what_a_killed_process_kept_goes_once_storage_holds_a_newer_checkpoint(tmp_path):
    storage = FakeStorage()
    trial_dir = tmp_path / "kept" / "study" / "trial"
    (trial_dir / "epoch-00007").mkdir(parents=True)  # left by the trial's previous process, killed mid-outage
    k, _, _ = _keeper(storage, tmp_path)
    storage.up = False
    k.report({"epoch": 4}, _ckpt(tmp_path, 4))  # the restarted process, storage down again: one copy only
    assert sorted(p.name for p in trial_dir.iterdir()) == ["epoch-00005"]
    storage.up = True
    k.report({"epoch": 5}, _ckpt(tmp_path, 5))
    assert not trial_dir.exists() and not (tmp_path / "kept" / "study").exists()
    (trial_dir / "epoch-00009").mkdir(parents=True)
    k2, _, _ = _keeper(storage, tmp_path)
    k2.report({"epoch": 6}, _ckpt(tmp_path, 6))  # storage up from the start: the leftover goes too
    assert not trial_dir.exists()


def test_no_local_disk_either_still_reports_the_epoch(tmp_path):
    storage = FakeStorage()
    (tmp_path / "kept").write_text("a file where the folder should be")
    k, _, lines = _keeper(storage, tmp_path)
    storage.up = False
    k.report({"epoch": 0, "is_final": True}, _ckpt(tmp_path, 0))
    assert [(e, c) for e, c, _ in storage.reports] == [(0, None)]
    assert any("could not keep the checkpoint of epoch 1" in line for line in lines)
    assert k.kept is None and k.final_kept.startswith("nowhere")
    assert not any((tmp_path / "work").iterdir())
