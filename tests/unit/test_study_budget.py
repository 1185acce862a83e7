"""The study's budget (tuner.budget_runs, tune/stopper.py): spend in baseline runs of projected training, trials
that cannot beat the soonest recipe found, and the searcher's gate. Fake results, no Ray cluster."""
from __future__ import annotations

from pathlib import Path

import pytest

from largebatch.config import baseline_trial, load_study
from largebatch.errors import BadInput

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "tune_spaces" / "fashion-mnist.yaml"
GRID = REPO / "tune_spaces" / "fashion-mnist-grid.yaml"
# ms per step per batch, as a profile gives them (README's demo profile)
STEP_S = {16: 0.00051, 256: 0.0034, 1024: 0.0124, 4096: 0.0457}
PROFILE = {"status": "measured", "entries": [{"global_batch_size": b, "step_s": s} for b, s in STEP_S.items()]}


def runtime_of(study):
    """The StudyRuntime the driver builds, without Ray or MLflow (the training-set size given, no data loaded)."""
    from largebatch.tune.runtime import StudyRuntime

    return StudyRuntime(base_tree=study.base.model_dump(mode="json"),
                        baseline_tree=baseline_trial(study, "test").model_dump(mode="json"), source="test",
                        seeds=tuple(study.tuner.seeds), workers_per_trial=1, cpus_per_worker=1, use_gpu=False,
                        max_failures=0, train_sizes={0: 60000}, tracking_uri="sqlite:///unused", experiment_id="0",
                        parent_run_id="p", run_name="r", storage_path="/unused")


def planned(budget_runs=3.0, sets=None):
    from largebatch.tune.stopper import create_stopper

    study = load_study(DEMO, {"tuner.budget_runs": budget_runs, **(sets or {})})
    stopper = create_stopper(study)
    stopper.plan(PROFILE, runtime_of(study))
    return stopper


def res(arm, batch, steps, acc, *, final=False, best=None, rule="sqrt", warmup=0):
    return {"config": {"arm": arm, "seed": 0, "overrides": {} if arm == "baseline" else {
        "data.global_batch_size": batch, "scaling.rule": rule, "schedule.warmup_epochs": warmup}},
        "global_batch_size": batch, "steps": steps, "val_acc": acc, "best_val_acc": best or acc, "is_final": final}


def test_the_unit_is_the_baselines_projected_full_run():
    s = planned()
    # 60000 // 16 = 3750 steps an epoch, 10 epochs
    assert s.unit == pytest.approx(37500 * STEP_S[16])
    assert s.committed() == pytest.approx(s.unit)  # the baseline is counted whole from the start


def test_a_trial_that_cannot_beat_the_soonest_recipe_stops_before_its_next_evaluation():
    s = planned()
    s("b", res("baseline", 16, 37500, 0.883, final=True))
    assert s.target == pytest.approx(0.878)
    assert s("a", res("search", 256, 234, 0.85)) is False
    assert s("a", res("search", 256, 468, 0.879)) is True  # reached: T* = 468 steps x 3.4 ms
    assert s.best[0] == pytest.approx(468 * STEP_S[256]) and s.best[1] == "B=256 sqrt warmup=0ep"
    # B=1024: 58 steps (0.72 s) an epoch; after its first, the next evaluation (1.44 s) still comes before T*
    assert s("c", res("search", 1024, 58, 0.80, rule="linear")) is False
    assert s("c", res("search", 1024, 116, 0.84, rule="linear")) is True  # 2.16 s >= T* = 1.59 s
    assert s.stopped["c"].startswith("cannot beat B=256 sqrt warmup=0ep's 1.59 s")
    # a soonest recipe found later, sooner, lowers T*
    assert s("d", res("search", 4096, 14, 0.88, rule="linear", warmup=2)) is True
    assert s.best[0] == pytest.approx(14 * STEP_S[4096])
    acc = s.accounts()
    assert acc["stopped"] == {"reached the target": 2, "cannot beat": 1, "the study's budget": 0}
    assert acc["soonest"]["recipe"] == "B=4096 linear warmup=2ep"


def test_without_a_budget_nothing_is_pruned():
    from largebatch.tune.stopper import create_stopper

    study = load_study(DEMO, {"tuner.budget_runs": None})
    s = create_stopper(study)  # stop_at_target alone
    s.plan(PROFILE, runtime_of(study))
    s("b", res("baseline", 16, 37500, 0.883, final=True))
    assert s("a", res("search", 256, 234, 0.90)) is True
    assert all(s("c", res("search", 1024, 58 * k, 0.80)) is False for k in range(1, 10))


def test_the_budget_stops_running_trials_with_one_epoch_of_each_reserved():
    s = planned(budget_runs=1.5)  # half a baseline run for the search: 9.56 s of projected training
    room = 0.5 * s.unit
    per_epoch = 234 * STEP_S[256]  # 0.80 s
    epochs = 0
    while s("a", res("search", 256, 234 * (epochs + 1), 0.5)) is False:
        epochs += 1
        assert epochs < 100
    # stopped at the first report after which one more epoch would pass the budget
    assert (epochs + 1) * per_epoch <= room + 1e-9 < (epochs + 2) * per_epoch
    assert s.budget_reached and s.stopped["a"].startswith("the study's budget of 1.5 baseline runs was reached")
    assert s.runs_spent() <= 1.5


def test_two_running_trials_each_keep_room_for_the_others_next_epoch():
    s = planned(budget_runs=1.1)  # 1.91 s of search
    assert s("a", res("search", 256, 234, 0.5)) is False  # 0.80 s, next 0.80
    # B=4096's first epoch (0.64 s): 0.80 + 0.64 + both next epochs (1.44) passes 1.91
    assert s("c", res("search", 4096, 14, 0.5)) is True
    assert s.runs_spent() < 1.1


