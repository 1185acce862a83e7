"""README.md's "Run on a cluster" commands, run as written on a two-node loopback cluster with empty HOMEs.

The block is found by its marker comment (`<!-- cluster-commands: ...`) and split by its own section comments: the
lines for every node and client, then the head node's, each worker node's and the submitting client's. Each
"machine" is a bash shell of its own, with an empty HOME and Ray temp dir of its own, so the token reaches the worker
node and the client only the way the README says (the head's ~/.ray/auth_token, named by RAY_AUTH_TOKEN_PATH).

What is changed, and nothing else (`SUBSTITUTED`, checked to occur in the block so the README cannot drift):
ports (free ones instead of 6379 and 8265), hosts (127.0.0.1 for HEAD and for 0.0.0.0; the test servers for
minio:9000 and mlflow:5000), paths (the token file the head wrote; a seconds-long study instead of
fashion-mnist.yaml; a bucket of the test's S3 server) and the `...` key placeholders. Two nodes on one machine would
share the ports Ray otherwise takes by default, so the loopback run also names free ones for the dashboard agent
(each node) and the Ray client server (the head): `LOOPBACK_PORTS`. The machines' environment: the venv on PATH
(as the block's first comment asks), no usage-stats reporting (no network), AWS_DEFAULT_REGION for the test's S3.

The nodes are started by `ray start` without --block, as written: they are found for the teardown by a marker
variable in their environment and stopped by PID.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import DUMMY_AWS, REPO, VENV_BIN
from largebatch.raylib import free_port

MARKER = "<!-- cluster-commands:"
SECTIONS = {"every node": "all", "the head node": "head", "each worker node": "worker", "the client": "client"}
TINY_STUDY = "tests/e2e/readme-cluster.yaml"


def readme_block(path: Path = REPO / "README.md") -> str:
    text = path.read_text()
    at = text.index(MARKER)
    m = re.compile(r"```bash\n(.*?)```", re.S).search(text, at)
    assert m, f"no ```bash block after {MARKER!r} in {path}"
    return m.group(1)


def sections(block: str) -> dict[str, list[str]]:
    """{all, head, worker, client} -> the commands (continuation lines joined), in order."""
    out: dict[str, list[str]] = {k: [] for k in SECTIONS.values()}
    current = None
    for line in block.replace("\\\n", " ").splitlines():
        header = next((v for k, v in SECTIONS.items() if line.startswith(f"# {k}")), None)
        if header:
            current = header
        elif line.strip() and not line.lstrip().startswith("#"):
            assert current, f"a command before any section comment: {line!r}"
            out[current].append(line)
    return out


def submit_forms(text: str) -> list[dict]:
    """The shape of each `ray job submit` command in `text`: its flags, runtime env and entrypoint command."""
    forms = []
    for line in text.replace("\\\n", " ").splitlines():
        if not line.lstrip().startswith("ray job submit"):
            continue
        words = shlex.split(line, comments=True)
        cut = words.index("--")
        env = json.loads(words[words.index("--runtime-env-json") + 1]) if "--runtime-env-json" in words else None
        forms.append({"flags": [w for w in words[3:cut] if w.startswith("--")], "runtime_env": env,
                      "entrypoint": words[cut + 1:cut + 5]})
    return forms


def test_k8s_readme_submits_in_the_same_form():
    """k8s/README.md's (and cluster/README.md's) submit lines: the README's flags, runtime env and entrypoint."""
    [main] = submit_forms(readme_block())
    assert main["entrypoint"] == ["python", "-m", "largebatch", "tune"], main
    assert main["flags"] == ["--address", "--working-dir", "--entrypoint-num-cpus", "--runtime-env-json"], main
    for other in ("k8s/README.md", "cluster/README.md"):
        forms = submit_forms((REPO / other).read_text())
        assert forms and all(f == main for f in forms), (other, forms)


def _substitutions(ports: dict, token_path: Path, s3_url: str, mlflow_url: str) -> dict[str, str]:
    return {
        "--port=6379": f"--port={ports['gcs']}",
        "HEAD:6379": f"127.0.0.1:{ports['gcs']}",
        "--dashboard-host=0.0.0.0": "--dashboard-host=127.0.0.1",
        "--dashboard-port=8265": f"--dashboard-port={ports['dashboard']}",
        "http://HEAD:8265": f"http://127.0.0.1:{ports['dashboard']}",
        "http://minio:9000": s3_url,
        "AWS_ACCESS_KEY_ID=...": f"AWS_ACCESS_KEY_ID={DUMMY_AWS['AWS_ACCESS_KEY_ID']}",
        "AWS_SECRET_ACCESS_KEY=...": f"AWS_SECRET_ACCESS_KEY={DUMMY_AWS['AWS_SECRET_ACCESS_KEY']}",
        "/etc/ray/auth_token": str(token_path),
        "tune_spaces/fashion-mnist.yaml": TINY_STUDY,
        "s3://bucket/studies": "s3://lb-runs/readme-cluster",
        "http://mlflow:5000": mlflow_url,
    }


