"""S3 object keys are untrusted: a key may not write outside the cache, listings are paginated and bounded,
and a failed download leaves no partial file. Against moto's in-process S3 (the real boto3 client and
paginator; tests/e2e/test_s3.py does the same against a moto_server process)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from largebatch import s3
from largebatch.errors import BadInput

moto = pytest.importorskip("moto", reason="moto is a test dependency (pip install -e '.[test]')")


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(s3, "CACHE_ROOT", tmp_path / "cache")
    with moto.mock_aws():
        client = s3.client()
        client.create_bucket(Bucket="lb-keys")
        yield client


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} if root.exists() else set()


@pytest.mark.parametrize("key", [
    "data/../../escape.pth",        # climbs out of the cache
    "data/../sibling",              # stays inside, but `..` is refused outright
    "data/./x",
    "data//x",                      # empty segment: would alias data/x
    "data/a\\..\\..\\x",            # backslashes
])
def test_prefix_with_a_bad_key_is_refused_before_anything_is_written(bucket, tmp_path, key):
    bucket.put_object(Bucket="lb-keys", Key="data/good.bin", Body=b"ok")
    bucket.put_object(Bucket="lb-keys", Key=key, Body=b"evil")
    with pytest.raises(BadInput) as e:
        s3.fetch_to_cache("s3://lb-keys/data")
    message = str(e.value)
    assert message.startswith("data.path: s3://lb-keys/data: object key part") and "refusing" in message
    assert "\n" not in message
    assert _files(tmp_path) == set()  # not even the good object: the listing is checked first


def test_exact_key_whose_name_is_dotdot_is_refused(bucket, tmp_path):
    bucket.put_object(Bucket="lb-keys", Key="x/..", Body=b"evil")
    with pytest.raises(BadInput, match="not a plain relative path"):
        s3.fetch_to_cache("s3://lb-keys/x/..")
    assert _files(tmp_path) == set()


def test_symlink_planted_in_the_cache_cannot_redirect_a_download(bucket, tmp_path):
    bucket.put_object(Bucket="lb-keys", Key="data/sub/x.bin", Body=b"v")
    first = Path(s3.fetch_to_cache("s3://lb-keys/data"))
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(first / "sub")
    (first / "sub").symlink_to(outside)  # e.g. left by another tenant of a shared cache
    with pytest.raises(BadInput, match="resolves outside the cache folder"):
        s3.fetch_to_cache("s3://lb-keys/data")
    assert list(outside.iterdir()) == []


def test_ordinary_nested_keys_are_fetched(bucket):
    for key in ("ds/train/a.bin", "ds/train/b.bin", "ds/meta.json"):
        bucket.put_object(Bucket="lb-keys", Key=key, Body=key.encode())
    root = Path(s3.fetch_to_cache("s3://lb-keys/ds"))
    assert _files(root) == {"train/a.bin", "train/b.bin", "meta.json",
                            "train/a.bin.etag", "train/b.bin.etag", "meta.json.etag"}
    assert (root / "train/b.bin").read_bytes() == b"ds/train/b.bin"


def test_listing_is_paginated(bucket, monkeypatch):
    monkeypatch.setattr(s3, "LIST_PAGE_SIZE", 2)
    for i in range(5):
        bucket.put_object(Bucket="lb-keys", Key=f"many/{i}.bin", Body=b"x")
    calls = []
    real_client = s3.client

    def counting_client(endpoint=None):
        c = real_client(endpoint)
        c.meta.events.register("before-parameter-build.s3.ListObjectsV2", lambda params, **kw: calls.append(params))
        return c

    monkeypatch.setattr(s3, "client", counting_client)
    root = Path(s3.fetch_to_cache("s3://lb-keys/many"))
    assert {p.name for p in root.glob("*.bin")} == {f"{i}.bin" for i in range(5)}
    assert len(calls) == 3 and all(c["MaxKeys"] == 2 for c in calls)  # 2 + 2 + 1: every page was read


def test_listing_is_bounded(bucket, monkeypatch, tmp_path):
    monkeypatch.setattr(s3, "LIST_PAGE_SIZE", 2)
    monkeypatch.setattr(s3, "MAX_OBJECTS", 3)
    for i in range(5):
        bucket.put_object(Bucket="lb-keys", Key=f"many/{i}.bin", Body=b"x")
    with pytest.raises(BadInput, match="more than 3 objects under this prefix"):
        s3.fetch_to_cache("s3://lb-keys/many")
    assert _files(tmp_path) == set()


def test_failed_download_leaves_no_partial_file(bucket, monkeypatch, tmp_path):
    from botocore.exceptions import ReadTimeoutError

    bucket.put_object(Bucket="lb-keys", Key="d/big.bin", Body=b"0123456789")
    real_client = s3.client

    class Flaky:
        """The real client, whose download writes half the file and then times out."""
        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            return getattr(self._inner, name)

        def download_file(self, bucket_name, key, filename):
            Path(filename).write_bytes(b"01234")
            raise ReadTimeoutError(endpoint_url="http://s3")

    monkeypatch.setattr(s3, "client", lambda endpoint=None: Flaky(real_client(endpoint)))
    with pytest.raises(BadInput, match="cannot reach the S3 endpoint"):
        s3.fetch_to_cache("s3://lb-keys/d")
    assert {p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()} == set()

    monkeypatch.setattr(s3, "client", real_client)  # the next attempt downloads it whole
    root = Path(s3.fetch_to_cache("s3://lb-keys/d"))
    assert (root / "big.bin").read_bytes() == b"0123456789"
