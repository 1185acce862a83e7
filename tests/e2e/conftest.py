"""Real servers on 127.0.0.1 for end-to-end tests, started and stopped (by PID) here.

- S3: `moto_server` (from moto[server]) is a standalone S3 API server process. Clients reach it only through the
  endpoint settings real MinIO users set (AWS_ENDPOINT_URL / MLFLOW_S3_ENDPOINT_URL); nothing is patched in-process.
- MLflow: `mlflow server` with a SQLite backend store and `--artifacts-destination s3://...` on that S3 server.
- Ray: a two-node cluster, `ray start --head` + `ray start --address` as `--block` child processes.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from largebatch.raylib import free_port, stop_process, write_private_token
from netwait import wait_http  # noqa: F401  (the e2e tests import it from here)

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
DUMMY_AWS = {"AWS_ACCESS_KEY_ID": "largebatch-test-key", "AWS_SECRET_ACCESS_KEY": "largebatch-test-secret-value",
             "AWS_DEFAULT_REGION": "us-east-1"}


stop = stop_process  # SIGTERM, then SIGKILL after the timeout: the servers these tests start, by PID


class Servers:
    pass


@pytest.fixture(scope="session")
def short_tmp():
    # AF_UNIX socket paths are capped at 107 bytes: pytest's tmp_path is too long for Ray's temp dir
    d = Path(tempfile.mkdtemp(prefix="lbe2e-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server(short_tmp):
    port = free_port()
    log = short_tmp / "moto.log"
    env = {**os.environ, **DUMMY_AWS}
    proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_http(url, 30, proc, log)
    import boto3

    s3 = boto3.client("s3", endpoint_url=url, **{k.lower(): v for k, v in DUMMY_AWS.items()
                                                 if k != "AWS_DEFAULT_REGION"}, region_name="us-east-1")
    for bucket in ("lb-data", "lb-runs", "lb-mlflow"):
        s3.create_bucket(Bucket=bucket)
    srv = Servers()
    srv.url, srv.client, srv.proc = url, s3, proc
    srv.env = {**DUMMY_AWS, "AWS_ENDPOINT_URL": url}
    yield srv
    stop(proc)


@pytest.fixture(scope="session")
def mlflow_server(s3_server, short_tmp):
    port = free_port()
    log = short_tmp / "mlflow.log"
    env = {**os.environ, **DUMMY_AWS, "MLFLOW_S3_ENDPOINT_URL": s3_server.url,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("AWS_ENDPOINT_URL", None)
    proc = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{short_tmp / 'mlflow.db'}", "--artifacts-destination", "s3://lb-mlflow/mlflow"],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", 90, proc, log)
    srv = Servers()
    srv.url, srv.proc = url, proc
    yield srv
    stop(proc)


@pytest.fixture(scope="session")
def ray_cluster(s3_server, short_tmp):
    """Two Ray nodes on this machine: a head (1 CPU) and a worker node (1 CPU, resource node2)."""
    port, dash = free_port(), free_port()
    # the cluster's own token, as an operator would make one; clients (`ray job submit`) get it the same way
    secret = short_tmp / "secret"
    secret.mkdir(mode=0o700)
    token = write_private_token(secret)
    env = {**os.environ, **s3_server.env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "RAY_ADDRESS": f"127.0.0.1:{port}",
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    ray = str(VENV_BIN / "ray")
    head_log, node_log = short_tmp / "head.log", short_tmp / "node2.log"
    head = subprocess.Popen([ray, "start", "--head", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
                             f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                             f"--dashboard-agent-listen-port={free_port()}", "--num-cpus=1", f"--temp-dir={short_tmp / 'ray'}"],
                            env=env, stdout=head_log.open("w"), stderr=subprocess.STDOUT)
    _wait_log(head_log, "Ray runtime started", head, 90)
    node = subprocess.Popen([ray, "start", "--block", "--disable-usage-stats", f"--address=127.0.0.1:{port}",
                             "--node-ip-address=127.0.0.1", "--num-cpus=1", '--resources={"node2": 1}',
                             f"--dashboard-agent-listen-port={free_port()}",
                             # its own temp dir, as on a separate machine: with a shared one, this node's runtime-env
                             # agent garbage-collects the job's working_dir package under the head's driver
                             f"--temp-dir={short_tmp / 'ray2'}"],
                            env=env, stdout=node_log.open("w"), stderr=subprocess.STDOUT)
    _wait_log(node_log, "Ray runtime started", node, 90)
    srv = Servers()
    srv.address, srv.dashboard, srv.env = f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", env
    try:
        _wait_job_agent(srv, 120)
        yield srv
    finally:
        stop(node)
        stop(head)


def _wait_job_agent(srv, timeout_s: float) -> None:
    """The head's job agent answers some seconds after `ray start` returns: wait until a trivial job runs."""
    deadline, last = time.time() + timeout_s, ""
    while time.time() < deadline:
        r = subprocess.run([str(VENV_BIN / "ray"), "job", "submit", "--address", srv.dashboard, "--", "echo", "ready"],
                           env=srv.env, capture_output=True, text=True, timeout=120)
        if r.returncode == 0:
            return
        last = (r.stdout + r.stderr)[-500:]
        time.sleep(2)
    raise RuntimeError(f"the Ray job agent did not accept a job in {timeout_s} s: {last}")


def _wait_log(log: Path, text: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode}: {log.read_text()[-2000:]}")
        if text in log.read_text(errors="replace"):
            return
        time.sleep(0.3)
    raise RuntimeError(f"{log}: no {text!r} in {timeout_s} s")


def run_cli(args: list[str], env: dict, cwd: Path = REPO, timeout: float = 900) -> subprocess.CompletedProcess:
    merged = {k: v for k, v in {**os.environ, **env}.items() if v is not None}  # None removes a variable
    return subprocess.run([str(VENV_BIN / "largebatch"), *args], env=merged, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
