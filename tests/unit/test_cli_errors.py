"""Bad input at the CLI (docs/design.md §10): one line on stderr naming the field or file, exit 2, no traceback, and
nothing started or written: no Ray, no runs/ folder, no mlflow.db."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import yaml

from largebatch.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
SMOKE = REPO_ROOT / "tune_spaces" / "digits-smoke.yaml"


def _set(d: dict, dotted: str, value) -> None:
    *heads, last = dotted.split(".")
    for h in heads:
        d = d.setdefault(h, {})
    d[last] = value


def _del(d: dict, dotted: str) -> None:
    *heads, last = dotted.split(".")
    for h in heads:
        d = d[h]
    del d[last]


class Npz:
    """A .npz data file for a case: good arrays (600 train / 100 test examples of 4 features, 2 classes) with the
    given members replaced or added; written beside the study and named by base.data.path."""

    def __init__(self, **members):
        self.members = members

    def write(self, folder: Path) -> Path:
        import numpy as np

        rng = np.random.default_rng(0)
        arrays = dict(x_train=rng.random((600, 4), np.float32), y_train=np.arange(600) % 2,
                      x_test=rng.random((100, 4), np.float32), y_test=np.arange(100) % 2)
        arrays.update({k: v() if callable(v) else v for k, v in self.members.items()})
        path = folder / "data.npz"
        np.savez(path, **arrays)
        return path


def _npz_case(**members) -> dict:
    return {"base.data.dataset": "npz", "base.data.path": Npz(**members)}


def _nan_features():
    import numpy as np

    x = np.random.default_rng(1).random((600, 4), np.float32)
    x[123, 2] = np.nan
    return x


def _object(n):
    import numpy as np

    return lambda: np.array([1] * n, dtype=object)


def _arr(value, dtype=None):
    import numpy as np

    return lambda: np.asarray(value, dtype=dtype)


_SMOKE_TEXT = SMOKE.read_text()
# ten anchors, each listing the one before it four times: 1 KB of YAML, 4**10 values once expanded
_BOMB = "".join(f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 4) if i else '1, 1'}]\n" for i in range(11))


def _bomb_at(target: str) -> str:
    return _SMOKE_TEXT.replace("base:\n", "x-anchors:\n" + _BOMB + "base:\n", 1).replace(target[0], target[1], 1)


# id -> (edits of digits-smoke as {dotted: value} or raw text/bytes, extra argv, substrings stderr must contain)
CASES = {
    "unknown-key": ({"base.optim.base_lrr": 0.1}, [], ["base.optim.base_lrr", "did you mean 'base_lr'"]),
    "unknown-top-key": ({"serach": {}}, [], ["serach", "did you mean 'search'"]),
    "string-for-int": ({"base.data.global_batch_size": "32"}, [], ["base.data.global_batch_size", "'32'"]),
    "zero-batch": ({"base.data.global_batch_size": 0}, [], ["base.data.global_batch_size", "got 0"]),
    "negative-lr": ({"base.optim.base_lr": -0.1}, [], ["base.optim.base_lr", "-0.1"]),
    "batch-not-divisible": ({"base.data.global_batch_size": 33}, [], ["base.data.global_batch_size", "33"]),
    "accum-not-dividing": ({"base.data.grad_accum_steps": 5}, [], ["base.data.grad_accum_steps", "got 5"]),
    "cap-below-micro": ({"base.data.grad_accum_steps": 2, "base.data.per_worker_batch_cap": 4}, [],
                        ["base.data.per_worker_batch_cap", "got 4"]),
    "unknown-rule": ({"base.scaling.rule": "linaer"}, [], ["base.scaling.rule", "'linaer'", "linear"]),
    "unknown-optimizer": ({"base.optim.name": "adamx"}, [], ["base.optim.name", "'adamx'", "adamw"]),
    "unknown-model": ({"base.model.name": "mpl"}, [], ["base.model.name", "'mpl'"]),
    "unknown-dataset": ({"base.data.dataset": "mnist"}, [], ["base.data.dataset", "'mnist'"]),
    "unknown-decay": ({"base.schedule.decay": "cosin"}, [], ["base.schedule.decay", "'cosin'"]),
    "unknown-warmup": ({"base.schedule.warmup": "lin"}, [], ["base.schedule.warmup", "'lin'"]),
    "warmup-too-long": ({"base.schedule.warmup_epochs": 10}, [], ["base.schedule.warmup_epochs", "longer"]),
    "batch-over-dataset": ({"base.data.global_batch_size": 4096}, [], ["base.data.global_batch_size", "4096"]),
    "resnet-depth": ({"base.model.name": "resnet", "base.model.depth": 21}, [], ["base.model.depth", "21"]),
    "step-no-milestones": ({"base.schedule.decay": "step"}, [], ["base.schedule.milestones"]),
    "empty-grid": ({"search.scaling.rule": {"grid": []}}, [], ["search.scaling.rule", "[]"]),
    "uniform-reversed": ({"search.optim.base_lr": {"uniform": [2, 1]}}, [], ["search.optim.base_lr", "[2, 1]"]),
    "per-batch-zero": ({"search.optim.base_lr": {"loguniform": [0.01, 1.0], "per_batch": 0}}, [],
                       ["search.optim.base_lr", "per_batch", "got 0"]),
    "per-batch-on-a-grid": ({"search.optim.base_lr": {"grid": [0.1, 0.2], "per_batch": 2}}, [],
                            ["search.optim.base_lr", "per_batch goes with a sampled range"]),
    "per-batch-on-the-batch": ({"search.data.global_batch_size": {"randint": [32, 256], "per_batch": 2}}, [],
                               ["search.data.global_batch_size", "per_batch", "batch itself"]),
    "per-batch-random-searcher": ({"search.optim.base_lr": {"loguniform": [0.01, 1.0], "per_batch": 2},
                                   "tuner.searcher": "random"}, [],
                                  ["search.optim.base_lr", "need tuner.searcher grid", "'random'"]),
    "grid-searcher-with-a-range": ({"search.optim.base_lr": {"uniform": [0.01, 0.1]}}, [],
                                   ["search.optim.base_lr", "searcher 'grid' takes grid/choice entries only"]),
    "unknown-search-kind": ({"search.optim.base_lr": {"normal": [1, 2]}}, [], ["search.optim.base_lr", "normal"]),
    "search-key-missing": ({"search.optim.lr": {"grid": [0.1]}}, [], ["search.optim.lr", "no such trial setting"]),
    "grid-value-invalid": ({"search.scaling.rule": {"grid": ["none", "linaer"]}}, [],
                           ["search.scaling.rule", "'linaer'"]),
    "grid-batch-not-divisible": ({"search.data.global_batch_size": {"grid": [128, 33]}}, [],
                                 ["search.data.global_batch_size", "33", "2 workers"]),
    "grid-batch-over-dataset": ({"search.data.global_batch_size": {"grid": [128, 2048]}}, [],
                                ["search.data.global_batch_size", "2048", "1437"]),
    "baseline-not-divisible": ({"baseline": {"data.global_batch_size": 31}}, [],
                               ["baseline.data.global_batch_size", "31"]),
    "baseline-unknown-key": ({"baseline": {"optim.lr": 0.1}}, [], ["baseline.optim.lr", "unknown key"]),
    "tuner-bad-mode": ({"tuner.mode": "maximize"}, [], ["tuner.mode", "'maximize'"]),
    "empty-name": ({"name": ""}, [], ["name", "empty"]),
    "malformed-yaml": ("name: x\nbase:\n  data: [1,\n  model: }\n", [], ["malformed YAML", "line 4"]),
    "top-level-list": ("- name: x\n", [], ["top level must be a mapping", "list"]),
    "empty-file": ("", [], ["top level must be a mapping"]),
    "set-wrong-type": ({}, ["--set", "optim.base_lr=abc"], ["base.optim.base_lr", "'abc'"]),
    "set-unknown-key": ({}, ["--set", "optim.momentun=0.5"], ["base.optim.momentun", "did you mean 'momentum'"]),
    "set-no-equals": ({}, ["--set", "optim.base_lr"], ["--set", "'optim.base_lr'", "key=value"]),
    "set-tuner": ({}, ["--set", "tuner.num_samples=0"], ["tuner.num_samples", "got 0"]),
    "set-batch-not-divisible": ({}, ["--set", "data.global_batch_size=50", "--workers", "4"],
                                ["base.data.global_batch_size", "50", "4 workers"]),
    "workers-zero": ({}, ["--workers", "0"], ["workers", "got 0"]),
    "workers-negative": ({}, ["--workers", "-2"], ["workers", "got -2"]),
    "workers-not-int": ({}, ["--workers", "two"], ["--workers", "'two'"]),
    "workers-no-value": ({}, ["--workers"], ["--workers"]),
    "unknown-flag": ({}, ["--wrokers", "2"], ["--wrokers"]),
    # the task (largebatch/tasks): checked before any trial, user code included
    "task-unknown": ({"base.task.name": "clasification"}, [], ["base.task.name", "'clasification'",
                                                               "classification"]),
    "task-does-not-import": ({"base.task.name": "no_such_pkg.tasks:make"}, [],
                             ["base.task.name", "cannot import module 'no_such_pkg.tasks'"]),
    "task-no-such-function": ({"base.task.name": "task_fixtures:nope"}, [], ["base.task.name", "no attribute 'nope'"]),
    "task-missing-part": ({"base.task.name": "task_fixtures:no_loss", "tuner.metric": "val_mse"}, [],
                          ["base.task.name", "has no loss"]),
    "task-not-a-task": ({"base.task.name": "task_fixtures:not_a_task"}, [],
                        ["base.task.name", "returned dict, not a largebatch.tasks.Task"]),
    "task-items-not-tensors": ({"base.task.name": "task_fixtures:list_items", "tuner.metric": "val_loss"}, [],
                               ["base.task.name", "pairs of torch tensors", "item 0 is (list, int)"]),
    "task-bad-kwargs": ({"base.task.kwargs": {"nope": 1}}, [], ["base.task.kwargs", "nope"]),
    "task-kwarg-value": ({"base.task.name": "charlm", "base.task.kwargs": {"layers": 0}, "tuner.metric": "val_bpb"},
                         [], ["base.task.kwargs.layers", "got 0"]),
    "metric-not-reported": ({"tuner.metric": "val_mse"}, [], ["tuner.metric", "'val_mse'", "val_acc"]),
    "mode-against-metric": ({"tuner.mode": "min"}, [], ["tuner.mode", "val_acc", "higher"]),
    "name-with-quote": ({"name": "x' or '1'='1"}, [], ["name", "letters, digits"]),
    "name-with-slash": ({"name": "../../etc"}, [], ["name", "letters, digits"]),
    "name-too-long": ({"name": "x" * 101}, [], ["name", "letters, digits"]),
    "name-with-space": ({"name": "my study"}, [], ["name", "'my-study'"]),
    # every number is bounded and finite, read as YAML reads it
    "set-nan-lr": ({}, ["--set", "optim.base_lr=.nan"], ["base.optim.base_lr", "finite"]),
    "negative-epochs": ({"base.budget.epochs": -1}, [], ["base.budget.epochs", "-1"]),
    "milestone-negative": ({"base.schedule.decay": "step", "base.schedule.milestones": [-1.0]}, [],
                           ["base.schedule.milestones"]),
    "warmup-start-zero": ({"base.schedule.warmup_start_factor": 0.0}, [], ["base.schedule.warmup_start_factor"]),
    "momentum-one": ({"base.optim.momentum": 1.0}, [], ["base.optim.momentum", "1.0"]),
    "dropout-one": ({"base.model.dropout": 1.0}, [], ["base.model.dropout", "1.0"]),
    "inf-lr": ({"base.optim.base_lr": float("inf")}, [], ["base.optim.base_lr", "finite"]),
    "nan-momentum": ({"base.optim.momentum": float("nan")}, [], ["base.optim.momentum", "finite"]),
    "set-inf-lr": ({}, ["--set", "optim.base_lr=.inf"], ["base.optim.base_lr", "finite"]),
    "epochs-huge": ({"base.budget.epochs": 1e9}, [], ["base.budget.epochs", "100000"]),
    "set-epochs-huge": ({}, ["--set", "budget.epochs=1e9"], ["base.budget.epochs", "100000"]),
    "batch-huge": ({"base.data.global_batch_size": 2**40}, [], ["base.data.global_batch_size"]),
    "warmup-huge": ({"base.schedule.warmup_epochs": 1e12}, [], ["base.schedule.warmup_epochs"]),
    "milestone-nan": ({"base.schedule.decay": "step", "base.schedule.milestones": [float("nan")]}, [],
                      ["base.schedule.milestones", "finite"]),
    "too-many-milestones": ({"base.schedule.decay": "step", "base.schedule.milestones": list(range(1, 200))}, [],
                            ["base.schedule.milestones"]),
    "max-steps-huge": ({"base.budget.max_steps": 10**12}, [], ["base.budget.max_steps"]),
    "grid-inf": ({"search.optim.base_lr": {"grid": [0.1, float("inf")]}}, [], ["search.optim.base_lr", "finite"]),
    "loguniform-nan": ({"search.optim.base_lr": {"loguniform": [1e-4, float("nan")]}}, [],
                       ["search.optim.base_lr"]),
    # issue #28: data checked on the driver, every member, before any process starts (data/npz.py)
    "npz-object-labels": (_npz_case(y_train=_object(600)), [], ["data.npz", "y_train is an object array"]),
    "npz-object-extra-member": (_npz_case(meta=_object(3)), [], ["data.npz", "meta is an object array"]),
    "npz-nan-features": (_npz_case(x_train=_nan_features), [], ["data.npz", "x_train has NaN or infinite",
                                                                 "example 123"]),
    "npz-negative-label": (_npz_case(y_test=_arr([-1] * 100)), [], ["data.npz", "y_test has negative labels"]),
    "npz-fractional-labels": (_npz_case(y_train=_arr([0.5] * 600)), [], ["data.npz", "y_train", "whole-number"]),
    "npz-labels-2d": (_npz_case(y_train=_arr([[0, 1]] * 600)), [], ["data.npz", "y_train must be 1-D"]),
    "npz-labels-scalar": (_npz_case(y_train=_arr(3)), [], ["data.npz", "y_train must be 1-D"]),
    "npz-string-features": (_npz_case(x_test=_arr([["a"] * 4] * 100)), [], ["data.npz", "x_test must be numeric"]),
    "npz-shapes-differ": (_npz_case(x_test=_arr([[0.0] * 5] * 100, "float32")), [],
                          ["data.npz", "x_train examples (4,) and x_test examples (5,) differ"]),
    "npz-lengths-differ": (_npz_case(y_train=_arr([0] * 599)), [], ["data.npz", "x_train/y_train (600/599)"]),
    # study files: bounded size, depth and alias expansion; duplicate keys; UTF-8 only
    "yaml-alias-bomb": (_bomb_at(("hidden_sizes: [64]", "hidden_sizes: *a10")), [], ["expands to more than"]),
    "yaml-alias-bomb-kwargs": (_bomb_at(("    name: mlp\n", "    name: mlp\n    kwargs: {x: *a10}\n")), [],
                               ["expands to more than"]),
    "yaml-alias-bomb-search": (_bomb_at(("{grid: [none, linear]}", "{grid: *a10}")), [], ["expands to more than"]),
    "yaml-deep-nesting": (_SMOKE_TEXT + "extra: " + "[" * 5000 + "]" * 5000 + "\n", [], ["nested deeper than 32"]),
    "yaml-huge-string": (_SMOKE_TEXT.replace("description: a", "description: " + "x" * 200_000 + " a"), [],
                         ["a value of 200", "characters, over the 10000 allowed"]),
    "yaml-file-too-large": (_SMOKE_TEXT + "# " + "x" * (2 << 20) + "\n", [], ["over 1048576 bytes"]),
    "yaml-utf16": (_SMOKE_TEXT.encode("utf-16"), [], ["UTF-16", "save it as UTF-8"]),
    "yaml-latin1": (_SMOKE_TEXT.replace("a seconds-long", "caf\xe9 seconds-long").encode("latin-1"), [],
                    ["not UTF-8", "0xe9", "line 3"]),
    "yaml-duplicate-key": (_SMOKE_TEXT.replace("  seed: 0\n", "  seed: 0\n  seed: 1\n"), [],
                           ["key 'seed' is given twice", "line 7"]),
    "yaml-duplicate-top-key": (_SMOKE_TEXT + "report:\n  tolerance: 2.0\n", [], ["key 'report' is given twice"]),
    "set-alias-bomb": ({}, ["--set", "model.kwargs={" + ", ".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 4) if i else '1, 1'}]" for i in range(11)) + "}"],
                       ["--set", "expands to more than"]),
    "escape-bytes-in-key": ({"base.optim.\x1b[31mlr\nx": 0.1}, [], ["\\x1b[31mlr\\nx", "unknown key"]),
    "grid-too-large": ({"search.optim.base_lr": {"grid": [0.01 * i for i in range(1, 101)]},
                        "search.optim.momentum": {"grid": [0.001 * i for i in range(100)]},
                        "search.optim.weight_decay": {"grid": [0.0, 0.1]}}, [],
                       ["search.optim.momentum", "more than 10000 trials"]),
    "smoke-block-a-list": ({"smoke": [1, 2]}, [], ["smoke", "must be a mapping"]),
    "smoke-base-a-list": ({"smoke": {"base": [1, 2]}}, [], ["smoke.base", "must be a mapping"]),
    "smoke-unknown-key": ({"smoke": {"bsae": {}}}, [], ["smoke", "'bsae'", "did you mean 'base'"]),
    "metric-name-mlflow-refuses": ({"base.task.name": "task_fixtures_names:at_sign_metric",
                                    "tuner.metric": "val_mse@1"}, [], ["base.task.name", "'val_mse@1'", "MLflow"]),
    "task-train-size-zero": ({"base.task.name": "task_fixtures_names:zero_train_size", "tuner.metric": "val_mse"}, [],
                             ["base.task.name", "train_size(cfg) returned 0", "positive int"]),
    "task-train-size-text": ({"base.task.name": "task_fixtures_names:text_train_size", "tuner.metric": "val_mse"}, [],
                             ["base.task.name", "returned 'many'"]),
    "seed-negative": ({"base.seed": -1}, [], ["base.seed", "-1"]),
    "seed-huge": ({"base.seed": 2**70}, [], ["base.seed"]),
    "seeds-negative": ({"tuner.seeds": [0, -3]}, [], ["tuner.seeds", "-3"]),
    "num-samples-huge": ({"tuner.num_samples": 10**12}, [], ["tuner.num_samples"]),
    "loader-workers-huge": ({"base.data.loader_workers": 10**6}, [], ["base.data.loader_workers"]),
    # the model's options, checked by validate without building it (they once failed every trial)
    "model-kwargs-unknown": ({"base.model.kwargs": {"bogus": 1}}, [], ["base.model.kwargs", "bogus", "hidden_sizes"]),
    "model-factory-misspelled": ({"base.model.name": "factory", "base.model.factory": "torch.nn:Linearr"}, [],
                                 ["base.model.factory", "'Linearr'"]),
    "model-factory-no-module": ({"base.model.name": "factory", "base.model.factory": "no_such_pkg.models:net"}, [],
                                ["base.model.factory", "no_such_pkg"]),
    "model-factory-kwargs": ({"base.model.name": "factory", "base.model.factory": "torch.nn:Linear",
                              "base.model.kwargs": {"bogus": 1}}, [], ["base.model.kwargs", "in_features"]),
    "model-factory-on-mlp": ({"base.model.factory": "torch.nn:Linear"}, [], ["base.model.factory", "'mlp'"]),
    "baseline-model-kwargs": ({"baseline": {"model.kwargs": {"bogus": 1}}}, [], ["baseline.model.kwargs", "bogus"]),
    "task-factory-raises": ({"base.task.name": "task_fixtures_names:factory_raises", "tuner.metric": "val_mse"}, [],
                            ["base.task.name", "RuntimeError: cannot build: token expired"]),
    "task-data-raises": ({"base.task.name": "task_fixtures_names:data_raises", "tuner.metric": "val_mse"}, [],
                         ["base.task.name", "OSError: data server down"]),
}

# errors in the command line itself name the flag, not the study file
FLAG_ERRORS = {"set-no-equals", "workers-not-int", "workers-no-value", "unknown-flag", "set-alias-bomb"}
# what the tests themselves put in the working folder; anything else there was written by the command
OURS = {"study.yaml", "data.npz", "a-file", "store.db", "a-dir"}


def _write_case(tmp_path: Path, edits) -> Path:
    path = tmp_path / "study.yaml"
    if isinstance(edits, bytes):
        path.write_bytes(edits)
    elif isinstance(edits, str):
        path.write_text(edits)
    else:
        raw = yaml.safe_load(SMOKE.read_text())
        for k, v in edits.items():
            if isinstance(v, Npz):
                v = str(v.write(tmp_path))
            if k.startswith("search."):  # search keys are dotted themselves
                raw["search"][k[len("search."):]] = v
            else:
                _set(raw, k, v)
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


def assert_one_line_error(rc: int, err: str, must_contain, cwd: Path) -> str:
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("largebatch: error:"), line
    assert "Traceback" not in err
    for s in must_contain:
        assert s in line, (s, line)
    assert all(c.isprintable() for c in line), f"control characters reach the terminal: {line!r}"
    # nothing was started or written
    assert not (cwd / "runs").exists()
    assert not list(cwd.rglob("mlflow.db")) and not (cwd / "mlruns").exists()
    left = sorted(p.relative_to(cwd).as_posix() for p in cwd.rglob("*") if p.relative_to(cwd).as_posix() not in OURS)
    assert not left, f"a refused command left {left} in its working folder"
    if "ray" in sys.modules:
        assert not sys.modules["ray"].is_initialized()
    return line


def test_there_are_at_least_70_cases():
    assert len(CASES) >= 70


@pytest.mark.parametrize("written", ["1e-3", "1.0e-3", "0.001", "1E-3"])
def test_numbers_read_the_same_in_a_file_and_in_set(written, in_tmp, capsys):
    from largebatch.config import load_study, parse_sets

    text = SMOKE.read_text().replace("base_lr: 0.05", f"base_lr: {written}")
    assert f"base_lr: {written}" in text
    path = in_tmp / "study.yaml"
    path.write_text(text)
    assert load_study(path).base.optim.base_lr == 0.001
    assert load_study(SMOKE, parse_sets([f"optim.base_lr={written}"])).base.optim.base_lr == 0.001


@pytest.mark.parametrize("case", list(CASES))
def test_validate_bad_input(case, in_tmp, capsys):
    edits, extra, must_contain = CASES[case]
    path = _write_case(in_tmp, edits)
    rc = main(["validate", str(path), *extra])
    out, err = capsys.readouterr()
    line = assert_one_line_error(rc, err, must_contain, in_tmp)
    if case not in FLAG_ERRORS:
        assert str(path) in line, "a config error names the study file"
    assert "valid" not in out


@pytest.mark.parametrize("case", ["batch-not-divisible", "unknown-dataset", "grid-value-invalid",
                                  "malformed-yaml", "workers-zero", "set-wrong-type", "workers-not-int",
                                  "task-does-not-import", "task-items-not-tensors", "metric-not-reported"])
def test_train_fails_before_ray_starts(case, in_tmp, capsys):
    edits, extra, must_contain = CASES[case]
    path = _write_case(in_tmp, edits)
    t0 = time.monotonic()
    rc = main(["train", str(path), *extra])
    elapsed = time.monotonic() - t0
    _, err = capsys.readouterr()
    assert_one_line_error(rc, err, must_contain, in_tmp)
    assert elapsed < 10, f"bad input took {elapsed:.1f}s: something heavy (Ray?) started first"


def test_train_bad_storage_uri_fails_before_ray(in_tmp, capsys):
    rc = main(["train", str(SMOKE), "--storage", "ftp://host/x"])
    _, err = capsys.readouterr()
    assert_one_line_error(rc, err, ["--storage", "ftp://host/x"], in_tmp)


@pytest.mark.parametrize("flag, value, must_contain", [
    ("--output-json", "no-such-folder/final.json", ["--output-json", "no-such-folder", "does not exist"]),
    ("--output-json", ".", ["--output-json", "is a folder"]),
    ("--storage", "a-file", ["--storage", "a-file", "cannot write"]),
])
def test_train_preflight_before_ray(flag, value, must_contain, in_tmp, capsys):
    (in_tmp / "a-file").write_text("not a folder")
    t0 = time.monotonic()
    rc = main(["train", str(SMOKE), flag, value])
    _, err = capsys.readouterr()
    assert_one_line_error(rc, err, must_contain, in_tmp)
    assert time.monotonic() - t0 < 10, "something heavy (Ray?) started before the preflight"


@pytest.mark.parametrize("name", ["my study", "x'y", "a/b", ".hidden", "x" * 101])
def test_tune_name_is_checked_before_anything_starts(name, in_tmp, capsys):
    rc = main(["tune", str(SMOKE), "--name", name])
    _, err = capsys.readouterr()
    assert_one_line_error(rc, err, ["--name", "letters, digits"], in_tmp)


@pytest.mark.parametrize("argv, must_contain", [
    (["validate", "missing.yaml"], ["missing.yaml", "no such file"]),
    (["validate"], ["study"]),
    ([], ["cmd"]),
    (["frobnicate", "x.yaml"], ["frobnicate"]),
    (["train", "missing.yaml"], ["missing.yaml"]),
])
def test_bad_command_lines(argv, must_contain, in_tmp, capsys):
    rc = main(argv)
    _, err = capsys.readouterr()
    assert_one_line_error(rc, err, must_contain, in_tmp)


def test_validate_the_smoke_study(in_tmp, capsys):
    rc = main(["validate", str(SMOKE)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "valid" in out and "per_worker_batch" in out
    assert "per_worker_batch   16" in out  # 32 examples / 2 workers (tuner.workers_per_trial), no accumulation
    assert not (in_tmp / "runs").exists()


def test_validate_with_workers_and_sets(in_tmp, capsys):
    rc = main(["validate", str(SMOKE), "--workers", "4", "--set", "data.per_worker_batch_cap=4"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "per_worker_batch   4" in out and "grad_accum_steps   2" in out and "num_workers        4" in out


# ---- issue #28: no command that exits 2 leaves anything in its working folder, and none starts Ray first -------

@pytest.fixture
def no_ray(monkeypatch):
    import largebatch.raylib

    def refuse(*a, **k):
        raise AssertionError("Ray was started for bad input")

    monkeypatch.setattr(largebatch.raylib, "init_ray", refuse)


# cases about the search grid or the baseline: `train` runs one trial (the base unless asked) and does not refuse them
# (tests/unit/test_config.py test_train_checks_its_one_trial_and_tune_the_grid_too)
TUNE_ONLY = ("grid-batch-not-divisible", "grid-batch-over-dataset", "baseline-model-kwargs")


@pytest.mark.parametrize("case, command", [(case, command) for case in CASES for command in ("train", "tune")
                                           if not (command == "train" and case in TUNE_ONLY)])
def test_no_refused_command_writes_anything(case, command, tmp_path, monkeypatch, no_ray, capsys):
    edits, extra, _ = CASES[case]
    inputs, cwd = tmp_path / "in", tmp_path / "cwd"
    inputs.mkdir()
    cwd.mkdir()
    path = _write_case(inputs, edits)
    before = sorted(p.name for p in inputs.iterdir())
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rc = main([command, str(path), *extra])
    _, err = capsys.readouterr()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("largebatch: error:"), err
    assert all(c.isprintable() for c in err.rstrip("\n")), err
    assert not list(cwd.iterdir()), f"{command} left {sorted(p.name for p in cwd.iterdir())}"
    assert sorted(p.name for p in inputs.iterdir()) == before, "a cache or lock was written beside the inputs"


def _busy_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


# (argv with {cwd}, files to make first, substrings of the one line)
PREFLIGHT = {
    "tune-mlflow-unreachable": (["tune", str(SMOKE), "--mlflow", "http://127.0.0.1:9/"], {},
                                ["--mlflow", "cannot reach the MLflow server"]),
    "tune-address-unreachable": (["tune", str(SMOKE), "--address", "127.0.0.1:9"], {},
                                 ["--address", "127.0.0.1:9"]),
    "train-address-unreachable": (["train", str(SMOKE), "--address", "127.0.0.1:9"], {},
                                  ["--address", "127.0.0.1:9"]),
    "tune-sqlite-under-a-file": (["tune", str(SMOKE), "--mlflow", "sqlite:///{cwd}/a-file/child.db"],
                                 {"a-file": "x"}, ["--mlflow", "a-file' is a file"]),
    "tune-sqlite-not-a-database": (["tune", str(SMOKE), "--mlflow", "sqlite:///{cwd}/store.db"],
                                   {"store.db": "not sqlite"}, ["--mlflow", "not an SQLite database"]),
    "tune-sqlite-a-folder": (["tune", str(SMOKE), "--mlflow", "sqlite:///{cwd}/a-dir"], {"a-dir/": ""},
                             ["--mlflow", "is not a file"]),
    "tune-smoke-without-smoke-block": (["tune", "{cwd}/study.yaml", "--smoke"],
                                       {"study.yaml": "name: plain\nbase: {data: {dataset: digits}}\n"},
                                       ["smoke", "no smoke: block"]),
    "report-no-store": (["report", "--experiment", "x"], {}, ["--mlflow", "no MLflow store"]),
    "report-out-under-a-file": (["report", "--experiment", "x", "--out", "a-file/report"], {"a-file": "x"},
                                ["--out", "a-file"]),
    "ui-no-store": (["ui"], {}, ["--mlflow", "no MLflow store"]),
    "ui-store-a-folder": (["ui", "--mlflow", "sqlite:///{cwd}/a-dir"], {"a-dir/": ""}, ["--mlflow", "is not a file"]),
    "ui-busy-port": (["ui", "--mlflow", "sqlite:///{cwd}/store.db", "--port", "{port}"], {"store.db": ""},
                     ["--port", "not free"]),
}


@pytest.mark.parametrize("case", list(PREFLIGHT))
def test_a_refused_preflight_leaves_nothing(case, in_tmp, capsys):
    argv, files, must_contain = PREFLIGHT[case]
    for name, text in files.items():
        if name.endswith("/"):
            (in_tmp / name).mkdir()
        else:
            (in_tmp / name).write_text(text)
    before = sorted(p.relative_to(in_tmp).as_posix() for p in in_tmp.rglob("*"))
    busy = _busy_port()
    try:
        port = str(busy.getsockname()[1])
        rc = main([a.replace("{cwd}", str(in_tmp)).replace("{port}", port) for a in argv])
    finally:
        busy.close()
    _, err = capsys.readouterr()
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("largebatch: error:"), err
    for s in must_contain:
        assert s in lines[0], (s, lines[0])
    assert sorted(p.relative_to(in_tmp).as_posix() for p in in_tmp.rglob("*")) == before


def test_a_nested_mapping_sets_only_its_keys(in_tmp):
    from largebatch.config import baseline_trial, load_study, parse_sets

    text = SMOKE.read_text().replace("baseline:\n  data.global_batch_size: 32\n",
                                     "baseline:\n  data: {global_batch_size: 64}\n")
    assert "data: {global_batch_size: 64}" in text
    text = text.replace("    dataset: digits\n", "    dataset: digits\n    train_subset: 500\n")
    path = in_tmp / "study.yaml"
    path.write_text(text)
    study = load_study(path)
    baseline = baseline_trial(study, str(path))
    assert baseline.data.global_batch_size == 64
    assert baseline.data.dataset == "digits" and baseline.data.train_subset == 500  # base's, not the defaults
    study = load_study(path, parse_sets(["data={global_batch_size: 128}"]))
    assert study.base.data.global_batch_size == 128
    assert study.base.data.dataset == "digits" and study.base.data.train_subset == 500
    assert baseline_trial(study, str(path)).data.global_batch_size == 64  # the baseline pins its own
