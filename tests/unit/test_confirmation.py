"""Confirmation on a second seed (issue #26 item 4): a one-seed budgeted study runs its leading recipe once more with
another seed (tune/stopper.py TargetStopper.confirmation, handed out by tune/space.py WithBaseline), and the report
says whether it held (report/verdict.py confirmation). Fake results and records, no Ray cluster."""
from __future__ import annotations

import json

import pytest

from largebatch.config import load_study
from largebatch.report import build_report, format_table
from tests.unit.test_study_budget import DEMO, GRID, PROFILE, STEP_S, planned, runtime_of
from tests.unit.test_time_to_target import PROFILE as R_PROFILE
from tests.unit.test_time_to_target import rec, study

A = {"data.global_batch_size": 256, "scaling.rule": "sqrt", "schedule.warmup_epochs": 0}
C = {"data.global_batch_size": 1024, "scaling.rule": "linear", "schedule.warmup_epochs": 0}
EPOCH = {16: 3750, 256: 234, 1024: 58, 4096: 14}  # steps per epoch of the demo's 60,000 examples


def res(overrides, steps, acc, *, seed=0, final=False, confirms=None, index=None):
    batch = overrides.get("data.global_batch_size", 16)
    config = {"arm": "search" if overrides else "baseline", "seed": seed, "overrides": dict(overrides)}
    if confirms:
        config["confirms"] = confirms
    if index is not None:
        config["index"] = index
    return {"config": config, "global_batch_size": batch, "steps": steps, "val_acc": acc, "best_val_acc": acc,
            "is_final": final}


def baseline(s, reach_epoch=6):
    """The baseline's 10 epochs: 0.883 at the end (target 0.878), first at or above 0.878 at `reach_epoch`."""
    for e in range(1, 11):
        acc = 0.883 if e == 10 else 0.879 if e >= reach_epoch else 0.80
        s("b", res({}, EPOCH[16] * e, acc, final=e == 10))
    assert s.target == pytest.approx(0.878)


def two_leaders(s):
    """B=1024 linear reaches the target at 3 epochs (2.16 s), B=256 sqrt at 2 (1.59 s): B=256 sqrt leads."""
    baseline(s)
    assert s("c", res(C, 58, 0.80, index=1)) is False
    assert s("a", res(A, 234, 0.80, index=2)) is False
    assert s("c", res(C, 116, 0.85, index=1)) is False
    assert s("a", res(A, 468, 0.879, index=2)) is True
    assert s.best == (pytest.approx(468 * STEP_S[256]), "B=256 sqrt warmup=0ep")


def test_the_leader_is_handed_out_again_with_the_next_seed_once_nothing_runs():
    s = planned()
    two_leaders(s)
    assert s.confirmation(waiting=True) == "wait"  # trials still run: the leader may change
    sample = s.confirmation()
    assert sample == {"arm": "search", "overrides": A, "seed": 1, "confirms": "B=256 sqrt warmup=0ep"}
    assert s.confirmation() is None  # one at a time: the first is running
    # not cut on T* (its own recipe's 1.59 s): it reaches the target on its third epoch, later than seed 0
    assert s("a1", res(A, 234, 0.80, seed=1, confirms=sample["confirms"])) is False
    assert s("a1", res(A, 468, 0.87, seed=1, confirms=sample["confirms"])) is False
    assert s("a1", res(A, 702, 0.879, seed=1, confirms=sample["confirms"])) is True
    assert s.stopped["a1"].startswith("reached the target") and "seed 1" in s.stopped["a1"]
    assert s.best[0] == pytest.approx(468 * STEP_S[256])  # the confirmation does not move T*
    (c,) = s.accounts()["confirmations"]
    assert (c["status"], c["seed"], c["recipe"]) == ("reached", 1, "B=256 sqrt warmup=0ep")
    assert c["time_to_target_s"] == pytest.approx(702 * STEP_S[256])
    assert c["first_seed_time_s"] == pytest.approx(468 * STEP_S[256])
    assert s.confirmation() is None and s.confirmation(waiting=True) is None  # confirmed: nothing more
    # it counts in the spend
    assert s.runs_spent() == pytest.approx((s.unit + (468 + 702) * STEP_S[256] + 116 * STEP_S[1024]) / s.unit)


def test_a_tie_to_the_target_confirms_the_recipe_named_soonest_whatever_the_trial_ids():
    """Two recipes reach the target at the same projected time (same batch, same epoch; warmups 0 and 2 epochs): the
    confirmed one is the one the budget line names soonest and the report recommends (label order), not the one
    with the smaller trial id (a make demo run confirmed warmup=2ep while recommending warmup=0ep)."""
    warm = {**A, "schedule.warmup_epochs": 2}
    s = planned()
    baseline(s)
    assert s("a-zzz", res(A, 234, 0.80, index=1)) is False
    assert s("a-aaa", res(warm, 234, 0.80, index=2)) is False
    assert s("a-aaa", res(warm, 468, 0.879, index=2)) is True  # arrives first
    assert s("a-zzz", res(A, 468, 0.879, index=1)) is True
    assert s.best == (pytest.approx(468 * STEP_S[256]), "B=256 sqrt warmup=0ep")
    sample = s.confirmation()
    assert sample is not None and sample["overrides"] == A and sample["confirms"] == "B=256 sqrt warmup=0ep"


