"""A machine that never ran Ray, and a CLI that is stopped from outside.

- `largebatch train` starts its local head with an empty HOME (no ~/.ray/auth_token), with token auth on and a
  token of its own that is gone afterwards; a user's ~/.ray/auth_token is neither read nor changed.
- SIGTERM and SIGHUP stop it like Ctrl-C; a SIGKILL leaves no raylet/GCS behind (the head dies with its parent).
Processes are looked up by the PIDs this test started (the CLI's descendants), never by name.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from procs import alive, cmdline, descendants

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

# a trial long enough to be stopped mid-run (fashion-mnist would need the Debian package: digits is always there)
LONG_STUDY = {
    "name": "it-signals",
    "base": {"data": {"dataset": "digits", "global_batch_size": 8},
             "model": {"name": "mlp", "hidden_sizes": [64]},
             "optim": {"name": "sgd", "base_lr": 0.01, "base_batch_size": 8}, "budget": {"epochs": 400}},
    "tuner": {"workers_per_trial": 1, "cpus_per_worker": 1},
}
SHORT_STUDY = {**LONG_STUDY, "name": "it-fresh-home",
               "base": {**LONG_STUDY["base"], "data": {"dataset": "digits", "global_batch_size": 64},
                        "budget": {"epochs": 2}}}


def _short_dir(prefix: str) -> Path:
    # Ray's AF_UNIX socket paths are capped at 107 bytes: pytest's tmp_path is too long for TMPDIR
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def _env(home: Path, tmp: Path) -> dict[str, str]:
    drop = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(HOME=str(home), TMPDIR=str(tmp), PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return env


def _ray_daemons(pids: set[int]) -> set[int]:
    return {p for p in pids if any(n in cmdline(p) for n in ("raylet", "gcs_server", "ray start"))}


def test_train_on_a_fresh_home_uses_a_private_token_and_leaves_user_token_alone(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(SHORT_STUDY))
    tmp = _short_dir("lbfh-")
    for case in ("empty", "user-token"):
        home = tmp_path / f"home-{case}"
        home.mkdir()
        user_token = home / ".ray" / "auth_token"
        if case == "user-token":
            user_token.parent.mkdir()
            user_token.write_text("the-users-cluster-token")
            before = user_token.stat()
        p = subprocess.run([str(VENV_BIN / "largebatch"), "train", str(study), "--storage", str(tmp_path / "runs"),
                            "--output-json", str(tmp_path / f"{case}.json")],
                           env=_env(home, tmp), cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, (case, p.stdout[-2000:], p.stderr[-3000:])
        assert "status=completed" in p.stdout
        assert not list(tmp.glob("lb-ray-auth-*")), "the head's token folder outlived the command"
        if case == "empty":
            assert not (home / ".ray").exists(), "the local head wrote into the user's ~/.ray"
        else:
            after = user_token.stat()
            assert user_token.read_text() == "the-users-cluster-token"
            assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
            assert sorted(p.name for p in user_token.parent.iterdir()) == ["auth_token"]


def test_head_token_file_is_private(tmp_path):
    from largebatch.raylib import LocalHead

    head = LocalHead(num_cpus=1)
    tmp = _short_dir("lbtok-")
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = None  # gettempdir() caches: make it read TMPDIR again
    try:
        head.start()
        token = head.token_path
        assert token is not None and token.parent.parent == tmp
        assert token.stat().st_mode & 0o777 == 0o600
        assert token.parent.stat().st_mode & 0o777 == 0o700
        assert len(token.read_text()) >= 32
        assert head.env()["RAY_AUTH_TOKEN_PATH"] == str(token) and head.env()["RAY_AUTH_MODE"] == "token"
    finally:
        head.stop()
        if old is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old
        tempfile.tempdir = None
    assert not token.parent.exists()


def _start_long_train(tmp_path: Path, tmp: Path) -> tuple[subprocess.Popen, Path]:
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(LONG_STUDY))
    log = tmp_path / "train.log"
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    proc = subprocess.Popen([str(VENV_BIN / "largebatch"), "train", str(study), "--storage", str(tmp_path / "runs")],
                            env=_env(home, tmp), cwd=tmp_path, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if "epoch 2/400" in log.read_text(errors="replace"):  # training runs: every Ray process is up
            return proc, log
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"training did not start: {log.read_text()[-3000:]}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGHUP, marks=pytest.mark.slow),
                                 pytest.param(signal.SIGKILL, marks=pytest.mark.slow)], ids=lambda s: s.name)
def test_stopping_the_cli_leaves_no_ray_processes(tmp_path, sig):
    tmp = _short_dir("lbsig-")
    proc, log = _start_long_train(tmp_path, tmp)
    try:
        ours = descendants(proc.pid)
        assert _ray_daemons(ours), f"no raylet/gcs_server below the CLI: {[cmdline(p) for p in ours]}"
        t0 = time.time()
        proc.send_signal(sig)
        rc = proc.wait(timeout=120)
        if sig != signal.SIGKILL:
            assert rc == 128 + sig, (rc, log.read_text()[-3000:])
            assert f"interrupted by {sig.name}" in log.read_text()
        deadline = time.time() + 90
        while time.time() < deadline and any(alive(p) for p in ours):
            time.sleep(0.5)
        left = [(p, cmdline(p)[:120]) for p in ours if alive(p)]
        assert not left, f"left running after {sig.name}: {left}"
        print(f"{sig.name}: every Ray process of the CLI gone {time.time() - t0:.1f} s after the signal")
    finally:
        for p in descendants(proc.pid) if proc.poll() is None else ():
            os.kill(p, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
