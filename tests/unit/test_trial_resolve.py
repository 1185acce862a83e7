"""A trial is resolved once, for the data it runs on: a study that searches the data path (or dataset, or task)
logs the steps and warmup of each trial's own data, not of the base dataset's."""
from __future__ import annotations

import numpy as np
import yaml

from largebatch.config import load_study
from largebatch.tune.plan import _train_sizes
from largebatch.tune.runtime import StudyRuntime


def _npz(path, n: int) -> str:
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.random((n, 4), dtype=np.float32), y_train=rng.integers(0, 3, n),
             x_test=rng.random((20, 4), dtype=np.float32), y_test=rng.integers(0, 3, 20))
    return str(path)


def _ctx(tmp_path, search: dict):
    small, large = _npz(tmp_path / "small.npz", 100), _npz(tmp_path / "large.npz", 300)
    study_file = tmp_path / "s.yaml"
    study_file.write_text(yaml.safe_dump({
        "name": "paths",
        "base": {"data": {"dataset": "npz", "path": small, "global_batch_size": 10},
                 "optim": {"base_batch_size": 10}, "schedule": {"warmup_epochs": 1}, "budget": {"epochs": 2}},
        "search": search(small, large)}))
    study = load_study(study_file)
    base = study.base.model_dump(mode="json")
    rt = StudyRuntime(base_tree=base, baseline_tree=base, source=str(study_file), seeds=(0,), workers_per_trial=1,
                      cpus_per_worker=1, use_gpu=False, max_failures=0, train_sizes=_train_sizes(study, [base]),
                      tracking_uri="", experiment_id="", parent_run_id="", run_name="", storage_path="")
    return rt, small, large


def resolve_trial(sample, rt):
    spec, _ = rt.trial_spec(sample)
    return spec.cfg, spec.res


def test_a_trial_that_searches_the_data_path_is_resolved_for_its_own_data(tmp_path):
    ctx, small, large = _ctx(tmp_path, lambda sm, lg: {"data.path": {"grid": [sm, lg]}})
    assert ctx.train_sizes == {0: 100}  # the driver counts the base data only
    for path, n in ((small, 100), (large, 300)):
        _, res, *_ = resolve_trial({"arm": "search", "seed": 0, "overrides": {"data.path": path}}, ctx)
        assert res.train_size == n
        s = res.summary()
        assert s["steps_per_epoch"] == n // 10 and s["warmup_steps"] == n // 10 and s["total_steps"] == 2 * n // 10


def test_a_searched_subset_of_other_data_is_capped_by_that_data(tmp_path):
    ctx, small, large = _ctx(tmp_path, lambda sm, lg: {"data.path": {"grid": [sm, lg]},
                                                       "data.train_subset": {"grid": [50, 200]}})
    _, res, *_ = resolve_trial({"arm": "search", "seed": 0,
                                "overrides": {"data.path": large, "data.train_subset": 200}}, ctx)
    assert res.train_size == 200


def test_a_subset_beyond_the_trials_own_data_is_a_clear_error(tmp_path):
    import pytest

    from largebatch.errors import BadInput

    ctx, small, large = _ctx(tmp_path, lambda sm, lg: {"data.path": {"grid": [sm, lg]},
                                                       "data.train_subset": {"grid": [50, 200]}})
    with pytest.raises(BadInput, match="more than the 100 training examples"):
        resolve_trial({"arm": "search", "seed": 0, "overrides": {"data.path": small, "data.train_subset": 200}}, ctx)


def test_asha_first_rung_never_falls_inside_a_warmup(tmp_path):
    from largebatch.tune.plan import create_scheduler
    from largebatch.tune.schedulers import asha_grace_epochs

    study_file = tmp_path / "asha.yaml"
    study_file.write_text(yaml.safe_dump({
        "name": "asha", "base": {"data": {"dataset": "digits"}, "budget": {"epochs": 8}},
        "search": {"schedule.warmup_epochs": {"grid": [0, 1, 2.5]}},
        "tuner": {"scheduler": "asha", "grace_period_epochs": 1}}))
    study = load_study(study_file)
    assert asha_grace_epochs(study) == 3  # the 2.5-epoch warmup ends inside epoch 3
    assert min(m for m, _ in create_scheduler(study)._brackets[0]._rungs) == 3  # its first milestone
    no_warmup = study.model_copy(update={"search": {}})
    assert asha_grace_epochs(no_warmup) == 1


def test_a_trial_spec_refuses_other_workers_or_other_data(tmp_path):
    import pytest

    rt, small, large = _ctx(tmp_path, lambda sm, lg: {"data.path": {"grid": [sm, lg]}})
    spec, _ = rt.trial_spec({"arm": "search", "seed": 0, "overrides": {"data.path": large}})
    assert spec.check(1, 300) is spec.res  # resolved once, used as is
    with pytest.raises(RuntimeError, match="resolved for 1 worker"):
        spec.check(2, 300)
    with pytest.raises(RuntimeError, match="resolved for 300 training examples, the data it loaded has 100"):
        spec.check(1, 100)
    import pickle

    assert pickle.loads(pickle.dumps(spec)).res.summary() == spec.res.summary()  # it crosses into Ray as is
