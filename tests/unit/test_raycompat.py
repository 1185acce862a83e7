"""Ray's private API is used in one module (largebatch/raycompat.py), behind a version guard: on a Ray it was not
written for, each private use is one clear error (installed version, supported one, the pin that fixes it) instead
of an AttributeError deep inside Ray."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from largebatch import raycompat
from largebatch.errors import BadInput

REPO_ROOT = Path(__file__).resolve().parents[2]
PKG = REPO_ROOT / "largebatch"
PRIVATE_PARTS = {"_private", "_raylet", "_internal"}


def _is_private_ray(dotted: str) -> bool:
    parts = dotted.split(".")
    return parts[0] == "ray" and any(p in PRIVATE_PARTS for p in parts[1:])


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def private_ray_uses(source: str) -> list[str]:
    """Every import of (and attribute path into) ray._private, ray._raylet or ray.*._internal, anywhere in the
    source: module level, functions, strings given to importlib.import_module."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Attribute):
            names = [d for d in [_dotted(node)] if d]
        elif isinstance(node, ast.Call) and (_dotted(node.func) or "").endswith("import_module"):
            names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        found += [f"line {getattr(node, 'lineno', '?')}: {n}" for n in names if _is_private_ray(n)]
    return found


def test_the_scan_finds_each_form_of_private_use():
    source = """
import ray._private.worker
from ray._raylet import Config
from ray.train._internal.session import get_session
from ray.train import _internal
import ray
def f():
    from ray._private.authentication import authentication_token_setup
    return ray._private.worker.global_worker
import importlib
importlib.import_module("ray.tune._internal.x")
"""
    hits = private_ray_uses(source)
    for needle in ("ray._private.worker", "ray._raylet", "ray.train._internal.session", "ray.train._internal",
                   "ray._private.authentication", "ray.tune._internal.x"):
        assert any(h.endswith(needle) for h in hits), (needle, hits)
    assert private_ray_uses("import ray\nfrom ray import tune\nfrom ray.train import Checkpoint\nray.init()\n") == []


def test_only_raycompat_uses_private_ray():
    offenders = {str(p.relative_to(REPO_ROOT)): hits for p in sorted(PKG.rglob("*.py"))
                 if p != PKG / "raycompat.py" and (hits := private_ray_uses(p.read_text()))}
    assert offenders == {}, f"move these into largebatch/raycompat.py (behind require_supported_ray): {offenders}"
    assert private_ray_uses((PKG / "raycompat.py").read_text())  # the scan sees raycompat's own


