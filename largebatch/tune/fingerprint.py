"""What a profiled step's cost depends on beyond the study's config (docs/design.md §9, issue #26).

The throughput profile's cache key (tune/throughput.py) once held the task's name and kwargs only, so a user task
whose model was made 64x wider in code reused the old step times and reported twice the speed-up. The key now also
holds this fingerprint, computed on the driver from the base trial's task, built once:

- the model: every parameter's and buffer's name, shape and dtype, and the classes it is made of;
- the code: a hash of every source file the task's parts come from (the factory, data, model, loss and metric
  functions, the model's module classes, the training Dataset's class), so a change to the forward pass or to
  `__getitem__` that keeps the shapes still measures again; and of largebatch's own step code (the loop, the feed,
  the optimizers, the profile itself);
- the data pipeline: the training split's kind (tensors, or the Dataset classes around each other), one item's or
  row's shapes and dtypes, whether the Dataset fetches whole batches (`__getitems__`), the subset and loader settings.

The machine (host, CPUs, torch version, GPU) and the thread count are keyed by throughput.py. When the fingerprint
cannot be computed (the task's code raised on the driver) the key is unsure: the profile is measured and not cached.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Iterable

# largebatch's own code that a profiled step runs (relative to the package): a change measures again
STEP_CODE = ("train/loop.py", "train/stepsums.py", "data/feed.py", "data/loader.py", "optim", "tune/throughput.py",
             "tune/measure.py", "tune/group.py", "tune/fingerprint.py")
_NOT_HASHED = ("torch", "numpy", "builtins", "typing", "functools", "collections")  # keyed by version instead


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def module_files(names: Iterable[str]) -> dict[str, str]:
    """{module: hash of its source file} for the named, imported modules that have a file (not torch's own)."""
    out = {}
    for name in sorted({n for n in names if n}):
        if name.split(".")[0] in _NOT_HASHED:
            continue
        path = getattr(sys.modules.get(name), "__file__", None)
        if path and Path(path).is_file():
            out[name] = file_hash(Path(path))
    return out


def step_code() -> dict[str, str]:
    """{file: hash} of largebatch's step code (STEP_CODE)."""
    root = Path(__file__).resolve().parent.parent
    files: list[Path] = []
    for rel in STEP_CODE:
        p = root / rel
        files += sorted(p.glob("*.py")) if p.is_dir() else [p]
    return {str(f.relative_to(root)): file_hash(f) for f in files if f.is_file()}


def _module_of(obj: Any) -> str:
    return getattr(obj, "__module__", None) or getattr(type(obj), "__module__", "") or ""


def _tensor(t) -> str:
    return f"{tuple(t.shape)} {t.dtype}"


def split_pipeline(split) -> tuple[dict[str, Any], list[str]]:
    """(what the training split's pipeline is, the modules its classes come from). A tensor split is described by
    its per-row shapes (not its length: data.train_subset only shortens it); a Dataset by its classes, wrappers
    first, one item's shapes and whether it fetches whole batches."""
    import torch

    if isinstance(split, tuple):
        return {"kind": "tensors", "rows": [f"{tuple(t.shape[1:])} {t.dtype}" for t in split]}, []
    classes: list[Any] = []  # the split and the datasets it wraps
    cur = split
    while cur is not None and len(classes) < 8:
        classes.append(cur)
        cur = getattr(cur, "dataset", None)
    info: dict[str, Any] = {"kind": "dataset",
                            "classes": [f"{type(c).__module__}.{type(c).__qualname__}" for c in classes],
                            "getitems": [hasattr(c, "__getitems__") for c in classes]}
    try:
        item = split[0]
        info["item"] = [_tensor(t) if isinstance(t, torch.Tensor) else type(t).__name__ for t in item]
    except Exception as e:  # the trial would fail the same way; the key still names the classes
        info["item"] = f"unreadable: {type(e).__name__}"
    return info, [type(c).__module__ for c in classes]


def step_fingerprint(tree: dict) -> dict[str, Any]:
    """The fingerprint of the base trial's step (the module docstring): {"model", "code", "data", "digest"}, where
    digest hashes the rest. Builds the task's data once and the model on the meta device (else the CPU) in this
    process; the driver runs it in a thread while Ray starts (0.5-1.6 s for Fashion-MNIST's decode on the 2-core
    machine). The model's shapes do not depend on the seed: the global RNG is left alone."""
    import torch

    from largebatch.config import parse_trial
    from largebatch.tasks import build_data, task_of

    cfg = parse_trial(tree, prefix="")
    task = task_of(cfg)
    data = build_data(task, cfg)
    try:  # on the meta device: shapes and dtypes without allocating the weights (a large model costs nothing)
        with torch.device("meta"):
            model = task.model(cfg, data)
    except Exception:  # a model that needs real tensors to be built (weights read from a file, numpy init)
        model = task.model(cfg, data)
    params = [[n, *_tensor(p).split(" ", 1)] for n, p in model.named_parameters()]
    buffers = [[n, *_tensor(b).split(" ", 1)] for n, b in model.named_buffers()]
    classes = sorted({f"{type(m).__module__}.{type(m).__qualname__}" for m in model.modules()})
    pipeline, data_modules = split_pipeline(data.train)
    d = cfg.data
    pipeline.update(dataset=d.dataset, path=d.path, train_subset=d.train_subset, loader_workers=d.loader_workers,
                    per_worker_batch_cap=d.per_worker_batch_cap)
    factory = cfg.task.name.partition(":")[0] if ":" in cfg.task.name else ""
    parts = [task.data, task.model, task.loss, *(m.fn for m in task.metrics)]
    modules = [factory, *map(_module_of, parts), *(type(m).__module__ for m in model.modules()), *data_modules]
    fp = {"model": {"parameters": sum(p.numel() for p in model.parameters()), "classes": classes,
                    "shapes": digest([params, buffers])},
          "code": {"task": module_files(modules), "largebatch": digest(step_code())},
          "data": pipeline, "torch": torch.__version__}
    del model, data
    return {**fp, "digest": digest(fp)}