def test_a_confirmation_that_cannot_be_sooner_than_the_baseline_stops_and_the_next_recipe_is_confirmed():
    s = planned()
    two_leaders(s)
    assert s("c", res(C, 174, 0.88, index=1)) is True  # 3 epochs, 2.16 s: reached, but later than T*
    first = s.confirmation()
    base_t = 6 * EPOCH[16] * STEP_S[16]  # the baseline reached the target at epoch 6: 11.5 s
    per_epoch = EPOCH[256] * STEP_S[256]
    k = 0
    while s("a1", res(A, EPOCH[256] * (k + 1), 0.85, seed=1, confirms=first["confirms"])) is False:
        k += 1
        assert k < 100
    # stopped at the first epoch after which its next evaluation would come at or after the baseline's time
    assert (k + 1) * per_epoch < base_t <= (k + 2) * per_epoch
    assert s.stopped["a1"].startswith("the confirmation on seed 1 cannot be sooner than the baseline's 11.5 s")
    assert s.accounts()["stopped"]["cannot beat"] == 0  # not counted among the trials cut on T*
    assert s.accounts()["confirmations"][0]["status"] == "missed"
    second = s.confirmation()
    assert second["overrides"] == C and second["seed"] == 1 and second["confirms"] == "B=1024 linear warmup=0ep"
    assert s("c1", res(C, 174, 0.881, seed=1, confirms=second["confirms"])) is True
    assert [c["status"] for c in s.accounts()["confirmations"]] == ["missed", "reached"]
    assert s.confirmation() is None


def test_at_most_two_confirmations_and_a_missed_final_epoch_is_a_miss():
    s = planned()
    two_leaders(s)
    assert s("c", res(C, 174, 0.88, index=1)) is True
    for tid, over in (("a1", A), ("c1", C)):
        sample = s.confirmation()
        assert sample["overrides"] == over
        assert s(tid, res(over, EPOCH[over["data.global_batch_size"]], 0.5, seed=1, confirms=sample["confirms"],
                          final=True)) is False
    assert [c["status"] for c in s.accounts()["confirmations"]] == ["missed", "missed"]
    assert s.confirmation() is None  # MAX_CONFIRMATIONS


def test_the_budget_keeps_the_leaders_time_in_reserve_for_its_confirmation():
    s = planned(budget_runs=1.18)  # 3.44 s of search
    baseline(s)
    assert s("a", res(A, 468, 0.879)) is True  # 1.59 s: T*
    b4096 = {"arm": "search", "overrides": {**A, "data.global_batch_size": 4096}, "seed": 0}
    # one B=4096 epoch (0.64 s) fits what is left (1.85 s), but not with T* kept for the confirmation
    assert s.admit(b4096) == "budget"
    assert s.reserve() == pytest.approx(468 * STEP_S[256])
    s.confirmation()  # the confirmation started: nothing more is kept back
    assert s.reserve() == 0.0 and s.admit(b4096) is None


def test_a_confirmation_that_does_not_fit_the_budget_is_not_started_and_says_why(capsys):
    s = planned(budget_runs=1.1)  # 1.91 s of search
    baseline(s)
    assert s("a", res(A, 468, 0.879)) is True  # 1.59 s; 0.32 s left
    assert s.confirmation(waiting=True) == "wait"
    assert s.confirmation() is None
    (c,) = s.accounts()["confirmations"]
    assert c["status"] == "not started" and "does not fit the budget of 1.1 baseline runs" in c["why"]
    assert "not started" in capsys.readouterr().out


def test_several_seeds_or_no_budget_run_no_confirmation():
    from largebatch.tune.space import create_searcher
    from largebatch.tune.stopper import create_stopper

    two = planned(sets={"tuner.seeds": [0, 1]})
    assert not two.confirms() and two.confirmation() is None
    # the grid (no budget, no stopper) and the demo (budget, one seed): Tune gets room for the confirmations
    demo, grid = load_study(DEMO), load_study(GRID)
    assert create_stopper(grid) is None and create_stopper(demo).confirms()
    n_points = 18  # 3 rules x 2 warmups x 3 batches
    assert create_searcher(grid, {})[1] == n_points + 1
    assert create_searcher(demo, {})[1] == n_points + 1 + 2
    assert create_searcher(load_study(DEMO, {"tuner.seeds": [0, 1]}), {})[1] == 2 * n_points + 2


