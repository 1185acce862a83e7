"""The report's time-and-accuracy plot (report/plots.py time_and_acc_points / plot_time_and_acc_vs_batch): time to
the baseline's quality normalised by the baseline's, and the final accuracy, per optimizer over the batch size."""
from __future__ import annotations

import pytest

from largebatch.report import build_report, write_report
from largebatch.report.plots import plot_time_and_acc_vs_batch, time_and_acc_points


def rec(batch, optimizer, accs, epoch_s, *, baseline=False, final=None, train=4096):
    """A trial record whose val_acc per epoch is `accs`, each epoch taking epoch_s seconds."""
    spe = train // batch
    history = [{"epoch": e, "val_acc": a, "steps": e * spe, "wall_s": e * epoch_s, "train_loss": 1.0 / e}
               for e, a in enumerate(accs, 1)]
    return {"trial_id": f"t-{batch}-{optimizer}", "name": f"B={batch} {optimizer}", "is_baseline": baseline,
            "global_batch_size": batch, "rule": "sqrt", "warmup_epochs": 0.0, "optimizer": optimizer,
            "base_lr": 0.01, "peak_lr": 0.01, "seed": 0, "status": "completed", "reason": None,
            "best_val_acc": max(accs), "final_val_acc": accs[-1] if final is None else final,
            "wall_s": len(accs) * epoch_s, "startup_s": 1.0, "steps": len(accs) * spe, "history": history}


def study():
    return [
        rec(16, "sgd", [0.70, 0.80, 0.84], 10.0, baseline=True),  # best 0.84: target 0.835, reached at 30 s
        rec(256, "sgd", [0.60, 0.75, 0.836, 0.85], 3.0),  # reached at epoch 3: 9 s
        rec(4096, "sgd", [0.30, 0.50], 2.0),  # never
        rec(4096, "rprop", [0.50, 0.70, 0.84], 2.5),  # at epoch 3: 7.5 s
        rec(4096, "rmsprop", [0.40, 0.60], 2.5, final=0.55),
    ]


def test_points_are_time_over_the_baselines_and_final_accuracy():
    recs = study()
    report = build_report(recs, tolerance=0.5)
    assert report["baseline"]["time_to_target_s"] == pytest.approx(30.0)
    pts = time_and_acc_points(report, recs)
    assert set(pts) == {"sgd", "rprop", "rmsprop"}
    assert pts["sgd"] == [(256, pytest.approx(9.0 / 30.0), 0.85), (4096, None, 0.50)]
    assert pts["rprop"] == [(4096, pytest.approx(7.5 / 30.0), 0.84)]
    assert pts["rmsprop"] == [(4096, None, 0.55)]  # the final value, not the best


def test_the_soonest_recipe_speaks_for_its_batch():
    recs = study() + [{**rec(256, "sgd", [0.80, 0.85], 3.0), "trial_id": "fast", "base_lr": 0.05}]
    pts = time_and_acc_points(build_report(recs, tolerance=0.5), recs)
    assert pts["sgd"][0] == (256, pytest.approx(6.0 / 30.0), 0.85)


def test_plot_is_drawn_by_every_report_and_skipped_without_searched_trials(tmp_path):
    recs = study()
    paths = write_report(build_report(recs, tolerance=0.5), recs, tmp_path)
    png = tmp_path / "time_and_acc_vs_batch.png"
    assert png in paths and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    only_baseline = recs[:1]
    assert plot_time_and_acc_vs_batch(build_report(only_baseline), only_baseline, tmp_path / "x.png") is None
