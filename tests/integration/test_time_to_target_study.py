"""A study scored by time to the baseline's quality, with the LR re-tuned per batch size and the stop-at-target rule
(docs/design.md §13), on a real local Ray and MLflow with digits and in-process 1-worker trials (seconds each).

One trial at a time, so the baseline (first in the searcher's order) ends before any searched trial starts: every
searched trial then knows the target, and the stopper's effect on each is exact."""
from __future__ import annotations

from studies import run_study_dict

CAP_EPOCHS = 8


def _raw() -> dict:
    return {
        "name": "it-target",
        "base": {"data": {"dataset": "digits", "global_batch_size": 32}, "model": {"name": "mlp", "hidden_sizes": [32]},
                 "optim": {"name": "sgd", "base_lr": 0.05, "base_batch_size": 32, "momentum": 0.9},
                 "budget": {"epochs": CAP_EPOCHS, "stop_at_target": True}},
        "search": {"data.global_batch_size": {"grid": [128, 256]},
                   "optim.base_lr": {"loguniform": [0.003, 0.5], "per_batch": 2}},
        "tuner": {"searcher": "grid", "workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent": 1},
        "baseline": {"data.global_batch_size": 32, "budget.epochs": 3},
        "report": {"tolerance": 2.0},
    }


def _check_stops(client, searched, target: float) -> dict[int, set]:
    """Every searched trial that reached the target stopped at exactly that epoch (with its reason); the others used
    the whole cap. Returns the LRs tried per batch size."""
    lrs: dict[int, set] = {}
    reached_any = False
    for r in searched:
        lrs.setdefault(int(r.data.params["data.global_batch_size"]), set()).add(float(r.data.params["optim.base_lr"]))
        accs = [p.value for p in sorted(client.get_metric_history(r.info.run_id, "val_acc"), key=lambda p: p.step)]
        first = next((i for i, a in enumerate(accs) if a >= target - 1e-12), None)
        if first is None:  # never there: it used its whole cap
            assert len(accs) == CAP_EPOCHS and r.data.tags["status"] == "completed", (accs, target)
        else:  # stopped at the first epoch that reached it (or ended there, at its last epoch)
            reached_any = True
            assert len(accs) == first + 1, (accs, target)
            if first + 1 < CAP_EPOCHS:
                assert r.data.tags["status"] == "stopped_early"
                assert r.data.tags["reason"].startswith("reached the target val_acc")
    assert reached_any, "no searched trial reached the target: the test proves nothing"
    return lrs


def test_time_to_target_study_stops_at_the_target_and_compares_the_tuned_lr(local_ray, tmp_path):
    report, client, runs = run_study_dict(_raw(), tmp_path)
    study = report["study"]
    assert len(runs) == 5  # the baseline + 2 batches x 2 LRs
    (base,) = [r for r in runs if r.data.params["arm"] == "baseline"]
    assert len(client.get_metric_history(base.info.run_id, "val_acc")) == 3  # its own budget, never stopped
    target = base.data.metrics["best_val_acc"] - 0.02
    tt = report["time_to_target"]
    assert abs(tt["value"] - target) < 1e-9

    searched = [r for r in runs if r.data.params["arm"] == "search"]
    lrs = _check_stops(client, searched, target)
    assert all(len(v) == 2 for v in lrs.values()) and lrs[128] != lrs[256]  # 2 draws per batch, per batch

    rows = {p["global_batch_size"]: p for p in tt["per_batch"]}
    assert rows[32]["steps_to_target"] == tt["baseline_steps"] and tt["baseline_steps"] > 0
    for p in tt["per_batch"]:
        if p["steps_to_target"] is not None:
            assert p["examples_to_target"] == p["steps_to_target"] * p["global_batch_size"]
    rec = report["recommended"]
    assert rec["chosen_by"] == "time_to_target" and rec["time_to_target_s"] is not None
    parent = client.get_run(study["parent_run_id"]).data.metrics  # the headline on the study's MLflow run
    assert abs(parent["target_value"] - tt["value"]) < 1e-9
    assert parent["recommended_global_batch_size"] == rec["global_batch_size"]
    assert abs(parent["recommended_time_to_target_s"] - rec["time_to_target_s"]) < 1e-9
    # the LR section compares each batch size's tuned LR with the rules' predictions from the baseline's 0.05
    sec = report["lr_per_batch"]
    assert sec is not None and {row["global_batch_size"] for row in sec["rows"]} == {128, 256}
    for row in sec["rows"]:
        assert abs(row["predicted_linear"] - 0.05 * row["global_batch_size"] / 32) < 1e-12
        assert row["tuned_lr"] in lrs[row["global_batch_size"]]
    md = (tmp_path / "runs").rglob("report.md")
    text = next(md).read_text()
    assert "Time to the baseline's quality: val_acc >=" in text

    # --extend with a new batch size: no baseline runs, the finished one sets the target, the new trials stop at it
    raw = _raw()
    raw["search"]["data.global_batch_size"] = {"grid": [64, 128, 256]}
    before = {r.info.run_id for r in runs}
    extended, _, after = run_study_dict(raw, tmp_path, extend=True)
    assert extended["study"]["parent_run_id"] == study["parent_run_id"]
    new = [r for r in after if r.info.run_id not in before]
    assert {int(r.data.params["data.global_batch_size"]) for r in new} == {64} and len(new) == 2
    _check_stops(client, new, target)
