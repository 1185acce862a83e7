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


# Folders this process created in its preflights (storage, the SQLite store's folder), outermost first: a command
# refused after its preflight (Ray unreachable, MLflow down, too few CPUs) removes them again (`undo_preflight`), so
# it leaves its working folder as it found it. Only folders still empty are removed: nothing else is ever deleted.
_created: list[Path] = []


def make_dirs(path: str | Path) -> None:
    """`mkdir -p path`, remembering each folder it created for `undo_preflight`. Raises OSError."""
    p = Path(path).absolute()
    missing = []
    q = p
    while not q.exists() and q != q.parent:
        missing.append(q)
        q = q.parent
    try:
        p.mkdir(parents=True, exist_ok=True)
    finally:
        _created.extend(d for d in reversed(missing) if d.is_dir())


def undo_preflight() -> None:
    """Remove the still-empty folders the preflights of this process created, innermost first."""
    for d in reversed(_created):
        try:
            d.rmdir()
        except OSError:
            pass  # not empty (something ran and wrote), or already gone: left as it is
    _created.clear()


def nearest_existing(path: Path) -> Path:
    """`path` itself or its nearest ancestor that exists: where a folder or file made at `path` would start."""
    q = path
    while not q.exists() and q != q.parent:
        q = q.parent
    return q


def check_writable_dir(path: str | Path, flag: str) -> None:
    """A folder that can be created or written at `path`, checked without creating anything: not a file, and its
    nearest existing ancestor a writable folder."""
    import os

    p = Path(path).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise BadInput(f"{str(path)!r} is a file, not a folder; give a folder (it is created if missing)", field=flag)
    q = nearest_existing(p)
    if not q.is_dir():
        raise BadInput(f"{str(q)!r} is a file, so {str(path)!r} cannot be made under it; choose another {flag}",
                       field=flag)
    if not os.access(q, os.W_OK | os.X_OK):
        raise BadInput(f"cannot write to folder {str(q)!r}; choose another {flag}", field=flag)


def preflight_storage(storage_path: str) -> None:
    """Fail before any trial starts if the storage cannot be written."""
    if is_s3(storage_path):
        from largebatch.s3 import preflight_s3

        preflight_s3(storage_path)
        return
    p = Path(storage_path)
    try:
        make_dirs(p)
        probe = p / ".largebatch-write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise BadInput(f"cannot write to {storage_path!r} ({e.strerror}); choose a writable --storage",
                       field="--storage") from None


def upload_dir(local_dir: Path, s3_uri: str) -> None:
    from largebatch.s3 import upload_dir as _upload

    _upload(local_dir, s3_uri)
