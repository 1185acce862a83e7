"""S3 end to end against a real S3 API server process (moto_server) on 127.0.0.1, through endpoint settings only."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_data_push_then_train_reads_s3_and_checkpoints_to_s3(s3_server, tmp_path):
    env = {**s3_server.env, "LARGEBATCH_CACHE": str(tmp_path / "cache")}
    push = run_cli(["data", "push", "fashion-mnist", "s3://lb-data/fashion-mnist"], env)
    assert push.returncode == 0, push.stderr
    keys = {o["Key"] for o in s3_server.client.list_objects_v2(Bucket="lb-data")["Contents"]}
    assert {f"fashion-mnist/{s}-ubyte.gz" for s in
            ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")} <= keys

    out = tmp_path / "out.json"
    train = run_cli(["train", "tune_spaces/fashion-mnist.yaml", "--workers", "1",
                     "--set", "data.path=s3://lb-data/fashion-mnist", "--set", "data.train_subset=4000",
                     "--set", "data.global_batch_size=128", "--set", "budget.epochs=2",
                     "--storage", "s3://lb-runs/train", "--output-json", str(out)], env)
    assert train.returncode == 0, train.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["status"] == "completed" and result["val_acc"] > 0.6
    ckpts = [o["Key"] for o in s3_server.client.list_objects_v2(Bucket="lb-runs", Prefix="train/")["Contents"]]
    assert any(k.endswith("state.pt") for k in ckpts), ckpts[:10]
    # the local cache is keyed by ETag
    etags = list((tmp_path / "cache").rglob("*.etag"))
    assert len(etags) == 4


def test_fetch_to_cache_reuses_unchanged_objects(s3_server, tmp_path, monkeypatch):
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    from largebatch import s3

    monkeypatch.setattr(s3, "CACHE_ROOT", tmp_path / "cache")
    s3_server.client.put_object(Bucket="lb-data", Key="blob/x.npz", Body=b"v1")
    p1 = s3.fetch_to_cache("s3://lb-data/blob/x.npz")
    assert open(p1, "rb").read() == b"v1"
    before = sorted(f.stat().st_mtime_ns for f in (tmp_path / "cache").rglob("x.npz"))
    s3.fetch_to_cache("s3://lb-data/blob/x.npz")
    assert sorted(f.stat().st_mtime_ns for f in (tmp_path / "cache").rglob("x.npz")) == before
    s3_server.client.put_object(Bucket="lb-data", Key="blob/x.npz", Body=b"v2")  # new ETag: downloaded again
    assert open(s3.fetch_to_cache("s3://lb-data/blob/x.npz"), "rb").read() == b"v2"


@pytest.mark.parametrize("case,needle", [
    ("missing-bucket", "bucket does not exist"),
    ("no-credentials", "no AWS credentials"),
    ("unreachable-endpoint", "cannot reach the S3 endpoint"),
])
def test_bad_s3_target_fails_before_any_trial(s3_server, tmp_path, case, needle):
    env = {**s3_server.env, "AWS_EC2_METADATA_DISABLED": "true"}  # never ask the cloud metadata service
    uri = "s3://lb-runs/study"
    if case == "missing-bucket":
        uri = "s3://no-such-bucket/study"
    elif case == "no-credentials":
        env.update(AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None, AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
                   AWS_CONFIG_FILE="/nonexistent")
    else:
        env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"  # discard port: nothing listens
    r = run_cli(["tune", "tune_spaces/digits-smoke.yaml", "--storage", uri, "--mlflow", f"sqlite:///{tmp_path}/m.db"],
                env, timeout=180)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1 and needle in lines[0] and "--storage" in lines[0], lines
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "m.db").exists()  # nothing half-written: no MLflow store was created


def test_fetch_reads_every_page_and_refuses_escaping_keys(s3_server, tmp_path, monkeypatch):
    # A real S3 API server: listings come back in pages (a small page size stands in for S3's 1,000), and a key
    # with `..` segments, which this server stores as is, is refused before anything is written.
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    from largebatch import s3
    from largebatch.errors import BadInput

    monkeypatch.setattr(s3, "CACHE_ROOT", tmp_path / "cache")
    monkeypatch.setattr(s3, "LIST_PAGE_SIZE", 3)
    for i in range(7):
        s3_server.client.put_object(Bucket="lb-data", Key=f"paged/part-{i}.bin", Body=str(i).encode())
    pages = []
    real_client = s3.client

    def recording_client(endpoint=None):
        c = real_client(endpoint)
        c.meta.events.register("after-call.s3.ListObjectsV2", lambda parsed, **kw: pages.append(parsed))
        return c

    monkeypatch.setattr(s3, "client", recording_client)
    root = s3.fetch_to_cache("s3://lb-data/paged")
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*.bin")) == [f"part-{i}.bin" for i in range(7)]
    assert [len(p.get("Contents", [])) for p in pages] == [3, 3, 1]  # the server really paged
    assert open(f"{root}/part-6.bin", "rb").read() == b"6"

    s3_server.client.put_object(Bucket="lb-data", Key="evil/../../../escape.pth", Body=b"import os")
    with pytest.raises(BadInput, match="not a plain relative path"):
        s3.fetch_to_cache("s3://lb-data/evil")
    assert not list(tmp_path.rglob("escape.pth"))


def test_ray_data_trains_two_ddp_workers_from_parquet_on_s3(s3_server, tmp_path, monkeypatch):
    """examples/parquet_task.py with s3:// folders: Ray Data reads the training rows from the S3 server (through
    AWS_ENDPOINT_URL alone) and Ray Train shards them over 2 DDP workers; the eval rows come through pyarrow."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from largebatch.config import parse_trial, resolve
    from largebatch.raylib import init_ray, shutdown_ray
    from largebatch.train.trial import run_trial

    rng = np.random.default_rng(0)
    for split, n in (("train", 1024), ("eval", 256)):
        x = rng.standard_normal((n, 4)).astype(np.float32)
        y = np.tanh(x @ np.array([1.0, -2.0, 0.5, 1.5], dtype=np.float32)).astype(np.float32)
        for i, part in enumerate(np.array_split(np.arange(n), 4)):
            buf = io.BytesIO()
            pq.write_table(pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x[part].ravel()), 4),
                                     "y": pa.FixedSizeListArray.from_arrays(pa.array(y[part]), 1)}), buf)
            s3_server.client.put_object(Bucket="lb-data", Key=f"points/{split}/part-{i}.parquet",
                                        Body=buf.getvalue())
    for k, v in s3_server.env.items():  # before Ray starts: the head and every worker inherit them
        monkeypatch.setenv(k, v)
    repo = Path(__file__).resolve().parents[2]  # examples/ is imported from the repository root
    monkeypatch.setenv("PYTHONPATH", str(repo))
    monkeypatch.syspath_prepend(str(repo))
    assert not ray.is_initialized()
    init_ray(None, num_cpus=4)  # 2 for the DDP workers, 2 for Ray Data's read tasks
    try:
        cfg = parse_trial({
            "task": {"name": "examples.parquet_task:make_task",
                     "kwargs": {"train": "s3://lb-data/points/train", "eval": "s3://lb-data/points/eval"}},
            "data": {"global_batch_size": 64},
            "optim": {"name": "sgd", "base_lr": 0.05, "base_batch_size": 64}, "budget": {"epochs": 3}})
        out = run_trial(resolve(cfg, 2), run_name="ray-data-s3", storage_path=str(tmp_path), max_failures=0)
    finally:
        shutdown_ray()
    assert out["status"] == "completed", out.get("reason")
    hist = out["history"]
    assert [h["examples_seen"] for h in hist] == [1024, 2048, 3072]  # every S3 row, each epoch
    assert hist[-1]["val_mse"] < hist[0]["val_mse"]
    assert out["replica_divergence"] == 0.0
