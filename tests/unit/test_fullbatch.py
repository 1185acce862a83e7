"""Full batch (`data.global_batch_size: full`) and the optimizers that need it (rprop): resolve(), the study loader's
checks (config/fullbatch.py), the grid, and a full-batch trial on digits (B = 1437, one step per epoch)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from largebatch.cli import main
from largebatch.config import load_study, parse_trial, resolve
from largebatch.config.fullbatch import full_batch_study, grid_admits
from largebatch.data.datasets import DIGITS_TRAIN
from largebatch.errors import BadInput
from largebatch.optim import OPTIMIZERS
from largebatch.train.loop import WorkerContext, train_worker

REPO = Path(__file__).resolve().parents[2]
DIGITS = {"dataset": "digits", "global_batch_size": "full"}


def _cfg(**blocks):
    tree = {"data": {**DIGITS, **blocks.pop("data", {})}, "model": {"name": "mlp", "hidden_sizes": [32]}, **blocks}
    return parse_trial(tree)


# ---- resolve() ------------------------------------------------------------------------------------------------


def test_full_is_the_training_set_one_step_per_epoch():
    res = resolve(_cfg(), 1)
    assert DIGITS_TRAIN == 1437
    assert res.global_batch_size == DIGITS_TRAIN and res.steps_per_epoch == 1 and res.train_size == DIGITS_TRAIN
    assert res.cfg.data.global_batch_size == DIGITS_TRAIN  # what is logged and trained is the number
    assert res.examples_per_epoch == DIGITS_TRAIN and res.total_steps == res.epochs


def test_full_follows_train_subset():
    res = resolve(_cfg(data={"train_subset": 600}, budget={"epochs": 3}), 1)
    assert (res.global_batch_size, res.steps_per_epoch, res.total_steps) == (600, 1, 3)


@pytest.mark.parametrize("cap, micro, accum", [(500, 479, 3), (2000, 1437, 1), (100, 3, 479)])
def test_full_keeps_memory_under_the_cap_by_accumulation(cap, micro, accum):
    """1437 = 3 x 479: the fewest micro-steps whose micro-batch fits under the cap and divides the batch."""
    res = resolve(_cfg(data={"per_worker_batch_cap": cap}), 1)
    assert (res.micro_batch, res.grad_accum_steps) == (micro, accum)
    assert res.micro_batch <= cap and res.micro_batch * res.grad_accum_steps == DIGITS_TRAIN


def test_full_over_workers_must_divide():
    with pytest.raises(BadInput, match="does not divide over 2 workers"):
        resolve(_cfg(), 2)  # 1437 is odd
    res = resolve(_cfg(data={"train_subset": 1436}), 2)
    assert res.per_worker_batch == 718 and res.steps_per_epoch == 1


@pytest.mark.parametrize("batch", [16, 1436])
def test_rprop_below_the_full_batch_is_refused(batch):
    with pytest.raises(BadInput) as e:
        resolve(_cfg(data={"global_batch_size": batch}, optim={"name": "rprop"}), 1, source="s.yaml")
    msg = str(e.value)
    assert msg.startswith("s.yaml: base.optim.name: got 'rprop' at a global batch of " + str(batch))
    assert "use data.global_batch_size: full (= 1437)" in msg and "\n" not in msg


def test_rprop_at_the_full_batch_resolves_and_takes_no_weight_decay():
    assert resolve(_cfg(optim={"name": "rprop"}), 1).global_batch_size == DIGITS_TRAIN
    assert resolve(_cfg(data={"global_batch_size": 1437}, optim={"name": "rprop"}), 1).steps_per_epoch == 1
    with pytest.raises(BadInput, match="optim.weight_decay: got 0.01, but rprop takes no weight decay"):
        resolve(_cfg(optim={"name": "rprop", "weight_decay": 0.01}), 1)


def test_full_is_the_only_word():
    with pytest.raises(BadInput, match="data.global_batch_size"):
        _cfg(data={"global_batch_size": "all"})


# ---- the study loader ---------------------------------------------------------------------------------------------


def _study(tmp_path: Path, **raw) -> Path:
    tree = {"name": "fb", "base": {"data": {"dataset": "digits", "global_batch_size": 16},
                                   "model": {"name": "mlp", "hidden_sizes": [16]}, "budget": {"epochs": 2}}, **raw}
    path = tmp_path / "fb.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_full_batch_study_makes_every_full_a_number(tmp_path):
    path = _study(tmp_path, search={"data.global_batch_size": {"grid": [64, "full"]}},
                  baseline={"data.global_batch_size": "full", "data.train_subset": 400})
    study = full_batch_study(load_study(path), str(path))
    assert study.search["data.global_batch_size"] == {"grid": [64, DIGITS_TRAIN]}
    assert study.baseline["data.global_batch_size"] == 400  # the baseline's own training set


def test_full_stays_a_word_when_the_search_varies_the_data(tmp_path):
    path = _study(tmp_path, search={"data.train_subset": {"grid": [400, 800]}})
    study = load_study(path)
    study = study.model_copy(update={"base": parse_trial({**study.base.model_dump(),
                                                          "data": {**study.base.data.model_dump(),
                                                                   "global_batch_size": "full"}})})
    assert full_batch_study(study, str(path)).base.data.global_batch_size == "full"


def test_grid_runs_rprop_at_the_full_batch_only(tmp_path):
    from largebatch.tune.searchers import grid_points

    path = _study(tmp_path, search={"data.global_batch_size": {"grid": [64, "full"]},
                                    "optim.name": {"grid": ["sgd", "rprop"]}})
    study = full_batch_study(load_study(path), str(path))
    kept = [p for p in grid_points(study) if grid_admits(study, p)]
    assert {(p["data.global_batch_size"], p["optim.name"]) for p in kept} == {
        (64, "sgd"), (DIGITS_TRAIN, "sgd"), (DIGITS_TRAIN, "rprop")}


def test_grid_with_rprop_and_no_full_batch_is_refused(tmp_path, capsys):
    path = _study(tmp_path, search={"data.global_batch_size": {"grid": [64, 256]},
                                    "optim": {"grid": [{"name": "sgd"}, {"name": "rprop", "base_lr": 0.01}]}})
    with pytest.raises(BadInput) as e:
        full_batch_study(load_study(path), str(path))
    assert str(e.value).startswith(f"{path}: search.optim: 'rprop' runs only at the full batch (1437 examples")
    assert "add full to data.global_batch_size" in str(e.value)


def test_rprop_baseline_below_full_is_exit_2_from_validate(tmp_path, capsys):
    """`largebatch validate` resolves base and baseline: one line naming file, field, value and fix; exit 2."""
    path = _study(tmp_path, base={"data": {"dataset": "digits", "global_batch_size": 32},
                                  "optim": {"name": "rprop", "base_lr": 0.01}})
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(path) in err and "base.optim.name" in err and "'rprop'" in err and "global batch of 32" in err
    assert "data.global_batch_size: full" in err


def test_list_shows_the_new_optimizers(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("adam", "rmsprop", "rprop"):
        assert f"  {name} " in out, name
        assert OPTIMIZERS.get(name).build.__module__.startswith("torch.optim")


def test_lenet_study_loads_with_rprop_at_full_batch_only():
    from largebatch.tune.searchers import grid_points

    for smoke, n in ((False, 4096), (True, 512)):
        study = full_batch_study(load_study(REPO / "tune_spaces/lenet-batch.yaml", smoke=smoke), "lenet")
        assert study.base.data.global_batch_size == n and study.base.model.name == "lenet"
        points = [p for p in grid_points(study) if grid_admits(study, p)]
        rprop = [p for p in points if p["optim"]["name"] == "rprop"]
        assert rprop and all(p["data.global_batch_size"] == n for p in rprop)
        assert {p["optim"]["name"] for p in points} == ({"sgd", "rprop"} if smoke else {"sgd", "rmsprop", "rprop"})


# ---- a full-batch trial ---------------------------------------------------------------------------------------


def _train(cfg):
    reports = []

    def report(m, c):
        reports.append(m)
        shutil.rmtree(c or "", True)

    final = train_worker(resolve(cfg, 1), WorkerContext(report=report))
    return final, reports


@pytest.mark.parametrize("optim, cap", [({"name": "rprop", "base_lr": 0.01}, 500),
                                        ({"name": "sgd", "base_lr": 0.5}, None)])
def test_full_batch_trial_on_digits_runs_one_step_per_epoch(optim, cap):
    cfg = _cfg(data={"per_worker_batch_cap": cap}, optim=optim, budget={"epochs": 12},
               schedule={"warmup": "none"})
    final, reports = _train(cfg)
    assert final["status"] == "completed"
    assert [r["steps"] for r in reports] == list(range(1, 13))  # one optimizer step per epoch
    assert all(r["global_batch_size"] == DIGITS_TRAIN and r["examples_seen"] == DIGITS_TRAIN * r["steps"]
               for r in reports)
    assert reports[-1]["train_loss"] < 0.5 * reports[0]["train_loss"]
    assert final["best_val_acc"] > 0.5  # 10 classes: chance is 0.1


def test_rprop_baseline_at_its_own_full_batch_is_accepted(tmp_path):
    """The baseline's full batch is its own training set (its train_subset), not base's."""
    rprop = {"data.global_batch_size": 400, "data.train_subset": 400, "optim.name": "rprop", "optim.base_lr": 0.01}
    study = full_batch_study(load_study(_study(tmp_path, baseline=rprop)), "fb.yaml")
    assert study.baseline["optim.name"] == "rprop"
    with pytest.raises(BadInput, match="baseline.optim.name: got 'rprop' at a global batch of 400, smaller than the "
                                       "800"):
        full_batch_study(load_study(_study(tmp_path, baseline={**rprop, "data.train_subset": 800})), "fb.yaml")
