"""The report's first screen (report/verdict.py): the answer, the study's cost in baseline runs, the payback.

Reuses test_time_to_target's synthetic study: the baseline (B=16, 37,500 steps over 10 epochs at 1 ms a step) and
three searched recipes; costs are computed here by hand from steps x the profiled step time.
"""
from __future__ import annotations

import math

import pytest

from largebatch.report import build_report, format_markdown, format_table
from largebatch.report.verdict import seconds
from tests.unit.test_time_to_target import PROFILE, STEP_S, rec, study


def _hand_cost(records):
    return sum(r["steps"] * STEP_S[r["global_batch_size"]] for r in records)


def test_cost_is_every_trials_projected_training_in_baseline_runs():
    recs = study()
    r = build_report(recs, tolerance=0.5, profile=PROFILE)
    s = r["study"]
    baseline_run = 37500 * 0.001
    assert s["baseline_run_s"] == pytest.approx(baseline_run)
    assert s["cost_training_s"] == pytest.approx(_hand_cost(recs))
    assert s["cost_baseline_runs"] == pytest.approx(_hand_cost(recs) / baseline_run)
    # measured wall-clock: 9 s per baseline epoch, 1 s per epoch for the others
    assert s["cost_wall_baseline_runs"] == pytest.approx((90 + 10 + 10 + 10) / 90)


def test_payback_is_the_cost_over_one_trainings_saving_rounded_up():
    recs = study()
    r = build_report(recs, tolerance=0.5, profile=PROFILE)
    saving = 5 * 3750 * 0.001 - 4 * 234 * 0.004  # baseline's time to target - B=256 linear's
    assert r["study"]["saving_per_training_s"] == pytest.approx(saving)
    assert r["study"]["payback_trainings"] == math.ceil(_hand_cost(recs) / saving)


def test_first_three_lines_answer_cost_payback():
    r = build_report(study(), tolerance=0.5, profile=PROFILE)
    first = format_table(r).splitlines()[:3]
    assert first[0] == ("Answer: train at B=256 with the linear rule, no warmup, sgd (peak LR 0.16): the baseline's "
                        "quality (val_acc >= 89.50%) in 936 steps, 3.74 s projected, 5.01x sooner than the baseline "
                        "(18.8 s).")
    assert first[1].startswith(f"Cost: this study trained {r['study']['cost_baseline_runs']:.2f} baseline runs")
    assert first[2].startswith(f"Payback: the study pays for itself after {r['study']['payback_trainings']} ")
    md = format_markdown(r).splitlines()
    assert md[0] == "# largebatch report" and md[2].startswith("Answer: train at B=256")


def test_keep_the_baseline_when_nothing_larger_is_sooner():
    # the searched recipes never get within the tolerance: the answer is the baseline, said plainly
    recs = [study()[0], rec(1024, "none", [0.60, 0.70, 0.75, 0.78, 0.80, 0.81, 0.82, 0.83, 0.835, 0.84])]
    r = build_report(recs, tolerance=0.5, profile=PROFILE)
    assert r["recommended"]["is_baseline"]
    assert r["study"]["payback_trainings"] is None
    text = format_table(r)
    lines = text.splitlines()
    assert lines[0].startswith("Answer: keep the baseline (B=16, none rule, sgd, base LR 0.01)")
    assert lines[2] == "Payback: none: the answer is the baseline you already have."
    assert "- recommended (keep the baseline): B=16" in text


def test_no_baseline_result_is_no_answer():
    recs = [rec(16, "none", [0.1] * 3, baseline=True, status="failed"), rec(256, "linear", [0.8, 0.85, 0.86])]
    r = build_report(recs, tolerance=0.5, profile=PROFILE)
    first = format_table(r).splitlines()
    assert first[0].startswith("Answer: none. The baseline has no result")
    assert first[1] == "Cost: unknown (no baseline run to measure it by)."


def test_seconds_keep_enough_digits_for_fast_tasks():
    assert [seconds(x) for x in (0.01234, 0.5, 3.914, 41.26, 1234.4)] == ["0.0123", "0.5", "3.91", "41.3", "1234"]
    assert seconds(None) == "-" and seconds(float("nan")) == "-"


def test_fast_task_table_shows_no_wall_of_zeros():
    fast = {"status": "measured", "entries": [{"global_batch_size": b, "step_s": s / 1000, "examples_per_s": 1}
                                              for b, s in STEP_S.items()]}
    text = format_table(build_report(study(), tolerance=0.5, profile=fast))
    assert "0.0187" in text  # the baseline's 18,750 steps to target at 1 us a step, not "0.0"
    assert "| 0.0 " not in text


def test_metric_neutral_names_beside_the_old_ones():
    r = build_report(study(), tolerance=0.5, profile=PROFILE)
    for row in [r["baseline"], r["recommended"], *r["configs"], *r["per_batch"]]:
        assert row["value_mean"] == row["acc_mean"]
    for row in r["per_batch"]:
        assert row["gap"] == row["gap_points"] and row["noscale_value"] == row["noscale_acc"]


