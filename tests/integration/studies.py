"""Run a study from a dict on the test's local Ray and read its child runs back from MLflow (integration tests)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def run_study_dict(raw: dict, tmp_path: Path, **kwargs: Any) -> tuple[dict[str, Any], Any, list]:
    """(the study's report, an MlflowClient on its store, its child runs): the study written as YAML under tmp_path
    and run in-process with `run_study` (kwargs: e.g. extend=True), as `largebatch tune` does, with no live
    display."""
    from mlflow.tracking import MlflowClient

    from largebatch.config import load_study
    from largebatch.tune.driver import run_study

    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    report = run_study(load_study(path), source=str(path), study_text=path.read_text(),
                       run_root=str(tmp_path / "runs"), live=False, **kwargs)
    study = report["study"]
    client = MlflowClient(study["tracking_uri"])
    runs = client.search_runs([study["experiment_id"]],
                              filter_string=f"tags.mlflow.parentRunId = '{study['parent_run_id']}'")
    return report, client, runs
