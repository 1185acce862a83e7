"""The in-process benchmarks (bench/) run end to end at tiny sizes and write well-formed results.

No speed thresholds here: on a shared machine that would be a timed test. The benchmarks' goals are checked by
`make bench`, which writes bench/results/summary.md; this test only proves the harness works and its ratios are
real numbers.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parents[2]
IN_PROCESS = ("loop_overhead", "data_path", "loader_path", "scaling", "check_cost")


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, "-m", "bench.run_all", "--quick", "--no-ray", "--results-dir", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


def test_every_in_process_benchmark_writes_its_json_and_the_summary(results):
    assert sorted(p.stem for p in results.glob("*.json")) == sorted(IN_PROCESS)
    summary = (results / "summary.md").read_text()
    assert summary.startswith("Goals of issue #14")
    assert "| figure | before | goal | measured | met | benchmark |" in summary
    assert "\n| benchmark | figure | goal | measured | met |\n" in summary
    # --no-ray: the loop's goal row is filled, the Ray benchmarks' rows say they did not run
    assert "| loop / hand-written loop, B=32 / 256 / 2048 | 0.88 / 0.96 / 0.94 | >= 0.97 each | " in summary
    assert "| not run | - | - |" in summary
    for name in IN_PROCESS:
        assert f"| {name} (quick) |" in summary
    assert "CPUs (`nproc`)" in summary


@pytest.mark.parametrize("name", IN_PROCESS)
def test_result_fields(results, name):
    r = json.loads((results / f"{name}.json").read_text())
    assert "error" not in r, r.get("traceback")
    assert r["benchmark"] == name and r["quick"] is True
    assert {"nproc", "cpu_model", "torch", "ray"} <= r["machine"].keys()
    assert r["summary"], "a benchmark must report at least one figure"
    for row in r["summary"]:
        assert {"figure", "goal", "measured", "value", "met"} <= row.keys()


def test_loop_overhead_ratios(results):
    r = json.loads((results / "loop_overhead.json").read_text())
    assert [row["global_batch_size"] for row in r["rows"]] == [32, 256, 2048]
    for row in r["rows"]:
        assert _positive_finite(row["ratio_ours_vs_hand"])
        assert _positive_finite(row["ratio_hand_metrics_vs_hand"])
        assert all(_positive_finite(v) for v in row["examples_per_s"].values())
        assert all(_positive_finite(v) for v in row["attribution"]["share_of_hand_step"].values() if v)


def test_data_path_shares(results):
    r = json.loads((results / "data_path.json").read_text())
    assert [row["global_batch_size"] for row in r["rows"]] == [32, 2048]
    for row in r["rows"]:
        for key in ("share_of_step_time", "index_select_share_of_step_time", "collate_share_of_step_time"):
            assert _positive_finite(row[key])
            assert row[key] < 10  # a share of the step time, not seconds: well below 10x the step


def test_scaling_one_worker(results):
    r = json.loads((results / "scaling.json").read_text())
    assert r["two_worker_trials"] is None  # --no-ray
    for row in r["rows"]:
        assert _positive_finite(row["examples_per_s_1w"]) and _positive_finite(row["vs_B16_1w"])
    assert r["rows"][0]["vs_B16_1w"] == 1.0
    assert r["knee_1w"] in [row["global_batch_size"] for row in r["rows"]]


def test_loader_path_shares(results):
    r = json.loads((results / "loader_path.json").read_text())
    assert [row["global_batch_size"] for row in r["rows"]] == [256, 4096]
    for row in r["rows"]:
        assert all(_positive_finite(v) for v in row["seconds"].values())
        assert all(math.isfinite(row[k]) and row[k] < 1 for k in ("share_w0", "share_w1", "share_batched_w0"))


def test_goal_rows_join_their_figures_and_meet_only_if_all_do():
    from bench import common
    from bench.run_all import GOALS, goals_markdown

    payloads = [{"benchmark": "loop_overhead", "quick": False, "summary": [
        common.figure("B=32", 0.99, goal=">= 0.97", met=True, key="loop"),
        common.figure("B=256", 0.95, goal=">= 0.97", met=False, key="loop"),
        common.figure("unrelated", 1.0)]},
        {"benchmark": "epoch_cost", "quick": True, "summary": [
            common.figure("fixed", float("nan"), goal="<= 0.5", met=True, key="epoch_fixed")]}]
    lines = goals_markdown(payloads)
    assert len([ln for ln in lines if ln.startswith("| ") and "---" not in ln]) == len(GOALS) + 1
    loop = next(ln for ln in lines if ln.startswith("| loop / hand-written"))
    assert "| 0.99 / 0.95 | **no** | loop_overhead |" in loop
    fixed = next(ln for ln in lines if ln.startswith("| per-epoch fixed cost"))
    assert "| n/a | **no** | epoch_cost (quick) |" in fixed  # a missing figure never meets its goal


def test_epoch_cost_figures_from_a_trial_history():
    from bench.epoch_cost import per_trial

    # 4 epochs of 3 steps at B=1024: training 0.03 s (throughput), evaluation 0.06 s, 0.01 s between epochs
    epochs = [{"epoch": e, "steps": 3.0 * (e + 1), "global_batch_size": 1024.0, "throughput": 3072 / 0.03,
               "epoch_s": 0.09, "wall_s": 0.09 + 0.1 * e} for e in range(4)]
    got = per_trial(epochs)
    assert got["epochs_counted"] == 2  # epochs 2 and 3: epoch 0 has no predecessor, epoch 1 holds the first report
    assert math.isclose(got["fixed_over_train"], (0.1 - 0.03) / 0.03)
    assert math.isclose(got["eval_over_train"], 2.0)
    assert math.isclose(got["rest_over_train"], 0.01 / 0.03)


def test_epoch_cost_reports_the_eval_subset_against_its_goal_and_the_full_split_as_a_contrast():
    from bench.epoch_cost import analyse, study_sets

    def trial(eval_s: float, subset: str) -> dict:
        return {"seed": 0, "trial_runner": "in_process", "eval_subset": subset,
                "epochs": [{"epoch": e, "steps": 3.0 * (e + 1), "global_batch_size": 1024.0,
                            "throughput": 3072 / 0.03, "epoch_s": 0.03 + eval_s,
                            "wall_s": (0.03 + eval_s + 0.01) * (e + 1)} for e in range(5)]}

    sets = study_sets(5, [0])
    assert sets["search.data.eval_subset"] == {"grid": [1000, None]}  # both variants in the one study
    got = analyse({"trials": [trial(0.005, "1000"), trial(0.04, "None")]}, sets)
    rows = {r["figure"]: r for r in got["summary"]}
    goal = next(r for r in got["summary"] if r.get("key") == "epoch_fixed")
    assert "1,000-example validation subset" in goal["figure"]
    assert math.isclose(goal["value"], (0.005 + 0.01) / 0.03) and goal["met"] is True
    contrast = next(r for name, r in rows.items() if name.startswith("contrast"))
    assert math.isclose(contrast["value"], (0.04 + 0.01) / 0.03) and contrast["goal"] == "" and "key" not in contrast
    assert [r for r in got["summary"] if r.get("key") == "epoch_fixed"] == [goal]  # one goal row


def test_gpu_check_dry_runs_every_case_on_the_cpu(tmp_path):
    # the GPU check's cases and ratios, on the CPU at a tiny size (on a GPU machine `make gpu-check` runs them for real)
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--quick", "--subset", "1024",
                           "--json", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    got = json.loads(out.read_text())
    assert set(got["cases"]) == {"mlp_fp32", "mlp_bf16", "mlp_bf16_loader0", "mlp_bf16_loader2", "resnet_fp32",
                                 "resnet_bf16", "loop_b256", "charlm_bf16"}
    assert all(c["status"] == "completed" for c in got["cases"].values()), got["cases"]
    assert got["failed"] == [] and all(_positive_finite(v) for v in got["ratios"].values()), got["ratios"]


def test_time_to_accuracy_times_the_recipe_of_the_demo_study_in_the_same_results(tmp_path):
    sys.path.insert(0, str(REPO_ROOT))
    from bench import run_all
    from bench.time_to_accuracy import FALLBACK, recommended_overrides

    names = list(run_all.BENCHMARKS)
    assert names.index("demo_study") < names.index("time_to_accuracy")  # the recipe exists when it runs
    empty = tmp_path / "empty"
    empty.mkdir()
    got, source = recommended_overrides(empty)
    assert source != "" and (got == FALLBACK or "report.json" in source)
    rec = {"global_batch_size": 256, "rule": "sqrt", "warmup_epochs": 0.0, "optimizer": "sgd", "base_lr": 0.01}
    (tmp_path / "demo_study.json").write_text(json.dumps({"recommended": rec}))
    got, source = recommended_overrides(tmp_path)
    assert got == {"data.global_batch_size": 256, "scaling.rule": "sqrt", "schedule.warmup_epochs": 0.0,
                   "optim.name": "sgd", "optim.base_lr": 0.01}
    assert "demo_study" in source
