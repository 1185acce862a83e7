"""The embedded head's settings (largebatch/raylib.py): which Ray processes it asks for, the object-store size and
the address-space check that runs before Ray starts. No Ray is started here (tests/e2e/test_cluster_auth.py and
bench/embedded_head.py start real heads)."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from largebatch import raylib
from largebatch.errors import BadInput

REPO = Path(__file__).resolve().parents[2]


def _command(head: raylib.LocalHead) -> tuple[list[str], dict[str, str]]:
    """The `ray start` command line start() would run, without running it."""
    seen = {}

    class Stop(Exception):
        pass

    def fake_popen(cmd, env, **kw):
        seen["cmd"], seen["env"] = cmd, env
        raise Stop

    orig = raylib.subprocess.Popen
    raylib.subprocess.Popen = fake_popen
    try:
        with pytest.raises(Stop):
            head.start()
    finally:
        raylib.subprocess.Popen = orig
        head.stop()
    return seen["cmd"], seen["env"]


def test_light_head_asks_for_no_dashboard_monitor_or_client_server(monkeypatch):
    monkeypatch.delenv(raylib.DASHBOARD_ENV, raising=False)
    cmd, env = _command(raylib.LocalHead(num_cpus=1, object_store_mb=256, log_monitor=False))
    assert "--include-dashboard=false" in cmd and "--no-monitor" in cmd
    assert "--include-log-monitor=false" in cmd
    assert f"--object-store-memory={256 * 2**20}" in cmd
    assert env["RAY_START_HOOK"] == "largebatch.raylib._no_client_server"
    assert raylib.LocalHead(num_cpus=1).dashboard_url is None


def test_our_head_stops_without_rays_30_s_drain(monkeypatch):
    """Ray 2.60 drains a `ray start --block` node on SIGTERM for up to 30 s; our head is stopped when nothing runs on
    it, so it asks for no drain (a `largebatch train` ended 42 s after its last epoch with the drain, 2.4 s without).
    A value the user set is kept."""
    monkeypatch.delenv("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", raising=False)
    _, env = _command(raylib.LocalHead(num_cpus=1))
    assert env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] == "0"
    monkeypatch.setenv("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "5")
    _, env = _command(raylib.LocalHead(num_cpus=1))
    assert env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] == "5"


def test_full_head_is_rays_default_head(monkeypatch):
    monkeypatch.setenv(raylib.DASHBOARD_ENV, "1")
    head = raylib.LocalHead(num_cpus=1, object_store_mb=None)
    cmd, env = _command(head)
    assert not any(a.startswith(("--include-dashboard", "--no-monitor", "--object-store-memory",
                                 "--include-log-monitor")) for a in cmd)
    assert "RAY_START_HOOK" not in env
    assert head.dashboard_url and head.dashboard_url.startswith("http://127.0.0.1:")


def test_client_server_hook_clears_the_port():
    from ray._private.parameter import RayParams

    params = RayParams(ray_client_server_port=10001)
    raylib._no_client_server(params, True)
    assert params.ray_client_server_port is None


@pytest.mark.parametrize("value, expected", [("", None), ("0", 0), ("75", 75), (" 2048 ", 2048)])
def test_object_store_setting(monkeypatch, value, expected):
    monkeypatch.setenv(raylib.OBJECT_STORE_ENV, value)
    got = raylib.object_store_mb()
    if expected is None:  # the default: 512 MiB, or 30% of memory where that is less
        assert raylib.MIN_OBJECT_STORE_MB <= got <= raylib.DEFAULT_OBJECT_STORE_MB
    else:
        assert got == expected


@pytest.mark.parametrize("value", ["50", "-1", "lots", "1.5"])
def test_object_store_setting_refuses(monkeypatch, value):
    monkeypatch.setenv(raylib.OBJECT_STORE_ENV, value)
    with pytest.raises(BadInput, match=f"{raylib.OBJECT_STORE_ENV}: got '{value}'; use a whole number of MiB"):
        raylib.object_store_mb()


def test_address_space_check(monkeypatch):
    limits = {"soft": resource.RLIM_INFINITY}
    monkeypatch.setattr(resource, "getrlimit", lambda which: (limits["soft"], resource.RLIM_INFINITY))
    raylib.check_address_space(512)  # unlimited
    limits["soft"] = (512 + raylib.PROCESS_ADDRESS_SPACE_MB) * 2**20
    raylib.check_address_space(512)  # exactly enough
    limits["soft"] -= 2**20
    with pytest.raises(BadInput, match=r"ulimit -v: .* raise it with `ulimit -v 4718592`"):
        raylib.check_address_space(512)
    limits["soft"] = (300 + raylib.PROCESS_ADDRESS_SPACE_MB) * 2**20
    with pytest.raises(BadInput, match=f"or set {raylib.OBJECT_STORE_ENV}=300$"):
        raylib.check_address_space(512)


@pytest.mark.parametrize("cmd", ["train", "tune"])
def test_cli_under_a_small_ulimit_is_one_line(tmp_path, cmd):
    """`ulimit -v` too small for the object store: one line and exit 2, before Ray starts or anything is written."""
    def small_limit():
        resource.setrlimit(resource.RLIMIT_AS, (3_000_000 * 1024, resource.RLIM_INFINITY))

    r = subprocess.run([sys.executable, "-m", "largebatch", cmd, str(REPO / "tune_spaces/digits-smoke.yaml")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300, preexec_fn=small_limit,
                       env={**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""})
    assert r.returncode == 2, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("largebatch: error: ulimit -v: the address-space limit is "
                                                   "3000000 KiB"), r.stderr
    assert "Traceback" not in r.stderr and "mmap" not in r.stderr
    assert list(tmp_path.iterdir()) == []
