"""S3 through boto3 (imported only here, only when an s3:// URI is used).

Endpoints for S3-compatible servers (MinIO, moto_server) come from the standard settings real users already have:
AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (boto3 and pyarrow both read them), or `?endpoint_override=URL` on the URI
(the form Ray's storage_path accepts). Every call has bounded timeouts; every failure is one clear line.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, urlparse

from largebatch.errors import BadInput

CACHE_ROOT = Path(os.environ.get("LARGEBATCH_CACHE", Path.home() / ".cache" / "largebatch")) / "s3"


def parse_s3_uri(uri: str) -> tuple[str, str, Optional[str]]:
    """s3://bucket/key/prefix?endpoint_override=http://host:port -> (bucket, key, endpoint or None)."""
    u = urlparse(uri)
    if u.scheme != "s3" or not u.netloc:
        raise BadInput(f"got {uri!r}: an S3 URI looks like s3://bucket/prefix")
    endpoint = parse_qs(u.query).get("endpoint_override", [None])[0]
    if endpoint and "://" not in endpoint:
        endpoint = f"http://{endpoint}"
    return u.netloc, u.path.lstrip("/"), endpoint


def client(endpoint: Optional[str] = None):
    import boto3
    from botocore.config import Config

    cfg = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint, config=cfg)


def _explain(e: Exception, uri: str, field: str) -> BadInput:
    """botocore's many failure types -> one actionable line."""
    from botocore.exceptions import (ClientError, EndpointConnectionError, NoCredentialsError,
                                     PartialCredentialsError, ConnectTimeoutError, ReadTimeoutError)

    if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
        msg = "no AWS credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile / IAM role)"
    elif isinstance(e, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError)):
        msg = (f"cannot reach the S3 endpoint ({e}); check AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 or "
               f"?endpoint_override= for MinIO-style servers")
    elif isinstance(e, ClientError):
        code = e.response.get("Error", {}).get("Code", "?")
        if code in ("NoSuchBucket", "404", "NotFound"):
            msg = "the bucket does not exist; create it first (e.g. `aws s3 mb`) or fix the bucket name"
        elif code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "AccessDenied", "InvalidToken",
                      "ExpiredToken"):
            msg = f"S3 refused the credentials ({code}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the " \
                  f"bucket policy"
        else:
            msg = f"S3 error {code}: {e.response.get('Error', {}).get('Message', '')}"
    else:
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return BadInput(f"{uri}: {msg}", field=field)


def preflight_s3(uri: str, field: str = "--storage") -> None:
    """Before any trial starts: the bucket exists, the credentials work, and we may write (put + delete)."""
    bucket, key, endpoint = parse_s3_uri(uri)
    s3 = client(endpoint)
    probe = f"{key.rstrip('/')}/.largebatch-write-probe" if key else ".largebatch-write-probe"
    try:
        s3.head_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key=probe, Body=b"ok")
        s3.delete_object(Bucket=bucket, Key=probe)
    except Exception as e:
        raise _explain(e, uri, field) from None


def _upload(pairs: list[tuple[Path, str]], uri: str, field: str) -> list[str]:
    """Upload (local file, key relative to the URI's prefix) pairs; returns the object keys."""
    bucket, key, endpoint = parse_s3_uri(uri)
    s3 = client(endpoint)
    keys = []
    try:
        for path, rel in pairs:
            k = f"{key.rstrip('/')}/{rel}".lstrip("/")
            s3.upload_file(str(path), bucket, k)
            keys.append(k)
    except Exception as e:
        raise _explain(e, uri, field) from None
    return keys


def upload_dir(local_dir: Path, uri: str) -> list[str]:
    files = sorted(p for p in Path(local_dir).rglob("*") if p.is_file())
    return _upload([(p, p.relative_to(local_dir).as_posix()) for p in files], uri, "--storage")


def upload_files(paths: list[Path], uri: str) -> list[str]:
    return _upload([(Path(p), Path(p).name) for p in paths], uri, "data push")


def fetch_to_cache(uri: str, field: str = "data.path") -> str:
    """Download an s3:// object or prefix into the local cache; return the local file or folder.

    The cache is keyed by ETag: an unchanged object is not downloaded again, a changed one is. Each node of a
    cluster fills its own cache, so workers never read S3 in the training loop.
    """
    bucket, key, endpoint = parse_s3_uri(uri)
    s3 = client(endpoint)
    try:
        listing = s3.list_objects_v2(Bucket=bucket, Prefix=key)
        objects = [o for o in listing.get("Contents", []) if not o["Key"].endswith("/")]
    except Exception as e:
        raise _explain(e, uri, field) from None
    exact = [o for o in objects if o["Key"] == key]
    if exact:
        objects = exact
    elif key and not key.endswith("/"):
        objects = [o for o in objects if o["Key"].startswith(key + "/")]
    if not objects:
        raise BadInput(f"{uri}: no objects there; upload the dataset first (`largebatch data push`)", field=field)
    root = CACHE_ROOT / bucket / hashlib.sha1(f"{endpoint}|{key}".encode()).hexdigest()[:16]
    for o in objects:
        rel = Path(o["Key"]).name if exact else Path(o["Key"][len(key):].lstrip("/"))
        dest = root / rel
        etag_file = dest.with_name(dest.name + ".etag")
        etag = o["ETag"].strip('"')
        if dest.exists() and etag_file.exists() and etag_file.read_text() == etag:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + f".part-{os.getpid()}")
        try:
            s3.download_file(bucket, o["Key"], str(tmp))
        except Exception as e:
            raise _explain(e, uri, field) from None
        os.replace(tmp, dest)  # atomic: a concurrent worker sees the old file or the new one, never half
        etag_file.write_text(etag)
    return str(root / Path(objects[0]["Key"]).name) if exact else str(root)