def test_the_searcher_waits_for_running_trials_then_hands_out_the_confirmation():
    from largebatch.tune.space import ListSearcher, WithBaseline
    from largebatch.tune.stopper import create_stopper

    study = load_study(DEMO)
    s = create_stopper(study)
    searcher = WithBaseline(ListSearcher([A], "val_acc", "max"), {}, [0], "val_acc", "max", total=1)
    s.plan(PROFILE, runtime_of(study), searcher)
    assert searcher.confirm == s.confirmation
    assert searcher.suggest("b")["arm"] == "baseline"
    first = searcher.suggest("a")
    assert first["overrides"] == A and first["seed"] == 0 and first["index"] == 1
    assert searcher.suggest("x") is None  # the search is done but trials run: ask again later
    baseline(s)
    assert s("a", res(A, 468, 0.879, index=1)) is True
    searcher.on_trial_complete("b")
    assert searcher.suggest("x") is None  # "a" has not completed yet
    searcher.on_trial_complete("a")
    conf = searcher.suggest("a1")
    assert conf == {"arm": "search", "overrides": A, "seed": 1, "confirms": "B=256 sqrt warmup=0ep", "index": 2}
    assert searcher.suggest("y") is None  # the confirmation runs
    assert s("a1", res(A, 468, 0.8795, seed=1, confirms=conf["confirms"], index=2)) is True
    searcher.on_trial_complete("a1")
    assert searcher.suggest("z") == searcher.FINISHED


# ---- the report


def confirmed_records(second_accs):
    """test_time_to_target's study with a second seed of B=256 linear (seed 0 reaches 0.895 at epoch 4)."""
    return study() + [rec(256, "linear", second_accs, seed=1)]


def test_the_report_says_confirmed_on_two_seeds_with_the_spread():
    recs = confirmed_records([0.80, 0.85, 0.88, 0.89, 0.896, 0.898, 0.899, 0.899, 0.899, 0.899])  # epoch 5
    r = build_report(recs, tolerance=0.5, profile=R_PROFILE)
    conf = r["recommended"]["confirmation"]
    t0, t1 = 4 * 234 * 0.004, 5 * 234 * 0.004
    assert (conf["status"], conf["reached"], conf["n_seeds"], conf["seeds"]) == ("confirmed", "2/2", 2, [0, 1])
    assert [p["time_to_target_s"] for p in conf["per_seed"]] == pytest.approx([t0, t1])
    assert [p["steps_to_target"] for p in conf["per_seed"]] == [4 * 234, 5 * 234]
    assert conf["time_to_target_mean_s"] == pytest.approx((t0 + t1) / 2)
    assert conf["time_to_target_std_s"] == pytest.approx(abs(t1 - t0) / 2 ** 0.5)
    assert (conf["time_to_target_min_s"], conf["time_to_target_max_s"]) == (pytest.approx(t0), pytest.approx(t1))
    assert r["recommended"]["time_to_target_s"] == pytest.approx((t0 + t1) / 2)  # the mean over seeds
    assert r["recommended"]["time_to_target_std_s"] == pytest.approx(abs(t1 - t0) / 2 ** 0.5)
    text = format_table(r)
    first = text.splitlines()[0]
    assert first.startswith("Answer: train at B=256 with the linear rule")
    assert first.endswith(" Confirmed on 2 seeds (reached the target 2/2, time to target 4.21 ± 0.662 s).")
    assert "- seeds: confirmed, reached the target 2/2: seed 0 3.74 s (936 steps), seed 1 4.68 s (1,170 steps); " \
           "4.21 ± 0.662 s" in text
    back = json.loads(json.dumps(r, allow_nan=False))  # report.json keeps the per-seed values and the spread
    assert back["recommended"]["confirmation"]["per_seed"][1]["seed"] == 1


def test_a_second_seed_that_misses_drops_the_recipe_and_the_answer_says_so():
    recs = confirmed_records([0.80, 0.85, 0.87, 0.88, 0.885, 0.888, 0.889, 0.89, 0.89, 0.89])  # never 0.895
    r = build_report(recs, tolerance=0.5, profile=R_PROFILE)
    b256 = next(c for c in r["configs"] if c["global_batch_size"] == 256)
    assert b256["target_reached"] == "1/2" and b256["time_to_target_s"] is None
    assert [p["reached"] for p in b256["per_seed"]] == [True, False]
    rec_ = r["recommended"]  # the next recipe that reached the target: B=1024 linear, on its one seed
    assert (rec_["global_batch_size"], rec_["rule"]) == (1024, "linear")
    conf = rec_["confirmation"]
    assert (conf["status"], conf["reached"]) == ("unconfirmed", "1/1")
    (miss,) = conf["missed"]
    assert miss["recipe"].startswith("B=256 linear") and miss["reached"] == "1/2"
    assert miss["reached_time_s"] == pytest.approx(4 * 234 * 0.004)
    first = format_table(r).splitlines()[0]
    assert first.startswith("Answer: train at B=1024 with the linear rule")
    assert ("Unconfirmed: B=256 linear warmup=0ep sgd base_lr=0.01 reached the target sooner on its first seed but "
            "missed it on its second (1/2); this one ran on 1 seed.") in first


