"""around_critical (docs/design.md §11): parsing, validation, rounding, placement from a cached B_noise, and
`largebatch probe` itself (in-process, digits, a few seconds)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from largebatch.cli import main
from largebatch.config import SearchDomain, load_study
from largebatch.config.critical import (
    MAX_FACTORS, around_factors, check_factors, critical_grid, is_power_of_two, round_batch,
)
from largebatch.errors import BadInput

REPO_ROOT = Path(__file__).resolve().parents[2]
SMOKE = REPO_ROOT / "tune_spaces" / "digits-smoke.yaml"


def _study_file(tmp_path: Path, search: dict, **tuner) -> Path:
    raw = yaml.safe_load(SMOKE.read_text())
    raw["search"] = search
    raw["tuner"].update(tuner)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_factors_parse_into_a_domain_placed_later():
    d = SearchDomain.parse({"around_critical": [0.25, 1, 4]}, "s.yaml", "search.data.global_batch_size")
    assert d.kind == "around_critical" and d.args == [0.25, 1.0, 4.0]
    assert d.values() == [] and d.probes() == [] and not d.listed
    with pytest.raises(RuntimeError, match="placed"):
        d.to_tune()
    assert around_factors({"data.global_batch_size": {"around_critical": [0.5, 2]}}) == [0.5, 2.0]
    assert around_factors({"data.global_batch_size": {"grid": [32]}}) is None


@pytest.mark.parametrize("key,values,msg", [
    ("optim.base_lr", [1], "only"),
    ("data.global_batch_size", [], "non-empty"),
    ("data.global_batch_size", 2, "non-empty"),
    ("data.global_batch_size", [0.5, 0], "factor 0"),
    ("data.global_batch_size", [-1], "factor -1"),
    ("data.global_batch_size", [float("inf")], "factor inf"),
    ("data.global_batch_size", [float("nan")], "factor nan"),
    ("data.global_batch_size", ["x"], "factor 'x'"),
    ("data.global_batch_size", [True], "factor True"),
    ("data.global_batch_size", [1.0] * (MAX_FACTORS + 1), f"at most {MAX_FACTORS}"),
])
def test_bad_factors(key, values, msg):
    with pytest.raises(BadInput, match=msg):
        check_factors(key, values, "s.yaml", f"search.{key}")


def test_rounding_to_powers_of_two_or_multiples_within_bounds():
    assert [round_batch(x) for x in (0.2, 1, 3, 5.9, 6, 100, 181, 182)] == [1, 1, 4, 8, 8, 128, 128, 256]
    assert round_batch(3, granularity=4) == 4  # never below the granularity
    assert round_batch(5000, upper=1437) == 1024  # the largest power of two that fits
    assert round_batch(50, granularity=3) == 51 and round_batch(1, granularity=3) == 3
    assert round_batch(5000, granularity=3, upper=1437) == 1437 - 1437 % 3
    with pytest.raises(BadInput, match="granularity"):
        round_batch(10, granularity=8, upper=5)
    assert all(is_power_of_two(b) for b in critical_grid(300.0, [0.25, 0.5, 1, 2, 4]))
    assert critical_grid(300.0, [0.25, 1, 4]) == [64, 256, 1024]
    assert critical_grid(300.0, [1, 1.1, 4], upper=600) == [256, 512]  # duplicates dropped, order kept
    with pytest.raises(BadInput, match="B_noise"):
        critical_grid(float("nan"), [1])


@pytest.mark.parametrize("search,msg", [
    ({"optim.base_lr": {"around_critical": [1]}}, "search.optim.base_lr: around_critical places batch sizes only"),
    ({"data.global_batch_size": {"around_critical": [0]}}, "search.data.global_batch_size: around_critical factor 0"),
    ({"data.global_batch_size": {"around_critical": list(range(1, 18))}}, "at most 16"),
    ({"data.global_batch_size": {"around_critical": [".inf"]}}, "not a positive finite number"),
])
def test_validate_rejects_bad_around_critical_in_one_line(tmp_path, capsys, search, msg):
    path = _study_file(tmp_path, search)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err and msg in err, err


def test_validate_accepts_around_critical(tmp_path, capsys):
    path = _study_file(tmp_path, {"data.global_batch_size": {"around_critical": [0.5, 2]}})
    assert main(["validate", str(path)]) == 0
    assert "around_critical" in capsys.readouterr().out


def _cache(study, root: Path, b_noise: float) -> Path:
    from largebatch.probe import cache_path, save_estimate

    path = cache_path(study, root, "s.yaml")
    save_estimate({"b_noise": b_noise, "b_noise_std": 7.0, "tail": [b_noise], "tail_epochs": 1,
                   "per_epoch": [b_noise], "global_batch_size": 32, "micro_batch": 16, "train_size": 1437,
                   "probe_s": 1.0, "settings": {"ema": 0.98, "seed": 0}}, path)
    return path


def test_place_critical_uses_the_cache_and_keeps_the_key_order(tmp_path, capsys):
    from largebatch.tune.critical import place_critical

    path = _study_file(tmp_path, {"data.global_batch_size": {"around_critical": [0.25, 1, 4]},
                                  "scaling.rule": {"grid": ["none", "linear"]}})
    study = load_study(path)
    _cache(study, tmp_path / "runs", 100.0)
    placed, info = place_critical(study, "s.yaml", tmp_path / "runs")
    assert placed.search == {"data.global_batch_size": {"grid": [32, 128, 512]},
                             "scaling.rule": {"grid": ["none", "linear"]}}
    assert info["cached"] and info["grid"] == [32, 128, 512] and info["granularity"] == 2
    out = capsys.readouterr().out
    assert "B_noise ≈ 100 ± 7" in out and "grid [32, 128, 512]" in out
    no_around = load_study(SMOKE)
    assert place_critical(no_around, "s.yaml", tmp_path / "runs") == (no_around, None)


def test_cache_key_follows_task_model_data_optimizer_not_tuner(tmp_path):
    from largebatch.probe import cache_path

    a = load_study(SMOKE)
    assert cache_path(a, "r") == cache_path(load_study(SMOKE, {"tuner.seeds": [0, 1]}), "r")
    assert cache_path(a, "r") != cache_path(load_study(SMOKE, {"optim.base_lr": 0.1}), "r")
    assert cache_path(a, "r") != cache_path(load_study(SMOKE, {"model.hidden_sizes": [32]}), "r")


def test_probe_trial_is_the_baseline_short_with_the_instrument_and_accumulation():
    from largebatch.probe import ProbeSettings, probe_trial

    study = load_study(SMOKE)
    cfg = probe_trial(study, "s.yaml", ProbeSettings(epochs=3, train_subset=1000, batch=64), 1437)
    assert cfg.instruments.grad_noise_scale and cfg.data.grad_accum_steps == 2
    assert cfg.budget.epochs == 3 and cfg.data.train_subset == 1000 and cfg.data.global_batch_size == 64
    # the baseline's LR (0.05 at 32) carried to 64 by the sqrt rule
    assert cfg.scaling.rule == "sqrt" and cfg.optim.base_lr == pytest.approx(0.05) and cfg.optim.base_batch_size == 32
    same = probe_trial(study, "s.yaml", ProbeSettings(batch=32), 1437)
    assert same.scaling.rule == "none" and same.data.global_batch_size == 32
    with pytest.raises(BadInput, match="even batch"):
        probe_trial(study, "s.yaml", ProbeSettings(batch=33), 1437)


@pytest.mark.parametrize("argv,msg", [
    (["--epochs", "1"], "--epochs: got 1"), (["--ema", "1"], "--ema: got 1.0"),
    (["--train-subset", "-5"], "--train-subset: got -5"), (["--batch", "31"], "--batch: got 31"),
])
def test_probe_flags_are_checked(capsys, argv, msg):
    assert main(["probe", str(SMOKE), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and msg in err, err


def test_probe_prints_b_noise_with_its_uncertainty_and_caches_it(tmp_path, capsys, monkeypatch):
    """`largebatch probe` on digits: one line with B_noise ± std, the around_critical grid, the cache file."""
    monkeypatch.chdir(tmp_path)
    assert main(["probe", str(SMOKE), "--epochs", "4", "--batch", "64"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "B_noise ≈" in ln)
    assert line.startswith("digits-smoke: B_noise ≈ ") and "±" in line and "last 2 of 4 epochs" in line, line
    assert "around_critical [0.25, 0.5, 1.0, 2.0, 4.0] -> data.global_batch_size grid [" in out
    cached = list((tmp_path / "runs" / "noise_scale").glob("digits-smoke-*.json"))
    assert len(cached) == 1
    est = json.loads(cached[0].read_text())
    assert est["b_noise"] > 0 and math.isfinite(est["b_noise_std"]) and len(est["per_epoch"]) == 4
    assert f"B_noise ≈ {est['b_noise']:.0f} ± {est['b_noise_std']:.0f}" in line


def test_extend_keeps_the_trials_a_finished_run_holds_and_lists_the_new_ones():
    """--extend's bookkeeping (tune/extend.py): a trial is kept when a finished child run has its arm and config."""
    from types import SimpleNamespace

    from largebatch.config import baseline_trial
    from largebatch.tune.extend import new_trials, study_trials

    def run_of(item):
        return SimpleNamespace(data=SimpleNamespace(params={**item["_params"], "arm": item["arm"]}))

    old = load_study(SMOKE, {"tuner.seeds": [0]})
    base = old.base.model_dump(mode="json")
    baseline = baseline_trial(old).model_dump(mode="json")
    finished = [run_of(i) for i in study_trials(old, base, baseline, "s.yaml")]  # baseline + 2 batches x 2 rules
    grown = load_study(SMOKE, {"tuner.seeds": [0, 1], "search.data.global_batch_size": {"grid": [128, 512, 256]}})
    new, kept = new_trials(study_trials(grown, base, baseline, "s.yaml"), finished)
    assert kept == 5 and len(new) == (1 + 3 * 2) * 2 - 5  # (baseline + 3 batches x 2 rules) x 2 seeds - the old 5
    assert {(i["seed"], i["overrides"].get("data.global_batch_size")) for i in new if i["seed"] == 0} == {(0, 256)}
    assert all("_params" not in i for i in new)


def test_resume_and_extend_together_is_one_line_exit_2(capsys):
    assert main(["tune", str(SMOKE), "--resume", "--extend"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--extend" in err and "one of them" in err


def test_the_line_says_when_the_spread_is_unknown():
    from largebatch.probe import format_estimate

    est = {"b_noise": 120.4, "b_noise_std": None, "tail": [120.4], "tail_epochs": 2, "per_epoch": [80.0, float("nan"),
           120.4][1:], "global_batch_size": 256, "micro_batch": 128, "train_size": 2000, "probe_s": 3.0,
           "settings": {"ema": 0.98, "seed": 0}}
    line = format_estimate(est)
    assert line.startswith("B_noise ≈ 120 ± ? (one value") and "the last 2 of 2 epochs (1 unresolved): nan, 120" in line


def test_extend_with_no_study_to_extend_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/ (storage, mlflow.db) lands here; no Ray is started
    assert main(["tune", str(SMOKE), "--extend"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("largebatch: error: --extend: nothing to extend: no run of study "
                                              "'digits-smoke'"), err
