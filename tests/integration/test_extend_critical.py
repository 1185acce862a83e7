"""A batch grid placed by the noise scale, and extending a finished study (docs/design.md §11, §12), on a real
local Ray with digits and in-process 1-worker trials (seconds each)."""
from __future__ import annotations

import json

import pytest
import yaml

from largebatch.config import load_study
from largebatch.errors import BadInput


def _study(name: str, search: dict, seeds=(0,)) -> dict:
    return {
        "name": name,
        "base": {"data": {"dataset": "digits", "global_batch_size": 32}, "model": {"name": "mlp", "hidden_sizes": [32]},
                 "optim": {"name": "sgd", "base_lr": 0.05, "base_batch_size": 32, "momentum": 0.9},
                 "budget": {"epochs": 2}},
        "search": search,
        "tuner": {"searcher": "grid", "workers_per_trial": 1, "cpus_per_worker": 1, "seeds": list(seeds)},
        "baseline": {"data.global_batch_size": 32},
        "report": {"tolerance": 5.0},
    }


def _run(root, raw: dict, **kw):
    from largebatch.tune.driver import run_study

    path = root / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return run_study(load_study(path), source=str(path), study_text=path.read_text(), run_root=str(root / "runs"),
                     live=False, **kw)


def _children(report) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(report["study"]["tracking_uri"])
    runs = client.search_runs([report["study"]["experiment_id"]],
                              filter_string=f"tags.mlflow.parentRunId = '{report['study']['parent_run_id']}'")
    return client, {r.info.run_id: r for r in runs}


def test_around_critical_places_the_grid_from_b_noise(local_ray, tmp_path):
    """No cached estimate: the driver probes, caches, logs B_noise and the grid to the parent, and the trials run
    at the rounded factors x B_noise."""
    from largebatch.config.critical import critical_grid

    report = _run(tmp_path, _study("it-critical", {"data.global_batch_size": {"around_critical": [0.5, 2]}}))
    cached = list((tmp_path / "runs" / "noise_scale").glob("it-critical-*.json"))
    assert len(cached) == 1
    est = json.loads(cached[0].read_text())
    grid = critical_grid(est["b_noise"], [0.5, 2], 1, 1437)
    client, children = _children(report)
    searched = sorted(int(r.data.params["data.global_batch_size"]) for r in children.values()
                      if r.data.params["arm"] == "search")
    assert searched == sorted(grid) and len(grid) == 2
    assert all(r.data.tags["status"] == "completed" for r in children.values())
    parent = client.get_run(report["study"]["parent_run_id"])
    assert parent.data.metrics["b_noise"] == pytest.approx(est["b_noise"])
    assert json.loads(parent.data.tags["critical_grid"]) == grid
    assert {c["global_batch_size"] for c in report["configs"]} >= set(grid)


def test_extend_adds_a_batch_size_and_reuses_the_finished_trials(local_ray, tmp_path):
    first = _run(tmp_path, _study("it-extend", {"data.global_batch_size": {"grid": [64]}}))
    client, before = _children(first)
    assert len(before) == 2  # baseline + B=64
    history = {rid: len(client.get_metric_history(rid, "val_acc")) for rid in before}
    ends = {rid: r.info.end_time for rid, r in before.items()}

    second = _run(tmp_path, _study("it-extend", {"data.global_batch_size": {"grid": [64, 128]}}), extend=True)
    assert second["study"]["parent_run_id"] == first["study"]["parent_run_id"]
    _, after = _children(second)
    assert set(before) < set(after) and len(after) == 3  # one new child run, the old ones kept
    for rid in before:  # not re-run: no new epochs, the same end
        assert len(client.get_metric_history(rid, "val_acc")) == history[rid]
        assert client.get_run(rid).info.end_time == ends[rid]
    (new,) = [r for rid, r in after.items() if rid not in before]
    assert new.data.params["data.global_batch_size"] == "128" and new.data.tags["status"] == "completed"
    assert second["counts"]["total"] == 3
    assert sorted(c["global_batch_size"] for c in second["configs"]) == [32, 64, 128]
    parent = client.get_run(second["study"]["parent_run_id"])
    assert parent.data.tags["status"] == "completed" and parent.info.status == "FINISHED"

    # the same file again: every trial finished -> one line, nothing started
    with pytest.raises(BadInput, match="nothing to extend: all 3 trial"):
        _run(tmp_path, _study("it-extend", {"data.global_batch_size": {"grid": [64, 128]}}), extend=True)
    with pytest.raises(BadInput, match="nothing to extend: no run of study 'it-none'"):
        _run(tmp_path, _study("it-none", {"data.global_batch_size": {"grid": [64]}}), extend=True)
