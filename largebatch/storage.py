"""Storage URIs: local paths and s3://. boto3 is imported only when an s3:// URI is used (Composer style)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from largebatch.errors import BadInput

DEFAULT_RUN_ROOT = "runs"


def is_s3(uri: Optional[str]) -> bool:
    return bool(uri) and str(uri).startswith("s3://")


def resolve_storage(uri: Optional[str], run_root: str = DEFAULT_RUN_ROOT) -> str:
    """Ray Train storage_path: s3://... as given, a local path made absolute (Ray needs absolute paths)."""
    if not uri:
        return str((Path(run_root) / "ray").resolve())
    if is_s3(uri):
        return uri
    if "://" in uri:
        raise BadInput(f"got {uri!r}: storage must be a local path or s3://bucket/prefix", field="--storage")
    return str(Path(uri).expanduser().resolve())


def fetch_to_cache(uri: str) -> str:
    """A local copy of an s3:// dataset (file or prefix), cached by ETag."""
    from largebatch.s3 import fetch_to_cache as _fetch

    return _fetch(uri)


def report_dir_for(storage_path: str, run_name: str, run_root: str = DEFAULT_RUN_ROOT) -> str:
    """Where the report goes: next to the study's trials in its storage."""
    if is_s3(storage_path):
        return f"{storage_path.split('?')[0].rstrip('/')}/{run_name}/report"
    return str(Path(storage_path) / run_name / "report")


def preflight_storage(storage_path: str) -> None:
    """Fail before any trial starts if the storage cannot be written."""
    if is_s3(storage_path):
        from largebatch.s3 import preflight_s3

        preflight_s3(storage_path)
        return
    p = Path(storage_path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / ".largebatch-write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise BadInput(f"cannot write to {storage_path!r} ({e.strerror}); choose a writable --storage",
                       field="--storage") from None


def upload_dir(local_dir: Path, s3_uri: str) -> None:
    from largebatch.s3 import upload_dir as _upload

    _upload(local_dir, s3_uri)