def test_a_miss_with_nothing_else_reaching_keeps_the_baseline_and_names_the_miss():
    recs = [study()[0], rec(256, "linear", [0.80, 0.85, 0.88, 0.896] + [0.897] * 6),
            rec(256, "linear", [0.80, 0.85, 0.87, 0.88] + [0.885] * 6, seed=1)]
    r = build_report(recs, tolerance=0.5, profile=R_PROFILE)
    assert r["recommended"]["is_baseline"] and r["recommended"]["confirmation"] is None
    first = format_table(r).splitlines()[0]
    assert first.startswith("Answer: keep the baseline")
    assert first.endswith("Not recommended: B=256 linear warmup=0ep sgd base_lr=0.01 reached the target sooner on its "
                          "first seed but missed it on its second (1/2).")


def test_a_budgeted_study_whose_confirmation_did_not_fit_says_unconfirmed():
    r = build_report(study(), tolerance=0.5, profile=R_PROFILE)
    assert r["recommended"]["confirmation"]["status"] == "unconfirmed"
    assert format_table(r).splitlines()[0].endswith("(18.8 s).")  # no budget: one seed is the user's choice
    why = "its expected cost (3.74 s, the first seed's time to the target) does not fit the budget of 3 baseline runs"
    r["study"]["budget"] = {"budget_runs": 3.0, "not_started": [], "stopped": {},
                            "confirmations": [{"recipe": "B=256 linear", "status": "not started", "why": why}]}
    assert format_table(r).splitlines()[0].endswith(f"(18.8 s). Unconfirmed: its second seed was not run: {why}.")


def test_no_curves_no_confirmation():
    recs = [{k: v for k, v in r.items() if k != "history"} for r in study()]  # chosen on the Pareto front
    r = build_report(recs, tolerance=0.5, profile=R_PROFILE)
    assert r["recommended"]["chosen_by"] == "pareto" and r["recommended"]["confirmation"] is None
    assert "- seeds:" not in format_table(r)


def test_the_benchmark_counts_the_runs_whose_recommendation_held_on_its_second_seed():
    from bench import study_cost as sc

    def run(status, reached, missed=()):
        conf = {"status": status, "reached": reached, "seeds": [0, 1], "time_to_target_mean_s": 3.5,
                "time_to_target_std_s": 0.25, "missed": [{"recipe": m} for m in missed]}
        trials = [{"recipe": "B=1024 sqrt", "seed": 1, "status": "reached" if status == "confirmed" else "missed"}]
        return {"cost_runs": 2.9, "recommended": {"global_batch_size": 1024, "rule": "sqrt", "warmup_epochs": 0.0,
                                                  "peak_lr": 0.08, "target_speedup": 8.0},
                "confirmation": sc._confirmation(conf, trials)}

    grid = {"cost_runs": 3.8, "recommended": {"global_batch_size": 1024, "rule": "sqrt", "warmup_epochs": 0.0,
                                              "peak_lr": 0.08, "target_speedup": 8.0}}
    got = {"demo": {"grid": grid, "budgeted": [run("confirmed", "2/2"), run("confirmed", "2/2")]}}
    rows = {r["key"]: r for r in sc.analyse(got, quick=False, repeats=2)["summary"] if r.get("key")}
    assert rows["study_confirmed"]["value"] == 2.0 and rows["study_confirmed"]["met"] is True
    assert rows["study_confirmed"]["measured"] == "2 of 2 (confirmed 2/2, 3.5 ± 0.25 s; confirmed 2/2, 3.5 ± 0.25 s)"
    got["demo"]["budgeted"][1] = run("unconfirmed", "1/1", missed=["B=1024 sqrt"])
    rows = {r["key"]: r for r in sc.analyse(got, quick=False, repeats=2)["summary"] if r.get("key")}
    assert rows["study_confirmed"]["met"] is False and "missed: B=1024 sqrt" in rows["study_confirmed"]["measured"]


def test_the_benchmark_says_when_a_missed_confirmation_left_the_baseline():
    from bench import study_cost as sc

    c = sc._confirmation(None, [{"recipe": "B=128 linear", "seed": 1, "status": "missed"}])
    assert c["status"] == "no recipe recommended"
    assert sc._spread(c) == "no recipe recommended, B=128 linear seed 1 missed"
    assert sc._confirmation(None, []) is None and sc._spread({}) == "no recommendation"
