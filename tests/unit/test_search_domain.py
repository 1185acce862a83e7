"""Search domains (largebatch/config/search.py) and the searcher/scheduler registries (tune/searchers.py,
tune/schedulers.py): one type for a `search:` entry, and tuner names checked at load like every other name."""
from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from largebatch.cli import main
from largebatch.config import SearchDomain, load_study
from largebatch.errors import BadInput
from largebatch.tune.schedulers import SCHEDULERS
from largebatch.tune.searchers import SEARCHERS, grid_points, random_points

SMOKE = Path(__file__).resolve().parents[2] / "tune_spaces" / "digits-smoke.yaml"


@pytest.mark.parametrize("entry, values, probes", [
    ({"grid": [16, 64]}, [16, 64], [16, 64]),
    ({"choice": ["linear", "sqrt"]}, ["linear", "sqrt"], ["linear", "sqrt"]),
    ({"uniform": [0, 2]}, [], [0.0, 2.0]),
    ({"loguniform": [0.001, 0.1]}, [], [0.001, 0.1]),
    ({"randint": [1, 5]}, [], [1]),
])
def test_values_and_probes(entry, values, probes):
    d = SearchDomain.parse(entry)
    assert d == SearchDomain.of(entry)
    assert d.values() == values and d.probes() == probes
    assert [type(p) for p in d.probes()] == [type(p) for p in probes]


def test_sample_is_seeded_and_in_range():
    draw = lambda entry: [SearchDomain.of(entry).sample(rng) for rng in [random.Random(3)] for _ in range(50)]  # noqa: E731
    assert draw({"grid": [1, 2, 3]}) == draw({"grid": [1, 2, 3]})
    assert set(draw({"choice": ["a", "b"]})) <= {"a", "b"}
    assert all(0.5 <= x <= 2.0 for x in draw({"uniform": [0.5, 2.0]}))
    assert all(1e-3 <= x <= 1e-1 for x in draw({"loguniform": [1e-3, 1e-1]}))
    assert set(draw({"randint": [1, 4]})) <= {1, 2, 3}  # high excluded, as tune.randint
    rng = random.Random(0)
    expect = math.exp(random.Random(0).uniform(math.log(1e-3), math.log(1e-1)))
    assert SearchDomain.of({"loguniform": [1e-3, 1e-1]}).sample(rng) == expect


@pytest.mark.parametrize("entry, msg", [
    ({"grid": [1], "choice": [2]}, "a search entry is one of"),
    ({"range": [1, 2]}, "a search entry is one of"),
    ({"grid": []}, "grid needs a non-empty list"),
    ({"uniform": [2, 1]}, "uniform needs [low, high] with low < high"),
    ({"loguniform": [0, 1]}, "loguniform needs low > 0"),
])
def test_parse_rejects(entry, msg):
    with pytest.raises(BadInput, match=msg.replace("[", r"\[").replace("]", r"\]")) as e:
        SearchDomain.parse(entry, source="s.yaml", field="search.optim.base_lr")
    assert str(e.value).startswith("s.yaml: search.optim.base_lr: ")


def test_to_tune_builds_ray_domains():
    pytest.importorskip("ray")
    from ray.tune.search.sample import Categorical, Float, Integer

    assert isinstance(SearchDomain.of({"grid": [1, 2]}).to_tune(), Categorical)
    assert isinstance(SearchDomain.of({"uniform": [0, 1]}).to_tune(), Float)
    assert isinstance(SearchDomain.of({"loguniform": [0.01, 1]}).to_tune(), Float)
    assert isinstance(SearchDomain.of({"randint": [1, 5]}).to_tune(), Integer)


def test_grid_and_random_points():
    study = load_study(SMOKE)
    points = grid_points(study)
    n = math.prod(len(SearchDomain.of(e).values()) for e in study.search.values())
    assert len(points) == max(n, 1) and all(set(p) == set(study.search) for p in points)
    assert random_points(study, 5, seed=1) == random_points(study, 5, seed=1)


def test_registries_list_the_searchers_and_schedulers(capsys):
    assert SEARCHERS.names() == ["grid", "random", "optuna"]
    assert SCHEDULERS.names() == ["fifo", "asha", "sha"]
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "searchers:\n  grid" in out and "schedulers:\n  fifo" in out and "  asha" in out


def test_lazy_searcher_and_scheduler_entries_import_their_factories():
    """choices.py names them below config/; each name's factory is imported from tune/ on first use."""
    import subprocess
    import sys

    from largebatch import choices
    from largebatch.registry import Registry

    for registry in (SEARCHERS, SCHEDULERS):
        for name in registry.names():
            factory = registry.get(name)
            assert callable(factory) and factory.__module__.startswith("largebatch.tune."), (name, factory)
    assert choices.SEARCHERS is SEARCHERS and choices.SCHEDULERS is SCHEDULERS
    # checking the names loads neither tune/ nor Ray
    code = ("import sys; from largebatch.config import load_study; load_study('tune_spaces/digits-smoke.yaml'); "
            "print(sorted(m for m in sys.modules if m.startswith(('largebatch.tune', 'ray'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=SMOKE.parents[1]).stdout
    assert out.strip() == "[]", out
    r = Registry("thing")
    r.add_lazy("x", "json:dumps", "a lazy entry")
    assert r.names() == ["x"] and r.get("x")([1]) == "[1]"
    with pytest.raises(ValueError, match="not 'module:attribute'"):
        r.add_lazy("y", "json.dumps", "no colon")
    with pytest.raises(ValueError, match="registered twice"):
        r.add_lazy("x", "json:loads", "again")


@pytest.mark.parametrize("key, value, msg", [
    ("tuner.searcher", "gird",
     "tuner.searcher: unknown searcher 'gird' (did you mean 'grid'?); valid: grid, random, optuna"),
    ("tuner.scheduler", "ahsa", "tuner.scheduler: unknown scheduler 'ahsa'"),
])
def test_unknown_searcher_or_scheduler_is_one_line_exit_2(key, value, msg, capsys):
    with pytest.raises(BadInput, match="did you mean"):
        load_study(SMOKE, {key: value})
    assert main(["validate", str(SMOKE), "--set", f"{key}={value}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{SMOKE}: {msg}" in err


@pytest.mark.parametrize("sets, got", [({"tuner.workers_per_trial": 2}, "got workers_per_trial 2, in_process true"),
                                       ({"tuner.workers_per_trial": 1, "tuner.in_process": False},
                                        "got workers_per_trial 1, in_process false")])
def test_sha_needs_in_process_trials_one_line_exit_2(sets, got, capsys):
    """sha pauses a trial and resumes it from its rung checkpoint: Tune does that for a trial it trains itself, not
    for one whose Ray Train workers train on after the report."""
    with pytest.raises(BadInput, match="use 'asha' for multi-worker trials"):
        load_study(SMOKE, {"tuner.scheduler": "sha", **sets})
    argv = [a for k, v in sets.items() for a in ("--set", f"{k}={str(v).lower()}")]
    assert main(["validate", str(SMOKE), "--set", "tuner.scheduler=sha", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tuner.scheduler: 'sha' pauses trials" in err and got in err
    load_study(SMOKE, {"tuner.scheduler": "sha", "tuner.workers_per_trial": 1})  # 1 worker in the trial's process
