"""Security review, round 3 (docs/design.md §14): the caches read back are bounded, typed and never unpickled;
checkpoints kept off storage are private to the user and never written through a link; every torch.load takes
weights only."""
from __future__ import annotations

import ast
import json
import math
import os
import stat
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ESTIMATE = {"b_noise": 120.0, "b_noise_std": 7.0, "tail": [120.0], "tail_epochs": 1, "per_epoch": [float("nan"), 120.0],
            "global_batch_size": 32, "micro_batch": 16, "train_size": 1437, "probe_s": 1.0,
            "settings": {"ema": 0.98, "seed": 0}}


def _in_time(fn, *args, timeout_s=10.0):
    """fn(*args) in a thread; fails the test when it does not return in time (a read that blocks)."""
    box = {}
    th = threading.Thread(target=lambda: box.setdefault("v", fn(*args)), daemon=True)
    th.start()
    th.join(timeout_s)
    assert not th.is_alive(), f"{fn.__name__} blocked"
    return box["v"]


def test_a_probe_cache_written_by_probe_reads_back(tmp_path):
    from largebatch.probe import format_estimate, load_cached, save_estimate

    save_estimate(ESTIMATE, tmp_path / "e.json")
    est = load_cached(tmp_path / "e.json")
    assert est is not None and est["b_noise"] == 120.0 and math.isnan(est["per_epoch"][0])
    assert "B_noise ≈ 120" in format_estimate(est)


@pytest.mark.parametrize("change", [
    {"b_noise": float("inf")},           # critical_grid(inf) raised OverflowError before Ray started
    {"b_noise": True},                   # a bool is not a batch size
    {"b_noise_std": "7"},                # float() of it raised in log_placement
    {"per_epoch": None},                 # format_estimate raised KeyError/TypeError
    {"tail_epochs": 5},                  # more tail epochs than epochs
    {"probe_s": "slow"},
])
def test_a_probe_cache_that_is_not_what_probe_writes_is_measured_again(tmp_path, change):
    from largebatch.probe import load_cached

    path = tmp_path / "e.json"
    path.write_text(json.dumps({**ESTIMATE, **change}))
    assert load_cached(path) is None


def test_cache_reads_are_bounded_and_never_wait_or_follow_links(tmp_path):
    from largebatch.probe import CACHE_MAX_BYTES, load_cached, read_cache_json
    from largebatch.tune.throughput import _read_cache

    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # reading a FIFO with no writer blocked forever
    assert _in_time(load_cached, fifo) is None and _in_time(_read_cache, fifo) is None
    big = tmp_path / "big.json"
    big.write_text(json.dumps({**ESTIMATE, "pad": "x" * CACHE_MAX_BYTES}))
    assert read_cache_json(big) is None and load_cached(big) is None
    good = tmp_path / "good.json"
    good.write_text(json.dumps(ESTIMATE))
    link = tmp_path / "link.json"
    link.symlink_to(good)
    assert load_cached(good) is not None and load_cached(link) is None
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)  # json's parser recursed out of the stack
    assert read_cache_json(deep) is None


def test_a_throughput_cache_entry_must_be_for_its_batch_with_finite_times(tmp_path):
    from largebatch.tune.throughput import _read_cache

    entry = {"global_batch_size": 64, "step_s": 0.01, "examples_per_s": 6400.0, "input_share": 0.1}
    path = tmp_path / "k.json"
    for bad in ({"global_batch_size": 128}, {"step_s": float("inf")}, {"step_s": True}, {"examples_per_s": None},
                {"global_batch_size": "64"}, {"input_share": "a lot"}):
        path.write_text(json.dumps({**entry, **bad}))
        assert _read_cache(path, 64) is None, bad
    path.write_text(json.dumps(entry))
    assert _read_cache(path, 64) == entry


# ---- checkpoints kept on local disk while storage is down (train/persist.py)
class _Down:
    """A Backend whose storage never answers: every checkpoint is kept locally."""
    where, name = "s3://bucket/study", "study/trial"

    def __init__(self):
        self.reports = []

    def probe(self):
        return "OSError: no answer"

    def report_with_checkpoint(self, metrics, ckpt_dir):
        raise AssertionError("storage is down")

    def report_metrics(self, metrics):
        self.reports.append(dict(metrics))


def _ckpt(tmp_path: Path, epoch: int) -> str:
    d = tmp_path / "work" / f"ckpt-{epoch}"
    d.mkdir(parents=True)
    (d / "model.pt").write_bytes(b"weights")
    return str(d)


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_a_kept_checkpoint_is_private_to_the_user(tmp_path):
    from largebatch.train.persist import CheckpointKeeper

    root = tmp_path / "cache" / "unpersisted"
    root.mkdir(parents=True, mode=0o755)
    os.chmod(root, 0o755)  # made by an older version with the default umask
    k = CheckpointKeeper(_Down(), retry_s=0.0, log=lambda m: None, root=root)
    k.report({"epoch": 0}, _ckpt(tmp_path, 0))
    kept = root / "study" / "trial" / "epoch-00001"
    assert (kept / "model.pt").read_bytes() == b"weights"
    for d in (root, root / "study", root / "study" / "trial", kept):
        assert _mode(d) == 0o700, d


def test_a_kept_checkpoint_is_never_written_through_a_link(tmp_path):
    from largebatch.train.persist import CheckpointKeeper

    root = tmp_path / "unpersisted"
    (root / "study").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("keep me")
    (root / "study" / "trial").symlink_to(victim)  # planted where the trial's folder goes
    lines = []
    k = CheckpointKeeper(_Down(), retry_s=0.0, log=lines.append, root=root)
    k.report({"epoch": 0}, _ckpt(tmp_path, 0))
    assert sorted(p.name for p in victim.iterdir()) == ["notes.txt"]  # nothing removed, nothing written there
    assert k.kept is None and any("could not keep the checkpoint" in ln for ln in lines)


def test_a_kept_checkpoint_refuses_a_folder_anyone_may_swap(tmp_path):
    from largebatch.train.persist import private_dirs

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # like /tmp without the sticky bit
    with pytest.raises(PermissionError):
        private_dirs(shared / "unpersisted", shared / "unpersisted" / "a")
    os.chmod(shared, 0o1777)  # /tmp: others cannot rename what is ours
    private_dirs(shared / "unpersisted", shared / "unpersisted" / "a")
    assert _mode(shared / "unpersisted" / "a") == 0o700


# ---- nothing loaded from disk is unpickled
def _calls(name: str):
    for path in (REPO / "largebatch").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name[1] \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == name[0]:
                yield path.relative_to(REPO).as_posix(), node


def test_every_torch_load_takes_weights_only():
    calls = list(_calls(("torch", "load")))
    assert calls, "the checkpoint restore calls torch.load"
    for where, node in calls:
        kw = {k.arg: k.value for k in node.keywords}
        assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, where


def test_nothing_but_tunes_own_searcher_state_is_unpickled():
    # tune/space.py WithBaseline.restore reads the file Tune itself hands it from the run folder on --resume, where
    # Ray unpickles its own experiment state too (the storage is trusted: docs/design.md §14)
    assert [w for w, _ in [*_calls(("pickle", "load")), *_calls(("pickle", "loads"))]] == ["largebatch/tune/space.py"]
    for where, node in _calls(("np", "load")):
        kw = {k.arg: k.value for k in node.keywords}
        assert isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False, where
