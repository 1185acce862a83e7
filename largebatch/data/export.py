"""`largebatch data push`: upload a dataset's files under an s3:// prefix, in the layout `data.path: s3://...` reads
back. The data layer calls s3.py directly (boto3 is imported only when this runs); storage.py is not involved."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

from largebatch.errors import BadInput, unknown_choice

PUSHABLE = ("fashion-mnist", "digits", "npz")


def push_dataset(name: str, uri: str, path: Optional[str] = None) -> list[str]:
    """Upload a dataset's files under an s3:// prefix, in the layout `data.path: s3://...` reads back."""
    from largebatch.s3 import preflight_s3, upload_files

    if not (uri and str(uri).startswith("s3://")):
        raise BadInput(f"got {uri!r}: push to an s3://bucket/prefix", field="data push")
    preflight_s3(uri, field="data push")
    if name == "fashion-mnist":
        from largebatch.data.datasets import fashion_mnist_dir

        d = fashion_mnist_dir(path)
        return upload_files(sorted(d.glob("*-ubyte.gz")), uri)
    if name == "npz":
        if not path:
            raise BadInput("npz needs --path FILE.npz", field="--path")
        return upload_files([Path(path)], uri)
    if name == "digits":  # exported as an .npz in the generic format, so `dataset: npz` reads it from S3
        import numpy as np

        from largebatch.data.datasets import load_dataset

        data = load_dataset("digits")
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "digits.npz"
            np.savez(f, x_train=data.x_train.numpy(), y_train=data.y_train.numpy(), x_test=data.x_test.numpy(),
                     y_test=data.y_test.numpy())
            return upload_files([f], uri)
    raise BadInput(unknown_choice("dataset", name, list(PUSHABLE)), field="data push")
