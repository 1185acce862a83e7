"""Training data as a Ray Data dataset read from a Parquet folder, sharded over 2 DDP workers by Ray Train
(largebatch/tasks/raydata.py, examples/parquet_task.py), on a real local Ray."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from largebatch.config import parse_trial, resolve

REPO_ROOT = Path(__file__).resolve().parents[2]
N_TRAIN, N_EVAL, DIM = 1024, 256, 4


def _write(path: Path, n: int, seed: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    y = (np.tanh(x @ np.array([1.0, -2.0, 0.5, 1.5], dtype=np.float32)) + 0.05 * rng.standard_normal(n))
    path.mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(n), 4)):  # 4 files: several blocks to split over ranks
        table = pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x[part].ravel()), DIM),
                          "y": pa.FixedSizeListArray.from_arrays(pa.array(y[part].astype(np.float32)), 1)})
        pq.write_table(table, path / f"part-{i}.parquet")


@pytest.fixture(scope="module")
def local_ray():
    """2 logical CPUs for the DDP workers and 2 for Ray Data's read tasks: with every CPU held by a Train worker,
    the reads would wait forever for a CPU (Ray Data backpressure), so a Ray Data trial needs CPUs to spare."""
    import ray

    from largebatch.raylib import init_ray, shutdown_ray

    assert not ray.is_initialized()
    info = init_ray(None, num_cpus=4)
    yield info
    shutdown_ray()


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    root = tmp_path_factory.mktemp("parquet")
    _write(root / "train", N_TRAIN, 0)
    _write(root / "eval", N_EVAL, 1)
    return root




def test_two_ddp_workers_train_from_a_parquet_folder(examples_importable, local_ray, parquet, tmp_path):
    from largebatch.tasks import load_task, train_size
    from largebatch.train.trial import run_trial

    cfg = parse_trial({
        "task": {"name": "examples.parquet_task:make_task",
                 "kwargs": {"train": str(parquet / "train"), "eval": str(parquet / "eval")}},
        "data": {"global_batch_size": 64, "grad_accum_steps": 2},
        "optim": {"name": "sgd", "base_lr": 0.05, "base_batch_size": 64}, "budget": {"epochs": 3}})
    assert train_size(load_task(cfg.task.name, cfg.task.kwargs), cfg) == N_TRAIN  # from the Parquet footers
    res = resolve(cfg, 2)
    out = run_trial(res, run_name="ray-data", storage_path=str(tmp_path), max_failures=0)
    assert out["status"] == "completed", out.get("reason")
    hist = out["history"]
    assert [h["steps"] for h in hist] == [16, 32, 48]  # 1024 rows / 64 per step, each epoch, on both ranks
    assert [h["examples_seen"] for h in hist] == [1024, 2048, 3072]
    assert hist[-1]["val_mse"] < hist[0]["val_mse"]  # it learns from the shards
    assert out["replica_divergence"] == 0.0  # the DDP replicas stayed identical