def _script(commands: list[str], subs: dict[str, str], extra: dict[str, str]) -> str:
    out = []
    for cmd in commands:
        for old, new in subs.items():
            cmd = cmd.replace(old, new)
        for prefix, flags in extra.items():
            if cmd.startswith(prefix):
                cmd += " " + flags
        out.append(cmd)
    return "set -e\n" + "\n".join(out) + "\n"


def _machine(tag: str, root: Path, marker: str) -> dict[str, str]:
    home, tmp = root / f"{tag}-home", root / f"{tag}-tmp"
    home.mkdir()
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "AWS_", "MLFLOW_", "LARGEBATCH_")) and k not in ("HOME", "TMPDIR")}
    return {**env, "HOME": str(home), "TMPDIR": str(tmp), "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            "RAY_USAGE_STATS_ENABLED": "0", "AWS_DEFAULT_REGION": DUMMY_AWS["AWS_DEFAULT_REGION"],
            "LB_README_CLUSTER": marker}


def _run(script: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _marked_pids(marker: str) -> set[int]:
    """Our processes whose environment carries `marker` (every process the two `ray start`s began)."""
    pids = set()
    needle = f"LB_README_CLUSTER={marker}".encode()
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if d.stat().st_uid == os.getuid() and needle in (d / "environ").read_bytes().split(b"\0"):
                pids.add(int(d.name))
        except OSError:
            continue
    return pids - {os.getpid()}


def _stop_marked(marker: str, grace_s: float = 20.0) -> None:
    pids = _marked_pids(marker)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.time() + grace_s
    while (pids := _marked_pids(marker)) and time.time() < deadline:
        time.sleep(0.3)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _wait_jobs_accepted(dashboard: str, env: dict, timeout_s: float = 180) -> None:
    """`ray start` returns before the head's job agent takes jobs: wait for a trivial job (not a README command)."""
    deadline, last = time.time() + timeout_s, ""
    while time.time() < deadline:
        r = subprocess.run(["ray", "job", "submit", "--address", dashboard, "--", "echo", "ready"], env=env,
                           capture_output=True, text=True, timeout=120)
        if r.returncode == 0:
            return
        last = (r.stdout + r.stderr)[-800:]
        time.sleep(2)
    raise AssertionError(f"the head did not take a job in {timeout_s} s: {last}")


@pytest.mark.slow
@pytest.mark.e2e
def test_readme_cluster_commands_run_as_written(s3_server, mlflow_server):
    block = readme_block()
    parts = sections(block)
    assert all(parts.values()), parts
    root = Path(tempfile.mkdtemp(prefix="lbrc-", dir="/tmp"))  # short: Ray's AF_UNIX paths are capped at 107 bytes
    marker = uuid.uuid4().hex
    head_env, worker_env, client_env = (_machine(t, root, marker) for t in ("head", "worker", "client"))
    token_path = Path(head_env["HOME"]) / ".ray" / "auth_token"  # written by the head's own commands
    ports = {"gcs": free_port(), "dashboard": free_port()}
    subs = _substitutions(ports, token_path, s3_server.url, mlflow_server.url)
    missing = [old for old in subs if old not in block]
    assert not missing, f"README's cluster block no longer has {missing}: update the test's substitutions"
    head_flags = f"--dashboard-agent-listen-port={free_port()} --ray-client-server-port={free_port()}"
    loopback = {"head": {"ray start --head": head_flags},
                "worker": {"ray start --address": f"--dashboard-agent-listen-port={free_port()}"}}
    try:
        r = _run(_script(parts["all"] + parts["head"], subs, loopback["head"]), head_env, 300)
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        assert token_path.is_file() and (token_path.stat().st_mode & 0o777) == 0o600
        r = _run(_script(parts["all"] + parts["worker"], subs, loopback["worker"]), worker_env, 300)
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        assert "Ray runtime started" in r.stdout + r.stderr

        client_script = _script(parts["all"] + parts["client"], subs, {})
        dashboard = f"http://127.0.0.1:{ports['dashboard']}"
        _wait_jobs_accepted(dashboard, {**client_env, "RAY_AUTH_MODE": "token",
                                        "RAY_AUTH_TOKEN_PATH": str(token_path)})
        r = _run(client_script, client_env, 900)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-6000:]
        assert "succeeded" in out.lower(), out[-3000:]

        # the client without the token: refused by the head (the README's token line is what makes it work)
        no_token = client_script.replace(f"export RAY_AUTH_TOKEN_PATH={token_path}\n", "")
        assert no_token != client_script
        r = _run(no_token, client_env, 300)
        assert r.returncode != 0
    finally:
        _stop_marked(marker)
        subprocess.run(["rm", "-rf", str(root)], check=False)
    assert not _marked_pids(marker), "a Ray process of the README's cluster outlived the test"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name("readme-cluster")
    children = [c for c in client.search_runs([exp.experiment_id]) if c.data.tags.get("largebatch.kind") == "trial"]
    assert sorted(c.data.tags["status"] for c in children) == ["completed", "completed"]  # baseline + B=128
