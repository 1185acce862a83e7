"""The overfit check (largebatch/check.py, `largebatch check`; issue #30): each fault of a task is one line, exit 2,
through the real CLI, while the same task without the fault passes; `tune` and `train` refuse a bad task before Ray
starts or anything is written, and `--no-check` skips the check. The fixtures are tests/unit/check_fixtures.py."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from largebatch import check
from largebatch.check import CheckResult, check_configs, check_trial
from largebatch.cli import main
from largebatch.config import TrialConfig, load_study
from largebatch.errors import BadInput

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = "tests.unit.check_fixtures"
CLI = Path(sys.executable).with_name("largebatch")

# factory -> (tuner.metric, substrings the fault's line must hold)
FAULTS = {
    "scalar_loss": ("val_acc", ["not a scalar", "Tensor(16,)", "reduction='mean' or .mean()"]),
    "output_shape": ("val_mse", ["does not match the targets", "Tensor(16,)", "Tensor(16, 1)", "(16, 16)"]),
    "nan_inputs": ("val_acc", ["nan at step 1", "inputs hold NaN or inf"]),
    "dead_model": ("val_acc", ["the loss did not fall", "dead"]),
}


def _study(tmp_path: Path, factory: str, fault: bool, metric: str, **base) -> Path:
    raw = {"name": f"check-{factory.replace('_', '-')}",
           "base": {"task": {"name": f"{FIXTURES}:{factory}", "kwargs": {"fault": fault}},
                    "data": {"global_batch_size": 16}, "optim": {"name": "sgd", "base_lr": 0.05,
                                                                 "base_batch_size": 16},
                    "budget": {"epochs": 1}, **base},
           "search": {"data.global_batch_size": {"grid": [32]}},
           "tuner": {"metric": metric, "workers_per_trial": 1, "cpus_per_worker": 1},
           "baseline": {"data.global_batch_size": 16}}
    path = tmp_path / f"{factory}-{fault}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _cfg(factory: str, **kwargs) -> TrialConfig:
    return TrialConfig.model_validate({"task": {"name": f"{FIXTURES}:{factory}", "kwargs": kwargs}})


def _cli(*argv: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "largebatch"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([*cmd, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _written(folder: Path, *keep: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p not in keep]


# ---------------------------------------------------------------- the four faults, through the real CLI
@pytest.mark.parametrize("factory", list(FAULTS))
def test_check_cli_catches_each_fault_and_passes_the_same_task_without_it(factory, tmp_path):
    metric, must = FAULTS[factory]
    bad, good = _study(tmp_path, factory, True, metric), _study(tmp_path, factory, False, metric)

    out = _cli("check", str(bad), cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    line = lines[0]
    assert line.startswith(f"largebatch: error: {bad}: base.task.name: task '{FIXTURES}:{factory}'"), line
    for s in must:
        assert s in line, (s, line)

    out = _cli("check", str(good), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    shown = [ln for ln in out.stdout.splitlines() if ln.startswith("check (base, task")]
    assert len(shown) == 1, out.stdout  # the baseline builds the same task, model and data: checked once
    start, end = (float(v) for v in shown[0].split("loss ")[1].split(" in ")[0].split(" -> "))
    assert end <= check.FALL_FACTOR * start, shown[0]
    assert " s (" in shown[0] and "building the data" in shown[0], shown[0]  # the cost, printed
    assert _written(tmp_path, bad, good) == []  # the check writes nothing


# ---------------------------------------------------------------- tune and train run it first
@pytest.mark.parametrize("argv", [["tune"], ["train"], ["train", "--baseline"]], ids=" ".join)
def test_tune_and_train_refuse_a_bad_task_before_ray_starts(argv, tmp_path):
    bad = _study(tmp_path, "scalar_loss", True, "val_acc")
    t0 = time.monotonic()
    out = _cli(*argv, str(bad), cwd=tmp_path)
    took = time.monotonic() - t0
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "not a scalar" in lines[0] and "--no-check skips it" in lines[0], out.stderr
    label = "baseline" if "--baseline" in argv else "base"
    assert f": {label}.task.name: " in lines[0], lines[0]
    assert not (tmp_path / "runs").exists() and _written(tmp_path, bad) == []
    assert "ray" not in out.stdout.lower() + out.stderr.lower().replace("--no-check", "")
    assert took < 60, took  # no Ray head, no trial: seconds of imports and the check


class _PastTheCheck(BadInput):
    pass


@pytest.mark.parametrize("cmd", ["tune", "train"])
def test_no_check_skips_it_and_the_check_runs_otherwise(cmd, tmp_path, monkeypatch, capsys):
    """In-process: Ray's preflight, the next step after the check, stands in for Ray starting."""
    import largebatch.raylib as raylib

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def ray_would_start(*a, **k):
        raise _PastTheCheck("ray would start here")

    monkeypatch.setattr(raylib, "preflight_ray", ray_would_start)
    bad = _study(tmp_path, "dead_model", True, "val_acc")
    assert main([cmd, str(bad), "--no-check"]) == 2
    err = capsys.readouterr().err
    assert "ray would start here" in err and "overfit" not in err, err
    assert main([cmd, str(bad)]) == 2
    err = capsys.readouterr().err
    assert "the loss did not fall" in err and "ray would start here" not in err, err
    good = _study(tmp_path, "dead_model", False, "val_acc")
    assert main([cmd, str(good)]) == 2
    captured = capsys.readouterr()
    assert "ray would start here" in captured.err and "[largebatch] check (base, task" in captured.out, captured


