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
from urllib.parse import parse_qs, unquote, urlparse

from largebatch.errors import BadInput
from largebatch.redact import redact_text

CACHE_ROOT = Path(os.environ.get("LARGEBATCH_CACHE", Path.home() / ".cache" / "largebatch")) / "s3"
LIST_PAGE_SIZE = 1000  # keys per list_objects_v2 call (S3's own maximum)
MAX_OBJECTS = 100_000  # a dataset prefix holds a handful of files; a listing beyond this is a wrong prefix


def parse_s3_uri(uri: str) -> tuple[str, str, Optional[str]]:
    """s3://bucket/key/prefix?endpoint_override=http://host:port -> (bucket, key, endpoint or None). Keys in the URI
    (s3://ACCESS_KEY:SECRET_KEY@bucket/..., pyarrow's and so Ray's form) are not part of the bucket: see
    `uri_credentials`."""
    u = urlparse(uri)
    bucket = u.netloc.rpartition("@")[2]
    if u.scheme != "s3" or not bucket:
        raise BadInput(f"got {redact_text(repr(uri))}: an S3 URI looks like s3://bucket/prefix")
    endpoint = parse_qs(u.query).get("endpoint_override", [None])[0]
    if endpoint and "://" not in endpoint:
        endpoint = f"http://{endpoint}"
    return bucket, u.path.lstrip("/"), endpoint


def uri_credentials(uri: str) -> Optional[tuple[str, str]]:
    """(access key, secret key) from s3://ACCESS_KEY:SECRET_KEY@bucket/...; None when the URI holds none."""
    u = urlparse(uri)
    if "@" not in u.netloc or u.username is None:
        return None
    return unquote(u.username), unquote(u.password or "")


def client(endpoint: Optional[str] = None, credentials: Optional[tuple[str, str]] = None):
    import boto3
    from botocore.config import Config

    cfg = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
    keys = {"aws_access_key_id": credentials[0], "aws_secret_access_key": credentials[1]} if credentials else {}
    return boto3.client("s3", endpoint_url=endpoint, config=cfg, **keys)


def client_for(uri: str):
    """The client for an s3:// URI: its endpoint, and its own keys if it carries them (else the environment's)."""
    _, _, endpoint = parse_s3_uri(uri)
    creds = uri_credentials(uri)
    return client(endpoint, creds) if creds else client(endpoint)


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
    return BadInput(redact_text(f"{uri}: {msg}"), field=field)  # the URI (or botocore's text) may hold keys


def preflight_s3(uri: str, field: str = "--storage") -> None:
    """Before any trial starts: the bucket exists, the credentials work, and we may write (put + delete)."""
    bucket, key, endpoint = parse_s3_uri(uri)
    s3 = client_for(uri)
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
    s3 = client_for(uri)
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


def list_objects(s3, bucket: str, prefix: str, uri: str, field: str) -> list[dict]:
    """Every object under `prefix`, page by page (one list_objects_v2 call returns at most LIST_PAGE_SIZE keys),
    refusing listings longer than MAX_OBJECTS: the prefix is user input and the listing is held in memory."""
    objects: list[dict] = []
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": LIST_PAGE_SIZE})
        for page in pages:
            objects += [o for o in page.get("Contents", []) if not o["Key"].endswith("/")]
            if len(objects) > MAX_OBJECTS:
                raise BadInput(f"{uri}: more than {MAX_OBJECTS} objects under this prefix; point it at the "
                               f"dataset's own folder", field=field)
    except BadInput:
        raise
    except Exception as e:
        raise _explain(e, uri, field) from None
    return objects


def _shown(key: str) -> str:
    """A key for an error message: bounded, with control characters escaped (keys are arbitrary bytes)."""
    return repr(key if len(key) <= 200 else key[:200] + "...")


def cache_path(root: Path, rel: str, uri: str, field: str) -> Path:
    """Where the object with relative key `rel` goes under `root`, refusing any key that could land elsewhere:
    absolute keys, `..` or `.` segments, empty segments, backslashes or NUL, and (after resolving symlinks
    already in the cache) anything outside `root`."""
    segments = rel.split("/")
    if (not rel or rel.startswith("/") or "\\" in rel or "\0" in rel
            or any(seg in ("", ".", "..") for seg in segments)):
        raise BadInput(f"{uri}: object key part {_shown(rel)} is not a plain relative path (absolute, '..', '.', "
                       f"empty segment or backslash); refusing to write it into the cache", field=field)
    dest = root / Path(*segments)
    resolved_root = root.resolve()
    if not dest.resolve().is_relative_to(resolved_root):
        raise BadInput(f"{uri}: object key part {_shown(rel)} resolves outside the cache folder {root}; "
                       f"refusing to write it", field=field)
    return dest


def _relative_key(object_key: str, prefix: str, exact: bool) -> str:
    """The part of `object_key` below `prefix` (exactly one separator dropped: `data//x` keeps its `/x`)."""
    if exact:
        return object_key.rsplit("/", 1)[-1]
    rel = object_key[len(prefix):]
    return rel[1:] if prefix and not prefix.endswith("/") else rel


def _download(s3, bucket: str, key: str, dest: Path, uri: str, field: str) -> None:
    """Download to a temporary name beside `dest`, then rename: `dest` is the old file or the complete new one,
    never half of one, and a failed or interrupted download leaves nothing behind."""
    tmp = dest.with_name(dest.name + f".part-{os.getpid()}")
    try:
        s3.download_file(bucket, key, str(tmp))
        os.replace(tmp, dest)
    except Exception as e:
        raise _explain(e, uri, field) from None
    finally:
        tmp.unlink(missing_ok=True)


def fetch_to_cache(uri: str, field: str = "data.path") -> str:
    """Download an s3:// object or prefix into the local cache; return the local file or folder.

    The cache is keyed by ETag: an unchanged object is not downloaded again, a changed one is. Each node of a
    cluster fills its own cache, so workers never read S3 in the training loop. Object keys are untrusted:
    each must map to a path inside the cache folder (see cache_path).
    """
    bucket, key, endpoint = parse_s3_uri(uri)
    s3 = client_for(uri)
    objects = list_objects(s3, bucket, key, uri, field)
    exact = [o for o in objects if o["Key"] == key]
    if exact:
        objects = exact
    elif key and not key.endswith("/"):
        objects = [o for o in objects if o["Key"].startswith(key + "/")]
    if not objects:
        raise BadInput(f"{uri}: no objects there; upload the dataset first (`largebatch data push`)", field=field)
    root = CACHE_ROOT / bucket / hashlib.sha1(f"{endpoint}|{key}".encode()).hexdigest()[:16]
    # every key is checked before anything is written, so a bad key leaves the cache as it was
    plan = [(o, cache_path(root, _relative_key(o["Key"], key, bool(exact)), uri, field)) for o in objects]
    for o, dest in plan:
        etag_file = dest.with_name(dest.name + ".etag")
        etag = o["ETag"].strip('"')
        if dest.exists() and etag_file.exists() and etag_file.read_text() == etag:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        _download(s3, bucket, o["Key"], dest, uri, field)
        etag_file.write_text(etag)
    return str(plan[0][1]) if exact else str(root)