def test_raycompat_does_not_import_ray_at_import_time():
    out = subprocess.run([sys.executable, "-c", "import sys, largebatch.raycompat; print('ray' in sys.modules)"],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_supported_version_is_the_pinned_one():
    pins = re.findall(r'"(ray\[[^\]]*\])==([0-9.]+)"', (REPO_ROOT / "pyproject.toml").read_text())
    assert pins, "pyproject.toml pins ray"
    extra, version = pins[0]
    assert raycompat.RAY_PIN == f"{extra}=={version}"
    assert ".".join(version.split(".")[:2]) == raycompat.SUPPORTED_RAY


def test_the_guard_passes_on_the_installed_ray():
    import ray

    assert raycompat.installed_ray_version() == ray.__version__
    raycompat.require_supported_ray("a test")


@pytest.mark.parametrize("version", ["2.60.0", "2.60.3", "2.60.0rc1"])
def test_the_guard_passes_on_the_supported_series(monkeypatch, version):
    import ray

    monkeypatch.setattr(ray, "__version__", version)
    raycompat.require_supported_ray("a test")


@pytest.mark.parametrize("version", ["2.61.0", "2.59.1", "2.6.0", "12.60.0", "3.0.0.dev0"])
def test_the_guard_names_the_versions_and_the_fix_on_another_ray(monkeypatch, version):
    import ray

    monkeypatch.setattr(ray, "__version__", version)
    with pytest.raises(raycompat.UnsupportedRay) as err:
        raycompat.require_supported_ray("the Tune trial session's report counters")
    msg = str(err.value)
    assert isinstance(err.value, BadInput) and "\n" not in msg  # the CLI's one line, exit 2
    assert f"Ray {version} is installed" in msg
    assert "written for Ray 2.60.x" in msg
    assert "pip install 'ray[train,tune,default]==2.60.0'" in msg
    assert "the Tune trial session's report counters" in msg


def _touches():
    """Each private use, called as its callers call it."""
    from largebatch import rayauth, raylib

    params = SimpleNamespace(ray_client_server_port=10001)
    return {
        "wait_for_tune_queue": lambda: raycompat.wait_for_tune_queue(timeout_s=0.0),
        "save_tune_report_counters": raycompat.save_tune_report_counters,
        "enable_token_auth_if_token_found": raycompat.enable_token_auth_if_token_found,
        "token_auth_enabled": raycompat.token_auth_enabled,
        "token_http_header": raycompat.token_http_header,
        "reload_auth_config": raycompat.reload_auth_config,
        "gcs_get_cluster_id": lambda: raycompat.gcs_get_cluster_id("127.0.0.1:1", None, 0.1),
        "drop_client_server": lambda: raycompat.drop_client_server(params),
        "raylib._reload_auth_config": raylib._reload_auth_config,
        "raylib._no_client_server": lambda: raylib._no_client_server(params, True),
        "rayauth._token_header": rayauth._token_header,
    }


@pytest.mark.parametrize("name", list(_touches()))
def test_every_private_use_refuses_another_ray_before_touching_it(monkeypatch, name):
    import ray

    monkeypatch.setattr(ray, "__version__", "2.61.0")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # should a touch get past the guard, it changes nothing
    monkeypatch.delenv("LARGEBATCH_RAY_DASHBOARD", raising=False)  # the light head, the one with the hook
    with pytest.raises(raycompat.UnsupportedRay, match="Ray 2.61.0 is installed"):
        _touches()[name]()


def test_the_local_head_is_not_started_on_another_ray(monkeypatch):
    """The local head's start hook and auth reload use Ray's private API: init_ray refuses before any `ray start`
    (whose own refusal, in the hook, would only be in the head's log)."""
    import ray

    from largebatch import raylib

    monkeypatch.setattr(ray, "__version__", "2.61.0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(raylib, "_train_env", dict)  # no Ray settings left in this process's environment
    monkeypatch.setattr(raylib, "LocalHead", lambda *a, **k: pytest.fail("a head was started"))
    with pytest.raises(raycompat.UnsupportedRay, match="Ray 2.61.0 is installed"):
        raylib.init_ray()


def test_a_failed_tune_report_on_another_ray_is_not_taken_for_a_storage_outage(monkeypatch, tmp_path):
    """The guard runs before the report: its error is not turned into a StorageFailure (which the checkpoint keeper
    would swallow as 'storage is down')."""
    import ray

    from largebatch.train import persist

    monkeypatch.setattr(ray, "__version__", "2.61.0")
    backend = persist.TuneBackend.__new__(persist.TuneBackend)
    with pytest.raises(raycompat.UnsupportedRay):
        backend.report_with_checkpoint({"epoch": 0}, str(tmp_path))


def test_the_client_server_hook_clears_the_port_on_the_supported_ray():
    params = SimpleNamespace(ray_client_server_port=10001)
    raycompat.drop_client_server(params)
    assert params.ray_client_server_port is None


def test_the_tune_counters_are_put_back(monkeypatch):
    import ray.train._internal.session as session_mod

    session = SimpleNamespace(iteration=3, storage=SimpleNamespace(current_checkpoint_index=1))
    monkeypatch.setattr(session_mod, "get_session", lambda: session)
    restore = raycompat.save_tune_report_counters()
    session.iteration, session.storage.current_checkpoint_index = 4, 2
    restore()
    assert (session.iteration, session.storage.current_checkpoint_index) == (3, 1)


def test_the_tune_queue_wait_is_bounded_outside_a_trial(monkeypatch):
    """No Tune session here (get_session() is None): only the one-second grace sleep."""
    slept = []
    monkeypatch.setattr(raycompat.time, "sleep", slept.append)
    raycompat.wait_for_tune_queue(timeout_s=0.0)
    assert slept == [1.0]