def test_tune_resume_does_not_check_again(tmp_path, monkeypatch, capsys):
    import largebatch.raylib as raylib

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(raylib, "preflight_ray", lambda *a, **k: (_ for _ in ()).throw(_PastTheCheck("past")))
    bad = _study(tmp_path, "dead_model", True, "val_acc")
    assert main(["tune", str(bad), "--resume"]) == 2
    assert "past" in capsys.readouterr().err


# ---------------------------------------------------------------- more faults and diagnoses, in-process
@pytest.mark.parametrize("factory, must", [
    ("tuple_output", ["the model returned tuple, not a tensor"]),
    ("frozen", ["no trainable parameters"]),
    ("metric_raises", ["metric 'acc'", "raised IndexError"]),
    ("float_loss", ["is a float, not a tensor"]),
    ("wrong_classes", ["the loss raised IndexError", "Target 3 is out of bounds", "Tensor(16, 3)"]),
    ("unstable", ["to nan at step 3", "numerically unstable"]),
])
def test_other_faults_are_one_line_naming_the_task(factory, must):
    with pytest.raises(BadInput) as e:
        check_trial(_cfg(factory), "study.yaml")
    line = str(e.value)
    assert line.startswith(f"study.yaml: base.task.name: task '{FIXTURES}:{factory}' fails the overfit check: ")
    assert "\n" not in line
    for s in must:
        assert s in line, (s, line)


def test_nan_in_the_model_not_the_inputs_is_told_apart():
    with pytest.raises(BadInput, match="model's output is not finite on finite inputs"):
        check_trial(_cfg("unstable", blowup_at=1), "s.yaml")


@pytest.mark.parametrize("factory", list(FAULTS))
def test_a_good_task_overfits_and_its_metrics_are_computed(factory):
    r = check_trial(_cfg(factory, fault=False), "s.yaml")
    assert isinstance(r, CheckResult) and r.examples == check.CHECK_EXAMPLES
    assert 1 <= r.steps <= check.MAX_STEPS and r.loss_end <= check.FALL_FACTOR * r.loss_start
    assert set(r.metrics) == {FAULTS[factory][0].removeprefix("val_")}
    assert r.seconds >= r.data_s >= 0


def test_the_check_leaves_rng_and_threads_as_they_were():
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    before = torch.get_rng_state()
    check_trial(_cfg("dead_model"), "s.yaml", threads=1)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.get_num_threads() == threads


def test_a_ray_data_task_overfits_a_batch_of_its_eval_split():
    r = check_trial(_cfg("ray_rows"), "s.yaml")
    assert r.examples == check.CHECK_EXAMPLES and r.loss_end <= check.FALL_FACTOR * r.loss_start


def test_the_baseline_is_checked_when_it_builds_another_model(tmp_path):
    same = load_study(_study(tmp_path, "dead_model", False, "val_acc"))
    assert [label for label, _ in check_configs(same, "s")] == ["base"]
    assert [label for label, _ in check_configs(same, "s", baseline=True)] == ["baseline"]
    raw = yaml.safe_load(_study(tmp_path, "dead_model", False, "val_acc").read_text())
    raw["baseline"]["task.kwargs.fault"] = True
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(raw))
    other = load_study(path)
    assert [label for label, _ in check_configs(other, "s")] == ["base", "baseline"]
    with pytest.raises(BadInput, match=r"baseline\.task\.name: .*the loss did not fall"):
        check.check_study(other, "s", echo=lambda line: None)


def test_broadcast_shapes_follow_torch():
    for a, b in [((16,), (16, 1)), ((16, 10), (16,)), ((16, 1, 4), (16, 4)), ((3, 1), (1, 3)), ((2, 3), (3, 2)),
                 ((0, 1), (1, 5)), ((), (4,))]:
        try:
            want = tuple(torch.broadcast_shapes(a, b))
        except RuntimeError:
            want = None
        assert check._broadcast(a, b) == want, (a, b)


def test_every_shipped_study_passes_the_check(study_file):
    """No false alarm on the studies this repository ships (tune_spaces/*.yaml), baselines included."""
    study = load_study(study_file)
    lines: list[str] = []
    results = check.check_study(study, str(study_file), echo=lines.append)
    assert [r.label for r in results] == [label for label, _ in check_configs(study, str(study_file))]
    for r in results:
        assert r.loss_end <= check.FALL_FACTOR * r.loss_start, r.line()
    assert len(lines) == len(results) and all(line.startswith("check (") for line in lines)
