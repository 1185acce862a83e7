"""S3 end to end against a real S3 API server process (moto_server) on 127.0.0.1, through endpoint settings only."""
from __future__ import annotations

import json

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
    mtime = (tmp_path / "cache").stat().st_mtime_ns
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
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
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
