"""The task API: the DataLoader path keeps the exact global batches, user and built-in tasks train through the one
loop, bad tasks are BadInput, and the metric's direction reaches the loop's best_<metric>."""
from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from largebatch.config import parse_trial, resolve
from largebatch.data import epoch_permutation
from largebatch.data.feed import LoaderFeed, TensorFeed
from largebatch.errors import BadInput
from largebatch.tasks import Metric, Task, TaskData, build_data, load_task
from largebatch.train.loop import WorkerContext, train_worker
from task_fixtures import Indexed

REPO_ROOT = Path(__file__).resolve().parents[2]


def _global_batches(feed, perm, B, world, accum):
    """Per step, the examples of all ranks' micro-batches in rank-major, micro-step order."""
    per_rank = [[torch.cat([y for _, y in micro]).tolist() for micro in feed_steps]
                for feed_steps in (list(feed.steps(perm, B, r, world, accum)) for r in range(world))]
    return [sum((per_rank[r][s] for r in range(world)), []) for s in range(len(per_rank[0]))]


@pytest.mark.parametrize("loader_workers", [0, 2])
def test_dataloader_path_gives_the_same_global_batches_for_any_workers_and_accumulation(loader_workers):
    n, B = 100, 16
    ds = Indexed(n)
    perm = epoch_permutation(n, seed=3, epoch=1)
    want = [perm[s * B:(s + 1) * B].tolist() for s in range(n // B)]
    x = torch.stack([ds[i][0] for i in range(n)])
    y = torch.arange(n)
    for world, accum in [(1, 1), (1, 4), (2, 1), (2, 2), (4, 2)]:
        loader = LoaderFeed(ds, torch.device("cpu"), workers=loader_workers)
        got = [sorted(b) for b in _global_batches(loader, perm, B, world, accum)]
        assert got == [sorted(b) for b in want], (world, accum)
        # the same examples in the same order as the in-memory fast path
        assert _global_batches(loader, perm, B, world, accum) == _global_batches(
            TensorFeed(x, y, torch.device("cpu")), perm, B, world, accum)
    # a second epoch through the same (persistent) loader follows the new order
    loader = LoaderFeed(ds, torch.device("cpu"), workers=loader_workers)
    for epoch in (0, 1):
        p = epoch_permutation(n, seed=3, epoch=epoch)
        assert [b for b in _global_batches(loader, p, B, 1, 1)] == [p[s * B:(s + 1) * B].tolist()
                                                                    for s in range(n // B)]


class BatchedIndexed(Indexed):
    """The same items, and `__getitems__` returning the whole micro-batch (no per-item collate)."""

    calls = 0

    def __getitems__(self, indices):
        BatchedIndexed.calls += 1
        idx = torch.as_tensor(indices)
        return torch.stack([idx.float(), idx.float()], 1), idx


def test_a_dataset_with_getitems_gives_the_same_batches_without_per_item_collate():
    n, B = 64, 16
    perm = epoch_permutation(n, seed=0, epoch=0)
    BatchedIndexed.calls = 0
    batched = _global_batches(LoaderFeed(BatchedIndexed(n), torch.device("cpu")), perm, B, 2, 2)
    assert BatchedIndexed.calls == (n // B) * 2 * 2  # one call per micro-batch
    assert batched == _global_batches(LoaderFeed(Indexed(n), torch.device("cpu")), perm, B, 2, 2)
    x, y = LoaderFeed(BatchedIndexed(n), torch.device("cpu")).gather(torch.tensor([5, 1]))
    assert y.tolist() == [5, 1] and x.shape == (2, 2)


def test_loader_eval_batches_cover_a_rank_shard_in_order():
    feed = LoaderFeed(Indexed(10), torch.device("cpu"))
    assert torch.cat([y for _, y in feed.eval_batches(3, 10, 4)]).tolist() == list(range(3, 10))


@pytest.fixture
def examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    yield
    sys.modules.pop("examples.regression_task", None)


def _train(tree: dict, world: int = 1):
    cfg = parse_trial(tree)
    reports = []
    final = train_worker(resolve(cfg, world), WorkerContext(report=lambda m, c: (reports.append(m),
                                                                                 shutil.rmtree(c or "", True))))
    return final, reports


def test_user_task_with_a_map_style_dataset_trains_and_reports_its_min_metric(examples_on_path):
    final, reports = _train({
        "task": {"name": "examples.regression_task:make_task", "kwargs": {"n_train": 512, "n_eval": 256}},
        "data": {"global_batch_size": 32, "grad_accum_steps": 2},
        "optim": {"name": "sgd", "base_lr": 0.05, "base_batch_size": 32}, "budget": {"epochs": 3}})
    vals = [r["val_mse"] for r in reports]
    assert final["status"] == "completed" and len(vals) == 3
    assert vals[-1] < vals[0]  # it learns
    assert final["best_val_mse"] == min(vals)  # best follows the metric's direction (min)
    assert final["val_loss"] == pytest.approx(final["val_mse"], rel=1e-5)  # mse loss == the mse metric
    assert "val_acc" not in final and "gen_gap" not in final


def test_charlm_trains_and_its_bits_per_byte_are_its_loss_in_bits(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_bytes(b"the quick brown fox jumps over the lazy dog. " * 200)
    final, reports = _train({
        "task": {"name": "charlm", "kwargs": {"block_size": 16, "layers": 1, "heads": 2, "width": 16}},
        "data": {"path": str(text), "global_batch_size": 16, "grad_accum_steps": 2},
        "optim": {"name": "adamw", "base_lr": 0.01, "base_batch_size": 16}, "budget": {"epochs": 2},
        "instruments": {"grad_noise_scale": True, "sharpness": True, "sharpness_probe_size": 32,
                        "sharpness_iters": 5}})
    assert final["status"] == "completed"
    assert final["val_bpb"] == pytest.approx(final["val_loss"] / math.log(2), rel=1e-5)
    assert reports[-1]["val_bpb"] < reports[0]["val_bpb"] < 8.0  # below a uniform guess over 256 bytes
    # the instruments run on the task's loss (token cross-entropy), not on a classification loss
    assert math.isfinite(final["sharpness"]) and final["sharpness"] > 0
    assert math.isfinite(final["grad_noise_scale"])


def test_charlm_counts_its_windows_without_reading_them(tmp_path):
    text = tmp_path / "c.txt"
    text.write_bytes(bytes(range(256)) * 40)  # 10240 bytes: 9216 train, 1024 val
    cfg = parse_trial({"task": {"name": "charlm", "kwargs": {"block_size": 32}}, "data": {"path": str(text)}})
    task = load_task("charlm", {"block_size": 32})
    assert task.train_size(cfg) == build_data(task, cfg).train_size == (9216 - 1) // 32


def _task(**over) -> Task:
    base = dict(data=lambda cfg: TaskData(train=(torch.zeros(8, 2), torch.zeros(8)), eval=(torch.zeros(4, 2),
                                                                                            torch.zeros(4))),
                model=lambda cfg, d: torch.nn.Linear(2, 1), loss=torch.nn.functional.mse_loss,
                metrics=(Metric("mse", "min", lambda o, y: (o - y) ** 2),))
    return Task(**{**base, **over})


@pytest.mark.parametrize("over, match", [
    ({"loss": None}, "has no loss"),
    ({"model": "net"}, "has no model"),
    ({"metrics": (Metric("mse", "up", lambda o, y: o),)}, "mode 'up'"),
    ({"metrics": (Metric("loss", "min", lambda o, y: o),)}, "reserved"),
])
def test_a_task_missing_a_part_is_bad_input(over, match, monkeypatch):
    from largebatch.tasks import api

    monkeypatch.setitem(sys.modules, "fake_tasks", type(sys)("fake_tasks"))
    sys.modules["fake_tasks"].make = lambda: _task(**over)
    with pytest.raises(BadInput, match=match):
        api.load_task("fake_tasks:make")


def test_dataset_items_that_are_not_tensors_are_bad_input():
    class Lists(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return [1.0, 2.0], 0

    task = _task(data=lambda cfg: TaskData(train=Lists(), eval=Lists()))
    with pytest.raises(BadInput, match="item 0 is"):
        build_data(task, parse_trial({}))


def test_train_subset_cuts_a_dataset_by_the_seeded_rule():
    task = _task(data=lambda cfg: TaskData(train=Indexed(50), eval=Indexed(5)))
    a = build_data(task, parse_trial({"seed": 1, "data": {"train_subset": 10}}))
    b = build_data(task, parse_trial({"seed": 1, "data": {"train_subset": 10}}))
    assert a.train_size == 10 and [int(a.train[i][1]) for i in range(10)] == [int(b.train[i][1]) for i in range(10)]
    with pytest.raises(BadInput, match="more than the 50"):
        build_data(task, parse_trial({"data": {"train_subset": 60}}))


def test_the_docs_example_is_the_example_module():
    """docs/tasks.md shows examples/regression_task.py verbatim (from its imports on), so the copy runs."""
    doc = (REPO_ROOT / "docs" / "tasks.md").read_text()
    src = (REPO_ROOT / "examples" / "regression_task.py").read_text()
    code = src[src.index("import torch"):].strip()
    assert code in doc


def test_a_ray_data_task_needs_its_row_count_and_takes_no_subset(monkeypatch):
    from largebatch.tasks import api

    monkeypatch.setitem(sys.modules, "fake_ray_tasks", type(sys)("fake_ray_tasks"))
    sys.modules["fake_ray_tasks"].uncounted = lambda: _task(ray_data=lambda cfg: None)
    with pytest.raises(BadInput, match="needs a callable and train_size"):
        api.load_task("fake_ray_tasks:uncounted")
    task = _task(ray_data=lambda cfg: None, train_size=lambda cfg: 1000,
                 data=lambda cfg: TaskData(train=None, eval=(torch.zeros(4, 2), torch.zeros(4))))
    assert build_data(task, parse_trial({})).train is None  # the train rows come from Ray Train's shards
    with pytest.raises(BadInput, match="no data.train_subset"):
        build_data(task, parse_trial({"data": {"train_subset": 10}}))


def test_parquet_rows_counts_from_the_footers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from largebatch.tasks.raydata import parquet_rows

    for i, n in enumerate((7, 5)):
        pq.write_table(pa.table({"x": list(range(n))}), tmp_path / f"p{i}.parquet")
    assert parquet_rows(str(tmp_path)) == 12


def test_the_fortunes_corpus_is_the_fortunes_package_whatever_else_is_installed(tmp_path, monkeypatch):
    from largebatch.tasks import charlm

    for name in ("wisdom", "zippy", "fortunes", "bofh-excuses"):  # the last two come from other packages
        (tmp_path / name).write_text(name)
    (tmp_path / "wisdom.dat").write_bytes(b"index")
    monkeypatch.setenv(charlm.FORTUNES_ENV, str(tmp_path))
    assert [f.name for f in charlm.corpus_files(None)] == ["wisdom", "zippy"]
    assert len(charlm.corpus_files(str(tmp_path))) == 4  # a folder given as data.path is read whole
