"""Report: gap table, max safe batch, Pareto front, recommendation, files.

The synthetic study reproduces docs/design.md §1 (Fashion-MNIST, MLP, SGD momentum): baseline B=16 89.8% in 94 s;
B=1024 unscaled 83.7% in 11 s; B=1024 linear without warmup diverges; B=1024 linear with 2-epoch warmup 88.6%.
"""
from __future__ import annotations

import json
import math
import random
import statistics

import pytest

from largebatch.errors import BadInput
from largebatch.report import build_report, format_table, write_report


def _history(acc: float, wall: float, epochs: int = 4) -> list[dict]:
    return [
        {"epoch": e, "val_acc": acc * (0.8 + 0.2 * e / epochs), "train_loss": 1.0 / e, "wall_s": wall * e / epochs}
        for e in range(1, epochs + 1)
    ]


def trial(batch, rule, warmup, seed, *, acc=None, wall=None, status="completed", reason=None, peak_lr=None,
          baseline=False, steps=None, optimizer="sgd", base_lr=0.01, history=True):
    scale = {"none": 1.0, "linear": batch / 16, "sqrt": math.sqrt(batch / 16)}.get(rule, 1.0)
    return {
        "trial_id": f"t-{batch}-{rule}-{warmup:g}-{optimizer}-{base_lr:g}-s{seed}",
        "name": f"B={batch} {rule} warmup={warmup:g}ep",
        "is_baseline": baseline,
        "global_batch_size": batch,
        "rule": rule,
        "warmup_epochs": warmup,
        "optimizer": optimizer,
        "base_lr": base_lr,
        "peak_lr": peak_lr if peak_lr is not None else base_lr * scale,
        "seed": seed,
        "status": status,
        "reason": reason,
        "best_val_acc": acc,
        "final_val_acc": None if acc is None else acc - 0.002,
        "wall_s": wall,
        "startup_s": 13.0,
        "steps": steps if steps is not None else (60000 // batch) * 10,
        "history": _history(acc, wall) if history and acc is not None and wall is not None else [],
    }


def design_study() -> list[dict]:
    return [
        # baseline, 3 seeds: mean 89.8%, 94 s
        trial(16, "none", 0, 0, acc=0.897, wall=93.0, baseline=True),
        trial(16, "none", 0, 1, acc=0.898, wall=94.0, baseline=True),
        trial(16, "none", 0, 2, acc=0.899, wall=95.0, baseline=True),
        # B=256
        trial(256, "none", 0, 0, acc=0.880, wall=20.0),
        trial(256, "linear", 0, 0, acc=0.895, wall=21.0),  # 0.3 pts below: safe at tolerance 0.5
        trial(256, "sqrt", 1, 0, acc=0.890, wall=20.5),  # 0.8 pts below: on the front, not safe at 0.5
        trial(256, "sqrt", 2, 0, status="failed", reason="worker OOM"),
        # B=1024
        trial(1024, "none", 0, 0, acc=0.836, wall=11.0),
        trial(1024, "none", 0, 1, acc=0.838, wall=11.0),
        trial(1024, "linear", 0, 0, acc=float("nan"), wall=1.5, status="diverged", reason="non-finite loss"),
        trial(1024, "linear", 0, 1, status="diverged", reason="non-finite loss", wall=1.2),
        trial(1024, "linear", 2, 0, acc=0.885, wall=10.8),
        trial(1024, "linear", 2, 1, acc=0.887, wall=11.2),
    ]


def cfg(report, batch, rule, warmup):
    (row,) = [c for c in report["configs"]
              if (c["global_batch_size"], c["rule"], c["warmup_epochs"]) == (batch, rule, warmup)]
    return row


def per_batch(report, batch):
    (row,) = [p for p in report["per_batch"] if p["global_batch_size"] == batch]
    return row


def test_baseline_is_mean_and_std_over_seeds():
    b = build_report(design_study())["baseline"]
    assert b["global_batch_size"] == 16 and b["n"] == 3
    assert b["acc_mean"] == pytest.approx(0.898)
    assert b["acc_std"] == pytest.approx(statistics.stdev([0.897, 0.898, 0.899]))
    assert b["wall_s_mean"] == pytest.approx(94.0)
    assert b["steps"] == 37500


def test_config_rows_aggregate_seeds_and_exclude_diverged():
    r = build_report(design_study())
    assert len(r["configs"]) == 8  # baseline, 4 at B=256 (one failed), 3 at B=1024
    lin2 = cfg(r, 1024, "linear", 2.0)
    assert lin2["n_seeds"] == 2 and lin2["status"] == "completed"
    assert lin2["acc_mean"] == pytest.approx(0.886)
    assert lin2["acc_std"] == pytest.approx(statistics.stdev([0.885, 0.887]))
    assert lin2["wall_s_mean"] == pytest.approx(11.0)
    assert lin2["gap_points"] == pytest.approx(1.2)  # docs/design.md §1: 89.8% vs 88.6%
    assert lin2["speedup"] == pytest.approx(94.0 / 11.0)
    assert lin2["peak_lr"] == pytest.approx(0.64)
    assert lin2["trial_ids"] == sorted(lin2["trial_ids"]) and len(lin2["trial_ids"]) == 2

    lin0 = cfg(r, 1024, "linear", 0.0)
    assert lin0["status"] == "diverged" and lin0["n_diverged"] == 2
    assert lin0["acc_mean"] is None and lin0["gap_points"] is None and lin0["n_seeds"] == 0

    assert cfg(r, 1024, "none", 0.0)["gap_points"] == pytest.approx(6.1)
    assert cfg(r, 256, "sqrt", 2.0)["status"] == "failed"
    assert cfg(r, 16, "none", 0.0)["is_baseline"] is True


def test_partial_divergence_keeps_the_surviving_seeds():
    recs = [trial(16, "none", 0, 0, acc=0.9, wall=10.0, baseline=True),
            trial(512, "linear", 0, 0, acc=0.88, wall=2.0),
            trial(512, "linear", 0, 1, status="diverged", reason="loss > bound", wall=0.5)]
    row = cfg(build_report(recs), 512, "linear", 0.0)
    assert row["status"] == "partial" and row["n_seeds"] == 1 and row["n_diverged"] == 1
    assert row["acc_mean"] == pytest.approx(0.88) and row["acc_std"] == 0.0
    assert row["wall_s_mean"] == pytest.approx(2.0)  # the diverged seed's short run does not flatter the time


def test_per_batch_best_recipe_and_no_scaling_beside_it():
    r = build_report(design_study())
    assert [p["global_batch_size"] for p in r["per_batch"]] == [16, 256, 1024]
    p = per_batch(r, 1024)
    assert (p["rule"], p["warmup_epochs"]) == ("linear", 2.0)
    assert p["acc_mean"] == pytest.approx(0.886) and p["gap_points"] == pytest.approx(1.2)
    assert p["wall_s"] == pytest.approx(11.0) and p["steps"] == 580 and p["n_diverged"] == 2
    assert p["speedup"] == pytest.approx(94.0 / 11.0)
    assert p["noscale_acc"] == pytest.approx(0.837)
    assert p["noscale_gap_points"] == pytest.approx(6.1)
    assert p["gap_closed_points"] == pytest.approx(4.9)
    p256 = per_batch(r, 256)
    assert p256["rule"] == "linear" and p256["noscale_acc"] == pytest.approx(0.880)
    assert p256["gap_closed_points"] == pytest.approx(1.5)


def test_noscale_prefers_same_optimizer_and_base_lr():
    recs = [trial(16, "none", 0, 0, acc=0.9, wall=10.0, baseline=True),
            trial(512, "none", 0, 0, acc=0.87, wall=2.0, optimizer="adamw", base_lr=0.001),
            trial(512, "none", 0, 0, acc=0.85, wall=2.0),
            trial(512, "linear", 1, 0, acc=0.89, wall=2.0)]
    p = per_batch(build_report(recs), 512)
    assert p["optimizer"] == "sgd" and p["noscale_acc"] == pytest.approx(0.85)
    # no rule-none recipe for the best's optimizer: fall back to the best rule-none one
    p = per_batch(build_report([r for r in recs if not (r["optimizer"] == "sgd" and r["rule"] == "none"
                                                        and r["global_batch_size"] == 512)]), 512)
    assert p["noscale_acc"] == pytest.approx(0.87)


@pytest.mark.parametrize("tolerance, safe", [(0.1, 16), (0.5, 256), (2.0, 1024)])
def test_max_safe_batch_depends_on_tolerance(tolerance, safe):
    r = build_report(design_study(), tolerance=tolerance)
    assert r["max_safe_batch"] == safe and r["tolerance"] == tolerance


def _dominates(q, p):
    return (q["wall_s_mean"] <= p["wall_s_mean"] and q["acc_mean"] >= p["acc_mean"]
            and (q["wall_s_mean"] < p["wall_s_mean"] or q["acc_mean"] > p["acc_mean"]))


def _check_front(r):
    front = r["pareto"]
    pts = [c for c in r["configs"] if c["acc_mean"] is not None and c["wall_s_mean"] is not None]
    labels = {c["label"] for c in front}
    assert all(c["status"] != "diverged" for c in front)
    assert [c["wall_s_mean"] for c in front] == sorted(c["wall_s_mean"] for c in front)
    for p in front:
        assert not any(_dominates(q, p) for q in pts), p["label"]
    for p in pts:
        if p["label"] not in labels:
            assert any(_dominates(q, p) for q in front), p["label"]


def test_pareto_front_of_the_design_study():
    r = build_report(design_study())
    assert [(c["global_batch_size"], c["rule"]) for c in r["pareto"]] == [
        (1024, "linear"), (256, "sqrt"), (256, "linear"), (16, "none")]
    _check_front(r)


@pytest.mark.parametrize("seed", range(5))
def test_pareto_front_random_studies(seed):
    rng = random.Random(seed)
    recs = [trial(16, "none", 0, 0, acc=0.9, wall=100.0, baseline=True)]
    for i in range(30):
        batch = rng.choice([32, 64, 128, 256, 512])
        status = rng.choice(["completed"] * 4 + ["diverged"])
        acc = round(rng.uniform(0.8, 0.91), 3) if status == "completed" else None
        recs.append(trial(batch, rng.choice(["none", "linear", "sqrt"]), float(i), 0, acc=acc,
                          wall=float(rng.choice([5, 10, 20, 40, 80])), status=status))
    _check_front(build_report(recs))


def test_recommended_is_fastest_safe_point_on_the_front():
    rec = build_report(design_study(), tolerance=0.5)["recommended"]
    assert (rec["global_batch_size"], rec["rule"]) == (256, "linear")
    assert rec["speedup"] == pytest.approx(94.0 / 21.0)
    rec = build_report(design_study(), tolerance=2.0)["recommended"]
    assert (rec["global_batch_size"], rec["rule"], rec["warmup_epochs"]) == (1024, "linear", 2.0)
    assert rec["speedup"] == pytest.approx(94.0 / 11.0)


def test_counts_and_failures():
    r = build_report(design_study() + [trial(2048, "linear", 2, 0, status="running")])
    assert r["counts"] == {"total": 14, "completed": 10, "diverged": 2, "stopped_early": 0, "failed": 1,
                           "running": 1}
    assert [(f["status"], f["reason"]) for f in r["failures"]] == [
        ("diverged", "non-finite loss"), ("diverged", "non-finite loss"), ("failed", "worker OOM")]
    assert set(r["failures"][0]) == {"trial_id", "name", "status", "reason"}
    assert per_batch(r, 2048)["acc_mean"] is None


def test_final_val_acc_metric():
    r = build_report(design_study(), metric="final_val_acc")
    assert r["metric"] == "final_val_acc"
    assert r["baseline"]["acc_mean"] == pytest.approx(0.896)


def test_no_baseline_warns_instead_of_crashing():
    recs = [t for t in design_study() if not t["is_baseline"]]
    r = build_report(recs)
    assert r["baseline"] is None and r["warnings"]
    assert r["max_safe_batch"] is None and r["recommended"] is None
    assert all(c["gap_points"] is None and c["speedup"] is None for c in r["configs"])
    assert r["pareto"]  # the front does not need a baseline
    assert "baseline: none" in format_table(r)


def test_baseline_without_a_result_warns():
    recs = [trial(16, "none", 0, 0, status="failed", reason="boom", baseline=True),
            trial(256, "linear", 0, 0, acc=0.9, wall=3.0)]
    r = build_report(recs)
    assert r["baseline"] is None and any("baseline" in w for w in r["warnings"])


def test_report_is_deterministic_and_json_clean():
    recs = design_study()
    shuffled = recs[:]
    random.Random(1).shuffle(shuffled)
    r = build_report(recs)
    assert build_report(shuffled) == r
    assert json.loads(json.dumps(r, allow_nan=False)) == r


@pytest.mark.parametrize("kwargs", [{"metric": "val_loss"}, {"tolerance": -1.0}, {"tolerance": float("nan")}])
def test_bad_arguments_are_bad_input(kwargs):
    with pytest.raises(BadInput):
        build_report(design_study(), **kwargs)


def test_missing_key_names_the_trial():
    rec = trial(16, "none", 0, 0, acc=0.9, wall=1.0)
    del rec["rule"]
    with pytest.raises(BadInput, match="rule"):
        build_report([rec])


def test_format_table_has_each_batch_and_the_summary_lines():
    text = format_table(build_report(design_study()))
    lines = text.splitlines()
    # the first screen answers first (answer, cost, payback: report/verdict.py), then the table
    assert [line.split(":")[0] for line in lines[:3]] == ["Answer", "Cost", "Payback"]
    assert lines[0].startswith("Answer: train at B=256 with the linear rule")
    assert lines[4].startswith("| batch")
    for batch in ("16", "256", "1024"):
        assert any(line.startswith(f"| {batch} ") for line in lines), batch
    assert "88.60% ± 0.14" in text and "+1.20" in text and "83.70%" in text
    assert "max_safe_batch: 256" in text and "recommended: B=256 linear" in text
    assert "diverged=2" in text and "worker OOM" in text


def test_format_table_all_diverged_batch():
    recs = design_study() + [trial(4096, "linear", 0, 0, status="diverged", reason="nan")]
    assert "all 1 diverged" in format_table(build_report(recs))


def test_write_report_writes_json_md_and_plots(tmp_path):
    recs = design_study()
    r = build_report(recs, tolerance=2.0)
    paths = write_report(r, recs, tmp_path / "out")
    names = {p.name for p in paths}
    assert names == {"report.json", "report.md", "val_acc_vs_batch.png", "val_acc_vs_wallclock.png",
                     "learning_curves.png", "time_and_acc_vs_batch.png"}
    for p in paths:
        assert p.exists() and p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == r
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.startswith("# ") and "Pareto" in md and "| 1024" in md and "non-finite loss" in md


@pytest.mark.parametrize("recs", [
    [],
    [trial(1024, "linear", 0, 0, status="diverged", reason="nan", wall=1.0)],
    [trial(16, "none", 0, 0, acc=0.9, wall=10.0, baseline=True, history=False)],
], ids=["empty", "diverged-only", "no-history"])
def test_write_report_degrades_gracefully(tmp_path, recs):
    r = build_report(recs)
    paths = write_report(r, recs, tmp_path)
    assert {"report.json", "report.md"} <= {p.name for p in paths}
    assert json.loads((tmp_path / "report.json").read_text()) == r
    assert "learning_curves.png" not in {p.name for p in paths}
    if not any(t["status"] == "completed" for t in recs):
        assert not list(tmp_path.glob("*.png"))
