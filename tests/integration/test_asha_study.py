"""ASHA on a real local Ray and MLflow (digits, in-process trials, one at a time so the order is the searcher's):
the baseline trains to its budget and sets no cutoff; searched trials compete with each other at equal epochs.

The first searched trial is behind the baseline at the first rung (a large batch after a few steps): Tune's own ASHA
would cut it there, because the baseline's value is in the rung's record. Here it has no searched rival yet, so it
trains to its budget; the second, far worse, is cut at the first rung (tune/asha.py)."""
from __future__ import annotations

from studies import run_study_dict

EPOCHS = 6


def _raw() -> dict:
    return {
        "name": "it-asha",
        "base": {"data": {"dataset": "digits", "global_batch_size": 256},
                 "model": {"name": "mlp", "hidden_sizes": [32]},
                 "optim": {"name": "sgd", "base_lr": 0.05, "base_batch_size": 256, "momentum": 0.9},
                 "budget": {"epochs": EPOCHS}},
        "search": {"optim.base_lr": {"grid": [0.2, 0.0002]}},
        "tuner": {"searcher": "grid", "scheduler": "asha", "grace_period_epochs": 1, "reduction_factor": 2,
                  "workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent": 1, "profile": False},
        "baseline": {"data.global_batch_size": 16, "optim.base_lr": 0.05, "optim.base_batch_size": 16},
    }


def test_asha_keeps_the_baseline_out_of_its_rungs(local_ray, tmp_path):
    _, client, runs = run_study_dict(_raw(), tmp_path)

    def curve(r) -> list[float]:
        return [p.value for p in sorted(client.get_metric_history(r.info.run_id, "val_acc"), key=lambda p: p.step)]

    (base,) = [r for r in runs if r.data.params["arm"] == "baseline"]
    by_lr = {float(r.data.params["optim.base_lr"]): r for r in runs if r.data.params["arm"] == "search"}
    good, bad = by_lr[0.2], by_lr[0.0002]
    assert len(curve(base)) == EPOCHS and base.data.tags["status"] == "completed"
    # the premise: at the first rung the baseline was ahead, so a rung that recorded it would have cut `good`
    assert curve(good)[0] < curve(base)[0], (curve(good), curve(base))
    assert len(curve(good)) == EPOCHS and good.data.tags["status"] == "completed"
    assert len(curve(bad)) == 1 and bad.data.tags["status"] == "stopped_early"
    assert curve(bad)[0] < curve(good)[0]
