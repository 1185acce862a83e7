"""Storage URIs: local paths and s3://. boto3 is imported only when an s3:// URI is used (Composer style)."""
from __future__ import annotations

import os
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
    raise BadInput(f"got {uri!r}: s3:// datasets are not supported yet; copy the files to a local folder",
                   field="data.path")
