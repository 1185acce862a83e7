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


# id -> (edits of digits-smoke as {dotted: value} or raw text, extra argv, substrings stderr must contain)
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
    "unknown-optimizer": ({"base.optim.name": "adam"}, [], ["base.optim.name", "'adam'", "adamw"]),
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
}

# errors in the command line itself name the flag, not the study file
FLAG_ERRORS = {"set-no-equals", "workers-not-int", "workers-no-value", "unknown-flag"}


def _write_case(tmp_path: Path, edits) -> Path:
    path = tmp_path / "study.yaml"
    if isinstance(edits, str):
        path.write_text(edits)
    else:
        raw = yaml.safe_load(SMOKE.read_text())
        for k, v in edits.items():
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
    # nothing was started or written
    assert not (cwd / "runs").exists()
    assert not list(cwd.rglob("mlflow.db")) and not (cwd / "mlruns").exists()
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
