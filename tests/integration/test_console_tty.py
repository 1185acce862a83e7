"""What a person sees: `largebatch tune` under a pseudo-terminal (live display, no Ray noise) and in a pipe (plain
lines), on a real local Ray."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SMOKE = REPO / "tune_spaces" / "digits-smoke.yaml"
# what Ray printed before: Tune's tables and trial ids, Train's start-up, worker echoes, core_worker E-lines
RAY_NOISE = ("core_worker", "TrainController", "tune_trial_", "RayTrainWorker", "Reporting training result",
             "Checkpoint successfully created", "tensorboard", "PreemptionWatcher", "Trial status:",
             "Connected to Ray cluster", "Configuration for experiment")
_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-Za-z]|[=>78])")


def _env(tmp_path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "40"}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "LARGEBATCH_VERBOSE"):
        env.pop(key, None)
    return env


def test_tune_on_a_terminal_shows_live_progress_and_no_ray_noise(tmp_path):
    import pexpect

    t0 = time.time()
    child = pexpect.spawn(str(VENV_BIN / "largebatch"), ["tune", str(SMOKE), "--smoke"], cwd=str(tmp_path),
                          env=_env(tmp_path), dimensions=(40, 160), encoding="utf-8", codec_errors="replace",
                          timeout=900)
    chunks = []
    while True:
        try:
            chunks.append(child.read_nonblocking(65536, timeout=900))
        except pexpect.EOF:
            break
    child.close()
    raw = "".join(chunks)
    screen = _ANSI.sub("", raw).replace("\r", "\n")
    (tmp_path / "screen.txt").write_text(screen)  # kept for a person reading a failure
    assert child.exitstatus == 0, screen[-3000:]
    assert "\x1b[" in raw  # it drew in place (cursor moves), not plain lines
    # the bar: trials done / total, elapsed and ETA, drawn with rich's bar glyphs
    assert re.search(r"digits-smoke .*━.* \d/5 trials +\d+:\d\d elapsed +ETA", screen), screen[-3000:]
    assert "5/5 trials" in screen
    # running rows and finished lines by readable names, never by Tune's ids
    assert "running trial" in screen and "examples/s" in screen
    for name in ("baseline B=32 none warmup=0ep", "B=128 none warmup=0ep", "B=128 linear warmup=0ep",
                 "B=512 none warmup=0ep", "B=512 linear warmup=0ep"):
        assert re.search(rf"done +\d/5 +{re.escape(name)} +best_val_acc \d+\.\d\d%", screen), name
    assert re.search(r"best so far: B=\d+ \w+ warmup=0ep +best_val_acc \d+\.\d\d%.*\| +baseline B=32 none", screen)
    assert "max_safe_batch" in screen  # the report still ends it
    noise = [word for word in RAY_NOISE if word.lower() in screen.lower()]
    assert not noise, (noise, screen[-3000:])
    print(f"terminal study: {time.time() - t0:.0f} s")


PLAIN_STUDY = {
    "name": "console-plain",
    "base": {"data": {"dataset": "digits", "global_batch_size": 32}, "model": {"name": "mlp", "hidden_sizes": [32]},
             "optim": {"name": "sgd", "base_lr": 0.05, "base_batch_size": 32}, "budget": {"epochs": 2}},
    # the baseline, one that trains and one that diverges (base_lr 500)
    "search": {"data.global_batch_size": {"grid": [128]}, "optim.base_lr": {"grid": [0.05, 500.0]}},
    "tuner": {"searcher": "grid", "workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent": 1},
    "baseline": {"data.global_batch_size": 32, "optim.base_lr": 0.05},
    "report": {"tolerance": 1.0},
}


def test_tune_in_a_pipe_prints_one_plain_line_per_trial(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(PLAIN_STUDY))
    t0 = time.time()
    p = subprocess.run([str(VENV_BIN / "largebatch"), "tune", str(path)], cwd=tmp_path, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    out = p.stdout
    assert "\x1b[" not in out + p.stderr  # no cursor movement, no colour: a log file reads as text
    lines = out.splitlines()
    done = [ln for ln in lines if re.match(r"^(done|diverged|failed|stopped) +\d/3 ", ln)]
    assert len(done) == 3, out
    assert any(re.fullmatch(r"done +\d/3 +baseline B=32 none warmup=0ep +best_val_acc \d+\.\d\d% +\d+\.\d s "
                            r"\(training \d+\.\d s\)", ln) for ln in done), done
    assert any(re.fullmatch(r"diverged +\d/3 +B=128 none warmup=0ep base_lr=500: .*loss.*at step \d+", ln)
               for ln in done), done
    # between them only our own lines; Ray and MLflow say nothing unless something is wrong
    noise = [word for word in RAY_NOISE if word.lower() in (out + p.stderr).lower()]
    assert not noise, (noise, out[-2000:], p.stderr[-2000:])
    assert p.stderr.strip() == "", p.stderr[-2000:]
    print("\n".join(done) + f"\nplain study: {time.time() - t0:.0f} s")


@pytest.mark.slow
def test_verbose_brings_rays_own_output_back(tmp_path):
    """`-v`: Ray's defaults, worker echoes and Train's start-up included (the quiet run hides exactly these)."""
    t0 = time.time()
    p = subprocess.run([str(VENV_BIN / "largebatch"), "train", str(SMOKE), "-v", "--set", "budget.epochs=1",
                        "--storage", str(tmp_path / "runs")], cwd=tmp_path, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=900)
    both = p.stdout + p.stderr
    assert p.returncode == 0, both[-3000:]
    assert "status=completed" in p.stdout and "epoch 1/1" in p.stdout  # our own lines as without -v
    assert "Started training worker group" in both  # Train's start-up (ray.train at INFO)
    assert "(RayTrainWorker pid=" in both  # worker output echoed to the driver (log_to_driver)
    assert "Connected to Ray cluster" in both  # the driver's ray logger at INFO
    print(f"verbose train: {time.time() - t0:.0f} s")
