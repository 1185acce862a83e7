"""`largebatch train|tune --address` against a real token-auth head (`ray start --head`, started here and stopped by
PID): a missing or different token is one line on stderr and exit code 2, before anything is written."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, VENV_BIN
from largebatch.raylib import LocalHead

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

STUDY = str(REPO / "tune_spaces/digits-smoke.yaml")


@pytest.fixture(scope="module")
def token_head(short_tmp):
    """A one-node Ray head with token auth and a token of its own (largebatch's light head: `ray start --head`)."""
    old_tmp = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(short_tmp)  # Ray's temp dir: short, ours
    head = LocalHead(num_cpus=1, object_store_mb=100, log_monitor=False)
    try:
        yield head.start()
    finally:
        head.stop()
        if old_tmp is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_tmp


def _client_env(tmp_path: Path, **auth: str) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)  # empty: no ~/.ray/auth_token
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "HOME"}
    return {**env, "HOME": str(home), **auth}


CASES = {
    "no_mode": ({}, "requires a token and this client sent none (RAY_AUTH_MODE is not token)"),
    "mode_without_token": ({"RAY_AUTH_MODE": "token"}, "RAY_AUTH_MODE=token but no token was found"),
    "wrong_token": ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},
                    "rejected this client's token (a different token)"),
}


@pytest.mark.parametrize("cmd, case", [("train", "no_mode"), ("train", "mode_without_token"),
                                       ("train", "wrong_token"), ("tune", "wrong_token")])
def test_wrong_or_missing_token_is_one_line(token_head, tmp_path, cmd, case):
    auth, what = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    r = subprocess.run([str(VENV_BIN / "largebatch"), cmd, STUDY, "--address", token_head.address], cwd=work,
                       env=_client_env(tmp_path, **auth), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr  # no Ray C++ retry lines, no traceback
    assert lines[0].startswith("largebatch: error: --address: ") and what in lines[0], lines[0]
    assert "export RAY_AUTH_MODE=token" in lines[0] and "RAY_AUTH_TOKEN_PATH" in lines[0]
    assert "Traceback" not in r.stdout + r.stderr and "gcs_client" not in r.stdout + r.stderr
    assert list(work.iterdir()) == []  # nothing written


def test_the_right_token_passes_the_check(token_head, tmp_path):
    """The same check with the head's own token: no error (Ray's own client then connects)."""
    import ray
    from largebatch import rayauth, raylib

    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_head.token_path)}
    saved = {k: os.environ.get(k) for k in (*env, "RAY_AUTH_TOKEN", "HOME")}
    os.environ.update(env)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    try:
        raylib._reload_auth_config()
        rayauth._check_auth(token_head.address)
        os.environ["RAY_AUTH_TOKEN"] = "1" * 64  # wins over the file: now refused
        raylib._reload_auth_config()
        with pytest.raises(raylib.BadInput, match="rejected this client's token"):
            rayauth._check_auth(token_head.address)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        raylib._reload_auth_config()
    assert not ray.is_initialized()
