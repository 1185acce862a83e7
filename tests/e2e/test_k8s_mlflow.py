"""The MLflow server exactly as k8s/base/mlflow.yaml runs it (its args and literal env, rendered by kubectl
kustomize), on 127.0.0.1 with SQLite stores in place of PostgreSQL: basic-auth with the admin from the
environment, exact Host names, explicit CORS origins, and /health open for the kubelet's probes."""
from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import urllib.error
import urllib.request

import pytest

from conftest import REPO, VENV_BIN, free_port, stop, wait_http

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _mlflow_deployment() -> dict:
    from tools.deploy.render import find_kubectl, render_kustomization

    if find_kubectl() is None:
        pytest.skip("kubectl not on PATH (or $LARGEBATCH_KUBECTL): it renders k8s/")
    return next(o for o in render_kustomization(REPO / "k8s/base")
                if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow")


@pytest.fixture(scope="module")
def manifest_mlflow(short_tmp):
    container = _mlflow_deployment()["spec"]["template"]["spec"]["containers"][0]
    port = free_port()
    local = {"--host": "127.0.0.1", "--port": str(port), "--workers": "1",
             "--artifacts-destination": str(short_tmp / "k8s-mlflow-artifacts")}
    args = [f"{a.split('=', 1)[0]}={local[a.split('=', 1)[0]]}" if a.split("=", 1)[0] in local else a
            for a in container["args"]]
    assert "--app-name=basic-auth" in args and any(a.startswith("--cors-allowed-origins=") for a in args)
    ini = short_tmp / "k8s-basic_auth.ini"
    ini.write_text(f"[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                   f"database_uri = sqlite:///{short_tmp / 'k8s-auth.db'}\n"
                   f"authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    password = secrets.token_hex(16)
    literal_env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env = {**os.environ, **literal_env,
           "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{short_tmp / 'k8s-mlflow.db'}",
           "MLFLOW_AUTH_CONFIG_PATH": str(ini),
           "MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": password,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}
    # everything else the server reads comes from the manifest: a Secret-backed variable the test does not set
    # here would be one the real pod gets and this run would miss
    from_secrets = {e["name"] for e in container["env"] if "secretKeyRef" in (e.get("valueFrom") or {})}
    assert from_secrets == {"POSTGRES_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                            "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD",
                            "MLFLOW_FLASK_SERVER_SECRET_KEY"}
    log = short_tmp / "k8s-mlflow.log"
    proc = subprocess.Popen([str(VENV_BIN / "mlflow"), *container["command"][1:], *args], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", 120, proc, log)
        yield url, ("admin", password)
    finally:
        stop(proc)


def _call(url: str, path: str, host: str, auth=None, body: dict | None = None, origin: str | None = None) -> int:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode() if body is not None else None,
                                 method="POST" if body is not None else "GET")
    req.add_header("Host", host)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    if origin:
        req.add_header("Origin", origin)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


def test_health_is_open_for_probes_from_any_host(manifest_mlflow):
    url, _ = manifest_mlflow
    assert _call(url, "/health", "10.1.2.3:5000") == 200  # the kubelet sends the pod IP as Host


def test_api_needs_the_admin_credentials(manifest_mlflow):
    url, auth = manifest_mlflow
    assert _call(url, SEARCH, "mlflow:5000") == 401
    assert _call(url, SEARCH, "mlflow:5000", ("admin", "wrong")) == 401
    assert _call(url, SEARCH, "mlflow:5000", auth) == 200


@pytest.mark.parametrize("host,status", [
    ("mlflow:5000", 200), ("mlflow.largebatch.svc.cluster.local:5000", 200), ("127.0.0.1:5000", 200),
    ("mlflow.attacker.example:5000", 403), ("mlflow", 403), ("evil.example", 403),
])
def test_only_the_exact_host_names_are_answered(manifest_mlflow, host, status):
    url, auth = manifest_mlflow
    assert _call(url, SEARCH, host, auth) == status


def test_state_changes_only_from_the_listed_origins(manifest_mlflow):
    url, auth = manifest_mlflow
    create = "/api/2.0/mlflow/experiments/create"
    assert _call(url, create, "mlflow:5000", auth, {"name": "from-evil"}, origin="http://evil.example") == 403
    assert _call(url, create, "mlflow:5000", auth, {"name": "from-ui"}, origin="http://127.0.0.1:5000") == 200
