"""Real servers on 127.0.0.1 for end-to-end tests, started and stopped (by PID) here.

- S3: `moto_server` (from moto[server]) is a standalone S3 API server process. Clients reach it only through the
  endpoint settings real MinIO users set (AWS_ENDPOINT_URL / MLFLOW_S3_ENDPOINT_URL); nothing is patched in-process.
- MLflow: `mlflow server` with a SQLite backend store and `--artifacts-destination s3://...` on that S3 server.
- Ray: clusters of N nodes (`RayNodes`, `start_ray_nodes`), `ray start --head` + `ray start --address` as `--block`
  child processes; `ray_cluster` is the two-node one.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from largebatch.raylib import HEAD_ENV, descendants, free_port, is_running, stop_process, write_private_token
from netwait import wait_http  # noqa: F401  (the e2e tests import it from here)
from overlap import max_overlap  # noqa: F401  (the e2e tests import it from here)

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
    srv = start_mlflow_server(short_tmp, s3_server.url, f"sqlite:///{short_tmp / 'mlflow.db'}", timeout_s=90)
    yield srv
    stop(srv.proc)


class RayNodes:
    """Ray nodes on 127.0.0.1, each a `ray start --block` child process with its own temp dir (as on separate
    machines), token auth with the cluster's own token. `procs[0]` is the head; `stop()` ends them all by PID."""

    def __init__(self, root: Path, base_env: dict[str, str]):
        self.root, self.port, self.dash = root, free_port(), free_port()
        secret = root / "secret"
        secret.mkdir(mode=0o700, exist_ok=True)
        # the cluster's own token, as an operator would make one; clients (`ray job submit`) get it the same way
        token = secret / "auth_token" if (secret / "auth_token").is_file() else write_private_token(secret)
        self.address, self.dashboard = f"127.0.0.1:{self.port}", f"http://127.0.0.1:{self.dash}"
        self.env = {**os.environ, **base_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                    "RAY_ADDRESS": self.address, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
                    # stopped with nothing on them: no 30 s SIGTERM drain per node, as our own head
                    **HEAD_ENV,
                    "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.trees: dict[int, set[int]] = {}

    def _start(self, tag: str, args: list[str], timeout_s: float) -> subprocess.Popen:
        log = self.root / f"{tag}.log"
        proc = subprocess.Popen([str(VENV_BIN / "ray"), "start", "--block", "--disable-usage-stats",
                                 "--node-ip-address=127.0.0.1", f"--dashboard-agent-listen-port={free_port()}",
                                 # its own temp dir, as on a separate machine: with a shared one, a node's
                                 # runtime-env agent garbage-collects the job's working_dir package under the
                                 # head's driver
                                 f"--temp-dir={self.root / tag}", *args],
                                env=self.env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.procs.append(proc)
        self.logs.append(log)
        _wait_log(log, "Ray runtime started", proc, timeout_s)
        self.trees[proc.pid] = descendants(proc.pid)  # its raylet, GCS, agents: for stop() if it has gone
        return proc

    def start_head(self, num_cpus: int, extra: tuple[str, ...] = (), timeout_s: float = 90) -> subprocess.Popen:
        return self._start("ray", ["--head", f"--port={self.port}", "--dashboard-host=127.0.0.1",
                                   f"--dashboard-port={self.dash}", f"--num-cpus={num_cpus}", *extra], timeout_s)

    def add_node(self, tag: str, num_cpus: int, resources: dict[str, float], extra: tuple[str, ...] = (),
                 timeout_s: float = 90) -> subprocess.Popen:
        return self._start(tag, [f"--address={self.address}", f"--num-cpus={num_cpus}",
                                 f"--resources={json.dumps(resources)}", *extra], timeout_s)

    def stop(self) -> None:
        for proc in reversed(self.procs):  # worker nodes first, the head last
            stop(proc)
            # a node whose raylet a test killed: `ray start --block` exited, what it had started may be left
            for pid in self.trees.get(proc.pid, set()) | descendants(proc.pid):
                if is_running(pid):
                    try:
                        os.kill(pid, 9)
                    except OSError:
                        pass


def start_ray_nodes(root: Path, base_env: dict[str, str], head_cpus: int,
                    workers: list[tuple[str, int, dict[str, float]]], extra: tuple[str, ...] = ()) -> RayNodes:
    """A head with `head_cpus` CPUs and one node per (tag, CPUs, custom resources) in `workers`; `extra`: flags
    for every node (e.g. a small --object-store-memory). Stops what it started if a node does not come up."""
    nodes = RayNodes(root, base_env)
    try:
        nodes.start_head(head_cpus, extra)
        for tag, cpus, resources in workers:
            nodes.add_node(tag, cpus, resources, extra)
    except BaseException:
        nodes.stop()
        raise
    return nodes


@pytest.fixture(scope="session")
def ray_cluster(s3_server, short_tmp):
    """Two Ray nodes on this machine: a head (1 CPU) and a worker node (1 CPU, resource node2)."""
    nodes = start_ray_nodes(short_tmp, s3_server.env, 1, [("ray2", 1, {"node2": 1})])
    srv = Servers()
    srv.address, srv.dashboard, srv.env = nodes.address, nodes.dashboard, nodes.env
    try:
        _wait_job_agent(srv, 120)
        yield srv
    finally:
        nodes.stop()


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


@pytest.fixture(scope="session")
def postgres_uri(short_tmp):
    """A real PostgreSQL server (tests/e2e/pgserver.py) for the session: its postgresql://USER:PASSWORD@... URI."""
    from pgserver import postgres_server

    with postgres_server(short_tmp) as uri:
        yield uri


# ---------------------------------------------------------------- many trials on many nodes (issue #27)
# Every Ray node of the scale and node-loss clusters: a small object store (the trials pass no data through it) and
# no dashboard (the driver joins with --address; no `ray job submit`)
SMALL_NODE = ("--object-store-memory=100000000",)
LIGHT_HEAD = ("--include-dashboard=false",)
# a custom resource standing for each node's accelerators, as a GPU node would advertise them
ACCEL = "accel"


def start_sim_cluster(root: Path, base_env: dict[str, str], n_nodes: int = 4, cpus: int = 4,
                      accel: int = 2) -> RayNodes:
    """`n_nodes` nodes on loopback (the head among them), each with `cpus` fake CPUs and `accel` units of the
    custom resource ACCEL, plus a per-node resource `node<i>`."""
    nodes = RayNodes(root, base_env)
    try:
        nodes.start_head(cpus, (*SMALL_NODE, *LIGHT_HEAD, f'--resources={json.dumps({ACCEL: accel, "node0": 1})}'))
        for i in range(1, n_nodes):
            nodes.add_node(f"node{i}", cpus, {ACCEL: accel, f"node{i}": 1}, SMALL_NODE)
    except BaseException:
        nodes.stop()
        raise
    return nodes


def start_mlflow_server(root: Path, s3_url: str, backend_uri: str, tag: str = "mlflow", *, workers: int = 1,
                        artifacts: str = "s3://lb-mlflow/mlflow", backend_in_env: bool = False,
                        timeout_s: float = 120) -> Servers:
    """`mlflow server` on a free port with this backend store and its artifacts proxied to the S3 server; its log (one
    line per request: uvicorn's access log) is `srv.log`, `srv.backend` the store's URI. backend_in_env: the URI goes
    in MLFLOW_BACKEND_STORE_URI, as k8s/base/mlflow.yaml passes it, so a password stays out of the process's
    arguments. Stop it with stop(srv.proc)."""
    port = free_port()
    log = root / f"{tag}.log"
    env = {**os.environ, **DUMMY_AWS, "MLFLOW_S3_ENDPOINT_URL": s3_url, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("AWS_ENDPOINT_URL", None)
    store = ["--backend-store-uri", backend_uri]
    if backend_in_env:
        env["MLFLOW_BACKEND_STORE_URI"], store = backend_uri, []
    proc = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
         *store, "--artifacts-destination", artifacts],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", timeout_s, proc, log)
    except RuntimeError as e:
        stop(proc)
        raise RuntimeError(f"{e}; its log ends: {log.read_text(errors='replace')[-2000:]}") from None
    except BaseException:
        stop(proc)
        raise
    srv = Servers()
    srv.url, srv.proc, srv.backend, srv.log = url, proc, backend_uri, log
    return srv


def sqlalchemy_postgres(uri: str) -> str:
    """postgresql://... -> postgresql+psycopg://... (the driver requirements.lock installs: psycopg 3)."""
    return uri.replace("postgresql://", "postgresql+psycopg://", 1)


def scale_study(name: str, n_trials: int, epochs: int, concurrent: int = 8) -> dict:
    """A study of `n_trials` short 1-worker trials (the baseline + n_trials - 1 learning rates) on a 256-example
    subset of digits: a second or two of training each."""
    lrs = [round(0.01 + 0.002 * i, 4) for i in range(n_trials - 1)]
    return {
        "name": name,
        "base": {"seed": 0, "data": {"dataset": "digits", "global_batch_size": 64, "train_subset": 256},
                 "model": {"name": "mlp", "hidden_sizes": [16]},
                 "optim": {"name": "sgd", "base_lr": 0.05, "base_batch_size": 64, "momentum": 0.9},
                 "scaling": {"rule": "none"}, "schedule": {"warmup_epochs": 0},
                 "budget": {"epochs": epochs}, "checkpoint": {"every_epochs": 1}},
        "search": {"optim.base_lr": {"grid": lrs}},
        "tuner": {"searcher": "grid", "workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent": concurrent,
                  "profile": False},
        "baseline": {"data.global_batch_size": 32},
        "report": {"tolerance": 1.0},
    }


def trial_runs(mlflow_url: str, experiment: str) -> tuple[Any, list]:
    """(an MlflowClient, the experiment's trial child runs)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_url)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return client, []
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    return client, [r for r in runs if r.data.tags.get("largebatch.kind") == "trial"]


@pytest.fixture(scope="session")
def mlflow_pg_server(s3_server, postgres_uri, short_tmp):
    """`mlflow server` as k8s/base/mlflow.yaml runs it: a postgresql:// backend store (the `postgres_uri` server),
    passed in the environment, artifacts proxied to s3://lb-mlflow/pg on the S3 server. `.backend` is the store's URI
    (it holds the password)."""
    # ~25 s on a busy 2-core box (its first start creates MLflow's tables); minutes under heavy load
    srv = start_mlflow_server(short_tmp, s3_server.url, postgres_uri, "mlflow-pg", workers=2,
                              artifacts="s3://lb-mlflow/pg", backend_in_env=True, timeout_s=300)
    yield srv
    stop(srv.proc)