def test_lr_comparison_only_from_recipes_that_reached_the_target():
    # two LRs drawn at B=1024, neither reaches the target: no "tuned LR = x times the linear rule's" sentence
    never = [0.60, 0.70, 0.75, 0.78, 0.80, 0.81, 0.82, 0.83, 0.835, 0.84]
    recs = [study()[0], rec(1024, "none", never, base_lr=0.02), rec(1024, "none", never, base_lr=0.05)]
    r = build_report(recs, tolerance=0.5, profile=PROFILE)
    row = r["lr_per_batch"]["rows"][0]
    assert row["tuned_lr"] is None and row["tuned_over_linear"] is None and row["chosen_by"] == "none reached"
    text = format_table(r)
    assert "none of the 2 LRs tried (0.02 to 0.05) reached the target" in text and "x the linear rule's" not in text
    # one of three reaches it: the comparison names the draws around it (how coarse the search was)
    reach = [0.80, 0.85, 0.88, 0.896, 0.897, 0.898, 0.899, 0.899, 0.899, 0.899]
    recs.append(rec(1024, "none", reach, base_lr=0.1))
    r = build_report(recs, tolerance=0.5, profile=PROFILE)
    row = r["lr_per_batch"]["rows"][0]
    assert row["tuned_lr"] == pytest.approx(0.1) and row["neighbours"] == [pytest.approx(0.05), None]
    assert "(3 LRs tried; the nearest LRs tried: 0.05, at the edge of the LRs tried)" in format_table(r)


def test_a_study_without_verdict_answers_none_with_the_cause():
    r = build_report(study(), tolerance=0.5, profile=PROFILE)
    r["study"]["no_verdict"] = "no verdict: all 3 searched trials failed; the first, B=256: ValueError: x"
    assert format_table(r).splitlines()[0] == ("Answer: none. no verdict: all 3 searched trials failed; the first, "
                                               "B=256: ValueError: x")


def test_the_input_pipelines_share_is_said_where_it_is_large():
    heavy = {"status": "measured", "entries": [{"global_batch_size": b, "step_s": s, "examples_per_s": b / s,
                                                "input_share": 0.8 if b == 1024 else 0.1}
                                               for b, s in STEP_S.items()]}
    text = format_table(build_report(study(), tolerance=0.5, profile=heavy))
    assert "- note: the step times include the input pipeline, which takes 80% at B=1024 of the step" in text
    assert "input pipeline" not in format_table(build_report(study(), tolerance=0.5, profile=PROFILE))


def test_a_budgeted_study_says_its_budget_on_the_cost_line():
    r = build_report(study(), tolerance=0.5, profile=PROFILE)
    r["study"]["budget"] = {"budget_runs": 3.0, "budget_reached": False, "not_started": ["x", "y"],
                            "stopped": {"reached the target": 2, "cannot beat": 4, "the study's budget": 0}}
    cost = format_table(r).splitlines()[1]
    assert cost.endswith(", within its budget of 3 baseline runs (4 could not beat the soonest recipe; 2 not started).")


def test_the_wallclock_plots_star_sits_on_the_front_it_draws(tmp_path, monkeypatch):
    # the recommendation is the soonest to the target: its star is where it reaches the target, and the front drawn
    # holds that point (it once starred the whole run, off the front of whole runs)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.axes

    from largebatch.report import plots as report_plots

    stars, lines = [], []
    real_scatter, real_plot = matplotlib.axes.Axes.scatter, matplotlib.axes.Axes.plot

    def scatter(self, x, y, *a, **kw):
        if kw.get("marker") == "*":
            stars.append((list(x), list(y), kw.get("label")))
        return real_scatter(self, x, y, *a, **kw)

    def plot(self, x, y, *a, **kw):
        lines.append((list(x), list(y), kw.get("label")))
        return real_plot(self, x, y, *a, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", scatter)
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    r = build_report(study(), tolerance=0.5, profile=PROFILE)
    assert r["recommended"]["chosen_by"] == "time_to_target"
    assert report_plots.plot_acc_vs_wallclock(r, tmp_path / "p.png").exists()
    [(sx, sy, label)] = stars
    assert label == "recommended: reaches the target at 3.74 s"
    front = [ln for ln in lines if (ln[2] or "").startswith("Pareto front")]
    assert len(front) == 1 and (sx[0], sy[0]) in list(zip(front[0][0], front[0][1]))


def test_the_drawn_front_drops_the_runs_the_target_point_dominates():
    from largebatch.report.plots import front_with

    runs = [(1.0, 0.80), (3.0, 0.85), (5.0, 0.90)]
    assert front_with(runs, (2.0, 0.86), maxing=True) == [(1.0, 0.80), (2.0, 0.86), (5.0, 0.90)]
    assert front_with(runs, None, maxing=True) == runs
    losses = [(1.0, 0.9), (3.0, 0.5), (5.0, 0.3)]
    assert front_with(losses, (2.0, 0.5), maxing=False) == [(1.0, 0.9), (2.0, 0.5), (5.0, 0.3)]
