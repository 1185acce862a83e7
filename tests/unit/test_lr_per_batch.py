"""The LR re-tuned per batch size: `per_batch` draws (config/search.py, tune/searchers.py) and the report's comparison
of the tuned LR with the linear and sqrt predictions (report/lr.py)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from largebatch.config import load_study
from largebatch.errors import BadInput
from largebatch.report import build_report, write_report
from largebatch.tune.searchers import grid_points

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "tune_spaces" / "fashion-mnist.yaml"
LR_STUDY = REPO / "tune_spaces" / "fashion-mnist-lr.yaml"


def _study(**search):
    return load_study(MAIN, {f"search.{k}": v for k, v in search.items()})


def test_each_batch_gets_its_own_stratified_draws_shared_across_rules_and_warmups():
    s = _study(**{"optim.base_lr": {"loguniform": [0.01, 3.0], "per_batch": 4}})
    points = grid_points(s)
    assert len(points) == 3 * 3 * 2 * 4  # batches x rules x warmups x draws
    by_batch: dict[int, set] = {}
    for p in points:
        by_batch.setdefault(p["data.global_batch_size"], set()).add(p["optim.base_lr"])
    for batch, lrs in by_batch.items():
        assert len(lrs) == 4  # the same 4 draws for every rule and warmup at this batch
        # one draw in each quarter of [log 0.01, log 3]
        edges = [math.exp(math.log(0.01) + i / 4 * (math.log(3.0) - math.log(0.01))) for i in range(5)]
        for lr, lo, hi in zip(sorted(lrs), edges, edges[1:]):
            assert lo * 0.995 <= lr <= hi * 1.005, (batch, lr, lo, hi)  # 3 significant digits
    assert len({frozenset(v) for v in by_batch.values()}) == 3  # different batches, different draws
    assert grid_points(s) == points  # deterministic
    other_seed = load_study(MAIN, {"search.optim.base_lr": {"loguniform": [0.01, 3.0], "per_batch": 4}, "seed": 1})
    assert grid_points(other_seed) != points


def test_two_per_batch_entries_combine_like_grid_entries():
    s = _study(**{"optim.base_lr": {"loguniform": [0.01, 3.0], "per_batch": 3},
                  "optim.momentum": {"uniform": [0.5, 0.95], "per_batch": 2},
                  "scaling.rule": {"grid": ["none"]}, "schedule.warmup_epochs": {"grid": [0]}})
    points = grid_points(s)
    assert len(points) == 3 * 3 * 2
    assert all(0.5 <= p["optim.momentum"] <= 0.95 for p in points)


@pytest.mark.parametrize("entry, message", [
    ({"loguniform": [0.01, 1.0], "per_batch": 101}, "1 to 100"),
    ({"loguniform": [0.01, 1.0], "per_batch": 2.5}, "whole number"),
    ({"choice": [0.1, 0.2], "per_batch": 2}, "sampled range"),
    ({"loguniform": [1.0, 0.01], "per_batch": 2}, "low < high"),
])
def test_bad_per_batch_entries(entry, message):
    with pytest.raises(BadInput, match=message):
        _study(**{"optim.base_lr": entry})


def test_the_lr_study_expands_to_its_grid():
    s = load_study(LR_STUDY)
    assert len(grid_points(s)) == 3 * 2 * 4
    assert s.base.budget.stop_at_target and s.baseline["budget.epochs"] == 10


# ------------------------------------------------------------------------------------- the report section
def _rec(batch, lr, accs, *, baseline=False):
    per_epoch = 60000 // batch
    return {"trial_id": f"t{batch}-{lr}", "is_baseline": baseline, "global_batch_size": batch, "rule": "none",
            "warmup_epochs": 0.0, "optimizer": "sgd", "base_lr": lr, "peak_lr": lr, "seed": 0, "status": "completed",
            "reason": None, "best_val_acc": max(accs), "wall_s": float(len(accs)), "steps": per_epoch * len(accs),
            "history": [{"val_acc": a, "steps": per_epoch * (e + 1), "wall_s": float(e + 1)}
                        for e, a in enumerate(accs)]}


def lr_study():
    return [
        _rec(16, 0.01, [0.85, 0.88, 0.895, 0.90], baseline=True),
        # B=256: lr 0.05 reaches 0.895 at epoch 3, 0.16 (the linear prediction) at epoch 2, 0.5 never
        _rec(256, 0.05, [0.80, 0.88, 0.896]), _rec(256, 0.16, [0.85, 0.897]), _rec(256, 0.5, [0.70, 0.80]),
        # B=4096: only lr 1.0 reaches it (linear predicts 2.56, sqrt 0.16)
        _rec(4096, 0.2, [0.6, 0.7, 0.8]), _rec(4096, 1.0, [0.7, 0.85, 0.9]), _rec(4096, 3.0, [0.5, 0.6, 0.6]),
        {**_rec(4096, 10.0, [0.1]), "status": "diverged", "best_val_acc": None, "history": []},
    ]


def test_tuned_lr_against_the_rules_predictions():
    r = build_report(lr_study(), tolerance=0.5)
    sec = r["lr_per_batch"]
    assert (sec["baseline_batch"], sec["baseline_lr"]) == (16, 0.01)
    rows = {x["global_batch_size"]: x for x in sec["rows"]}
    assert rows[256]["tuned_lr"] == 0.16 and rows[256]["chosen_by"] == "time_to_target"
    assert rows[256]["predicted_linear"] == pytest.approx(0.16) and rows[256]["tuned_over_linear"] == pytest.approx(1)
    assert rows[256]["reaching_lr_range"] == [0.05, 0.16]
    assert rows[4096]["tuned_lr"] == 1.0
    assert rows[4096]["tuned_over_linear"] == pytest.approx(1.0 / 2.56)
    assert rows[4096]["tuned_over_sqrt"] == pytest.approx(1.0 / 0.16)
    assert rows[4096]["diverged_lrs"] == [10.0] and rows[256]["diverged_lrs"] == []
    assert r["recommended"]["global_batch_size"] == 256  # measured basis: 2 s of wall-clock vs 3 s at B=4096


def test_lr_section_is_absent_without_an_lr_search_and_drawn_with_one(tmp_path):
    single = [x for x in lr_study() if x["base_lr"] in (0.01, 0.16, 1.0)]
    assert build_report(single, tolerance=0.5)["lr_per_batch"] is None
    r = build_report(lr_study(), tolerance=0.5)
    paths = {p.name for p in write_report(r, lr_study(), tmp_path)}
    assert "lr_vs_batch.png" in paths
    md = (tmp_path / "report.md").read_text()
    assert "## LR per batch size (re-tuned) vs the scaling rules" in md and "| 4096 | 3 | 1 |" in md and "| 10 |" in md


def test_a_plot_that_fails_is_skipped_with_a_warning_not_the_report(tmp_path, capsys):
    r = build_report(lr_study(), tolerance=0.5)
    r["lr_per_batch"]["rows"][0]["lrs"] = [("not", "a", "dict")]  # a plot bug must not lose the study's end
    paths = {p.name for p in write_report(r, lr_study(), tmp_path)}
    assert "lr_vs_batch.png" not in paths and "report.json" in paths and "learning_curves.png" in paths
    assert "warning: plot lr_vs_batch.png not drawn: TypeError" in capsys.readouterr().out
