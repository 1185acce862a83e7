"""Finding a study's runs: its Tune run folders under the storage (`<name>-<YYYYmmdd-HHMMSS>`) and the MLflow
parent run of the newest, for `largebatch tune --resume` (here) and `--extend` (tune/extend.py)."""
from __future__ import annotations

from pathlib import Path

from largebatch.errors import BadInput
from largebatch.vocab import Status


def _run_folders(storage_path: str, exp_name: str) -> list[tuple[str, str]]:
    """(folder name, restorable path) of this study's Tune run folders `<name>-<YYYYmmdd-HHMMSS>`, newest first."""
    import re

    pattern = re.compile(re.escape(exp_name) + r"-\d{8}-\d{6}$")
    base, _, query = storage_path.partition("?")
    if base.startswith("s3://"):
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(storage_path)
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        names = [i.base_name for i in infos if i.type == pafs.FileType.Directory]
    else:
        root = Path(base)
        names = [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    names = sorted((n for n in names if pattern.match(n)), key=lambda n: n[-15:], reverse=True)
    return [(n, base.rstrip("/") + "/" + n + (f"?{query}" if query else "")) for n in names]


def find_resumable(storage_path: str, exp_name: str, tracking_uri: str) -> dict[str, str]:
    """The newest run of study `exp_name` under the storage, and its MLflow parent run; BadInput if none."""
    from ray import tune

    from largebatch.tracking import STATUS_TAG

    folders = _run_folders(storage_path, exp_name)
    hint = "check --name and --storage, or drop --resume to start a new study"
    if not folders:
        raise BadInput(f"nothing to resume: no run of study {exp_name!r} under {storage_path}; {hint}",
                       field="--resume")
    run_name, path = folders[0]
    if not tune.Tuner.can_restore(path):
        raise BadInput(f"nothing to resume: {path} holds no Tune experiment state; {hint}", field="--resume")
    exp, runs = study_parent(tracking_uri, exp_name, run_name)
    if not runs:
        raise BadInput(f"nothing to resume: no MLflow study run tagged run_name={run_name!r} in {tracking_uri}; "
                       f"pass the --mlflow the study was started with", field="--resume")
    if runs[0].data.tags.get(STATUS_TAG) == Status.COMPLETED:
        raise BadInput(f"nothing to resume: study run {run_name!r} already completed (parent run "
                       f"{runs[0].info.run_id}); {hint}", field="--resume")
    return {"run_name": run_name, "path": path, "parent_id": runs[0].info.run_id}


def study_parent(tracking_uri: str, exp_name: str, run_name: str):
    """(the MLflow experiment or None, [the study's parent run] or []) for the Tune run folder `run_name`."""
    from largebatch.tracking import RunTree

    tree = RunTree(tracking_uri)
    exp = tree.experiment(exp_name)
    runs = tree.study_named(exp.experiment_id, run_name) if exp is not None else []
    return exp, runs
