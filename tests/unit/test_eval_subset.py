"""data.eval_subset (issue #14): every trial, seed and epoch of a study is evaluated on the same first N examples of a
fixed permutation of the eval split; a value over the split is a one-line BadInput before any trial; the loop's
val_* are computed over those N examples; the value is among the trial's logged params."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from largebatch.config import flatten, load_study, parse_trial, resolve
from largebatch.errors import BadInput
from largebatch.tasks import Metric, Task, TaskData, build_data, cached_data, load_task
from largebatch.tasks.build import cache_key, clear_cache
from largebatch.tracking import safe_params
from largebatch.train.loop import WorkerContext, train_worker
from task_fixtures import Indexed

REPO_ROOT = Path(__file__).resolve().parents[2]
SMOKE = REPO_ROOT / "tune_spaces" / "digits-smoke.yaml"


def _task(eval_split, **over) -> Task:
    return Task(data=lambda cfg: TaskData(train=(torch.zeros(64, 2), torch.zeros(64)), eval=eval_split),
                model=lambda cfg, d: torch.nn.Linear(2, 1), loss=torch.nn.functional.mse_loss, **over)


def _tensor_eval(n: int):
    return torch.arange(n, dtype=torch.float32).repeat(2, 1).T.contiguous(), torch.arange(n)


def _held(split) -> list[int]:
    """The example numbers (targets) an eval split holds, in its order."""
    if isinstance(split, tuple):
        return split[1].tolist()
    return [int(split[i][1]) for i in range(len(split))]


def _cfg(**data) -> object:
    seed = data.pop("seed", 0)
    return parse_trial({"seed": seed, "data": data})


@pytest.mark.parametrize("make", [_tensor_eval, Indexed], ids=["tensors", "dataset"])
def test_the_subset_is_the_first_n_of_one_fixed_permutation_whatever_the_seed(make):
    task = _task(make(200))
    a = _held(build_data(task, _cfg(eval_subset=30, seed=0)).eval)
    b = _held(build_data(task, _cfg(eval_subset=30, seed=7)).eval)
    more = _held(build_data(task, _cfg(eval_subset=80, seed=3)).eval)
    assert len(a) == 30 and len(set(a)) == 30
    assert a == b  # the trial's seed does not choose the examples
    assert more[:30] == a and len(more) == 80  # a larger N keeps a smaller N's examples: a prefix
    assert a != list(range(30))  # permuted, not the split's head
    assert _held(build_data(task, _cfg(seed=5)).eval) == list(range(200))  # unset: the whole split, as it was
    assert _held(build_data(task, _cfg(eval_subset=200)).eval) == list(range(200))  # all of it: unchanged


def test_the_training_split_is_untouched_and_train_subset_still_follows_the_seed():
    task = Task(data=lambda cfg: TaskData(train=Indexed(100), eval=Indexed(50)),
                model=lambda cfg, d: torch.nn.Linear(2, 1), loss=torch.nn.functional.mse_loss)
    d = build_data(task, _cfg(eval_subset=10))
    assert len(d.train) == 100 and len(d.eval) == 10
    s1 = build_data(task, _cfg(eval_subset=10, train_subset=20, seed=1))
    s2 = build_data(task, _cfg(eval_subset=10, train_subset=20, seed=2))
    assert _held(s1.train) != _held(s2.train) and _held(s1.eval) == _held(s2.eval) == _held(d.eval)


def test_a_subset_larger_than_the_eval_split_is_bad_input():
    with pytest.raises(BadInput) as e:
        build_data(_task(_tensor_eval(40), name="mine"), _cfg(eval_subset=41))
    msg = str(e.value)
    assert msg.startswith("data.eval_subset: ") and "41" in msg and "at most 40" in msg and "'mine'" in msg
    with pytest.raises(BadInput, match="base.data.eval_subset: got 0: input should be greater than 0"):
        _cfg(eval_subset=0)  # the schema: a positive count


def test_a_ray_data_task_takes_an_eval_subset_of_its_in_memory_eval_split():
    task = _task(_tensor_eval(40), ray_data=lambda cfg: None, train_size=lambda cfg: 1000)
    task = dataclasses.replace(task, data=lambda cfg: TaskData(train=None, eval=_tensor_eval(40)))
    assert len(_held(build_data(task, _cfg(eval_subset=12)).eval)) == 12
    with pytest.raises(BadInput, match="data.eval_subset"):
        build_data(task, _cfg(eval_subset=50))


def test_the_data_cache_keeps_one_copy_per_eval_subset():
    clear_cache()
    task = _task(_tensor_eval(100))
    assert cache_key(task, _cfg(eval_subset=10)) != cache_key(task, _cfg(eval_subset=20)) != cache_key(task, _cfg())
    try:
        assert len(_held(cached_data(task, _cfg(eval_subset=10)).eval)) == 10
        assert len(_held(cached_data(task, _cfg(eval_subset=20)).eval)) == 20  # not the cached 10
        assert len(_held(cached_data(task, _cfg()).eval)) == 100
    finally:
        clear_cache()


def _study(tmp_path: Path, base_subset=None, search=None) -> Path:
    raw = yaml.safe_load(SMOKE.read_text())
    if base_subset is not None:
        raw["base"]["data"]["eval_subset"] = base_subset
    if search is not None:
        raw["search"]["data.eval_subset"] = {"grid": search}
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


@pytest.mark.parametrize("base_subset, search, field", [
    (400, None, "base.data.eval_subset"),
    (None, [100, 361], "search.data.eval_subset"),
])
def test_a_study_whose_eval_subset_exceeds_the_split_fails_at_load(tmp_path, base_subset, search, field):
    path = _study(tmp_path, base_subset, search)
    with pytest.raises(BadInput) as e:
        load_study(path)
    msg = str(e.value)
    bad = base_subset or max(search)
    assert msg.startswith(f"{path}: {field}: ") and f"got {bad}" in msg and "360 eval examples of 'digits'" in msg
    assert "\n" not in msg
    assert load_study(_study(tmp_path, 360, [100, 200])).base.data.eval_subset == 360  # within the split: loads


def _counting_task(n_seen: list[int], seen: list[int]) -> Task:
    """The classification task with one more metric that records how many examples each evaluation scored."""
    base = load_task("classification")

    def count(out, y):
        seen.extend(y.tolist())
        n_seen.append(len(y))
        return torch.ones(len(y))

    return dataclasses.replace(base, metrics=base.metrics + (Metric("one", "max", count),))


@pytest.mark.parametrize("subset", [50, None])
def test_the_loop_evaluates_on_the_subset_and_logs_it(subset):
    tree = {"data": {"dataset": "digits", "global_batch_size": 64, "eval_subset": subset},
            "model": {"hidden_sizes": [16]}, "optim": {"base_lr": 0.05, "base_batch_size": 64}, "budget": {"epochs": 1}}
    cfg = parse_trial(tree)
    n_seen: list[int] = []
    seen: list[int] = []
    reports = []
    final = train_worker(resolve(cfg, 1), WorkerContext(report=lambda m, c: (reports.append(m),
                                                                             shutil.rmtree(c or "", True))),
                         task=_counting_task(n_seen, seen))
    n = subset or 360  # digits: 360 test images
    assert final["status"] == "completed" and len(reports) == 1
    assert sum(n_seen) == n  # one evaluation, over N examples
    assert final["val_one"] == 1.0
    hits = final["val_acc"] * n
    assert abs(hits - round(hits)) < 1e-6  # an accuracy over N examples
    want = build_data(load_task("classification"), cfg).eval[1].tolist()
    assert sorted(seen) == sorted(want)  # the subset's examples (labels, in multiset)
    # the trial's MLflow params are the flattened config (tune/trainable.py): the subset is among them
    assert safe_params(flatten(cfg.model_dump(mode="json")))["data.eval_subset"] == str(subset)


def test_extend_keeps_trials_logged_before_eval_subset_existed_unless_the_study_now_sets_it():
    """A run recorded before data.eval_subset was a setting has no such param: it holds the trial whose subset is
    unset (what it did: the whole split), not one that now evaluates on a subset."""
    from types import SimpleNamespace

    from largebatch.config import baseline_trial
    from largebatch.tune.extend import new_trials, study_trials

    old = load_study(SMOKE, {"tuner.seeds": [0]})
    base, baseline = old.base.model_dump(mode="json"), baseline_trial(old).model_dump(mode="json")
    items = study_trials(old, base, baseline, "s.yaml")
    finished = [SimpleNamespace(data=SimpleNamespace(params={**{k: v for k, v in i["_params"].items()
                                                                if k != "data.eval_subset"}, "arm": i["arm"]}))
                for i in items]
    assert all(i["_params"]["data.eval_subset"] == "None" for i in items)
    assert new_trials(items, finished) == ([], len(items))  # nothing to rerun
    sub = load_study(SMOKE, {"tuner.seeds": [0], "data.eval_subset": 100})
    new, kept = new_trials(study_trials(sub, sub.base.model_dump(mode="json"),
                                        baseline_trial(sub).model_dump(mode="json"), "s.yaml"), finished)
    assert kept == 0 and len(new) == len(items)  # a subset is a different trial