def test_the_gate_skips_what_cannot_beat_and_ends_the_search_when_nothing_fits():
    from largebatch.tune.searchers import grid_points
    from largebatch.tune.space import ListSearcher, WithBaseline

    study = load_study(DEMO, {"tuner.budget_runs": 1.2})
    from largebatch.tune.stopper import create_stopper

    s = create_stopper(study)
    points = grid_points(study)
    searcher = WithBaseline(ListSearcher(points, "val_acc", "max"), {}, [0], "val_acc", "max", total=len(points))
    s.plan(PROFILE, runtime_of(study), searcher)
    assert searcher.gate == s.admit
    assert searcher.suggest("t0")["arm"] == "baseline"
    first = searcher.suggest("t1")
    assert first["overrides"] == points[0]  # sqrt, no warmup, B=256: the likeliest first
    # a recipe already reached the target sooner than one epoch of B=256 (0.80 s) or B=1024 (0.72 s) takes: their
    # points are skipped; one B=4096 epoch (0.64 s) is still sooner
    s.best = (0.7, "B=256 sqrt warmup=0ep")
    nxt = searcher.suggest("t2")
    assert nxt["overrides"] == {**points[0], "data.global_batch_size": 4096}
    assert s.not_started == ["B=1024 sqrt warmup=0ep: its first epoch alone (0.719 s) cannot beat "
                             "B=256 sqrt warmup=0ep's 0.7 s"]
    # the search has all but spent its budget (1.2 runs): what still fits is one B=4096 epoch (0.64 s), not more
    s.best = None
    s.spent["x"] = 0.2 * s.unit - 0.7
    nxt = searcher.suggest("t3")
    assert nxt["overrides"]["data.global_batch_size"] == 4096, nxt
    assert s.budget_reached and s.not_started[-2:] == [
        "B=256 sqrt warmup=2ep: the budget of 1.2 baseline runs was reached",
        "B=1024 sqrt warmup=2ep: the budget of 1.2 baseline runs was reached"]
    s.spent["x"] = 0.2 * s.unit
    assert searcher.suggest("t4") == searcher.FINISHED  # nothing fits: every other point is skipped
    assert len(s.not_started) == len(points) - 3 and searcher.asked == len(points)


def test_no_profile_no_budget(capsys):
    from largebatch.tune.stopper import create_stopper

    study = load_study(DEMO)
    s = create_stopper(study)
    s.plan({"status": "off", "reason": "trials with 2 workers", "entries": []}, runtime_of(study))
    assert s.budget_runs is None and "not applied" in capsys.readouterr().out
    s("b", res("baseline", 16, 37500, 0.883, final=True))
    assert s("c", res("search", 1024, 58 * 9, 0.80)) is False  # nothing pruned, still stops at the target
    assert s("c", res("search", 1024, 580, 0.88)) is True


@pytest.mark.parametrize("value", [0, -1, "three"])
def test_bad_budget_runs_is_one_line(value):
    with pytest.raises(BadInput) as e:
        load_study(DEMO, {"tuner.budget_runs": value})
    assert "tuner.budget_runs" in str(e.value) and "\n" not in str(e.value)


def test_the_demo_is_budgeted_and_the_grid_is_its_exhaustive_reference():
    from largebatch.tune.searchers import grid_points
    from largebatch.tune.stopper import create_stopper

    demo, grid = load_study(DEMO), load_study(GRID)
    assert demo.tuner.budget_runs == 3 and demo.base.budget.stop_at_target
    assert grid.tuner.budget_runs is None and not grid.base.budget.stop_at_target
    assert create_stopper(grid) is None and create_stopper(demo).budget_runs == 3
    key = lambda p: tuple(sorted(p.items()))  # noqa: E731
    assert sorted(map(key, grid_points(demo))) == sorted(map(key, grid_points(grid)))  # the same space
    assert [p["data.global_batch_size"] for p in grid_points(demo)[:3]] == [256, 1024, 4096]  # batch fastest


def test_epochs_reported_before_the_target_was_known_count_for_the_soonest_recipe():
    s = planned()
    assert s("a", res("search", 1024, 58, 0.85)) is False
    assert s("a", res("search", 1024, 116, 0.879)) is False  # no target yet: it runs on
    assert s("a", res("search", 1024, 580, 0.885, final=True)) is False
    assert s("c", res("search", 256, 234, 0.70, rule="none")) is False
    s("b", res("baseline", 16, 37500, 0.883, final=True))  # target 0.878: trial a got there at 116 steps
    assert s.best == (pytest.approx(116 * STEP_S[1024]), "B=1024 sqrt warmup=0ep")
    assert s("c", res("search", 256, 468, 0.75, rule="none")) is True  # its next epoch would end at 2.39 s > 1.44 s
    assert s.stopped["c"].startswith("cannot beat B=1024 sqrt warmup=0ep's 1.44 s")


def test_with_several_seeds_only_the_budget_applies():
    s = planned(sets={"tuner.seeds": [0, 1]})
    assert s.unit == pytest.approx(37500 * STEP_S[16]) and s.committed() == pytest.approx(2 * s.unit)
    s("b0", res("baseline", 16, 37500, 0.883, final=True))
    s("b1", res("baseline", 16, 37500, 0.883, final=True))
    assert s("a", res("search", 256, 234, 0.88)) is True  # at the target
    # the same recipe's other seed, slower: its mean with the first may still be the soonest; it is not cut
    assert all(s("a1", res("search", 256, 234 * k, 0.80)) is False for k in range(1, 4))
