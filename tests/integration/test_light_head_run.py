"""`largebatch train` on the embedded default starts only the Ray processes it needs, and runs under the address-space
limit that killed it with Ray's C++ "mmap failed" trace when the object store was 30% of memory (issue #27)."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from largebatch.raylib import descendants

REPO = Path(__file__).resolve().parents[2]
# processes of Ray's whole head that the light head leaves out (names as /proc shows them)
NOT_STARTED = ("ray-dashboard-", "ray.util.client.server", "monitor.py", "log_monitor.py")


def _names(pid: int) -> set[str]:
    out = set()
    for p in descendants(pid):
        try:
            out.add(Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200])
            out.add(Path(f"/proc/{p}/comm").read_text().strip())
        except OSError:
            continue
    return out


@pytest.mark.slow
def test_train_runs_light_under_ulimit_v_8gb(tmp_path):
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (8_000_000 * 1024, resource.RLIM_INFINITY))

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "LARGEBATCH_"))}
    env.update(HOME=str(home), TMPDIR=tempfile.mkdtemp(prefix="lblh-", dir="/tmp"), PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "largebatch", "train", str(REPO / "tune_spaces/digits-smoke.yaml"),
                             "--workers", "1", "--set", "budget.epochs=1", "--storage", str(tmp_path / "runs")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=limit)
    seen: set[str] = set()
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        seen |= _names(proc.pid)
        time.sleep(0.5)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out[-4000:]
    assert "status=completed" in out and "mmap" not in out
    assert any("raylet" in n for n in seen) and any("gcs_server" in n for n in seen), seen
    started = sorted(n for n in seen if any(x in n for x in NOT_STARTED))
    assert not started, started
