"""Checks on the MLflow tracking server in the manifests: the Host names it answers, its CORS origins, and
basic-auth with credentials from Secrets (for the server and for its clients, the Ray pods)."""
from __future__ import annotations

import fnmatch
from typing import Any, Callable, Iterator

from tools.deploy.checks import Context, PodTemplate, _name, _ns, _options, _selects


def mlflow_servers(ctx: Context) -> Iterator[tuple[PodTemplate, dict[str, Any], dict[str, str]]]:
    """(template, container, its --options) for every `mlflow server` container."""
    for t in ctx.templates:
        for c in t.spec.get("containers") or []:
            argv = [*(c.get("command") or []), *(c.get("args") or [])]
            if "server" in argv and any(a.rsplit("/", 1)[-1] == "mlflow" for a in argv):
                yield t, c, _options(argv)


def _env_value(container: dict[str, Any], name: str) -> str | None:
    return next((e.get("value") for e in container.get("env") or [] if e.get("name") == name), None)


def check_mlflow_allowed_hosts(ctx: Context) -> list[str]:
    """MLflow >= 3.5 answers only Host headers it allows: every Service in front of an `mlflow server`
    container must be allowed as <service>:<port>, by exact names only (MLflow matches an entry holding
    `*` with fnmatch, so `mlflow.*` also admits mlflow.attacker.example)."""
    problems = []
    for t, c, options in mlflow_servers(ctx):
        hosts = options.get("--allowed-hosts") or _env_value(c, "MLFLOW_SERVER_ALLOWED_HOSTS")
        if not hosts:
            problems.append(f"{t.where} container {c.get('name')}: mlflow server without --allowed-hosts "
                            f"(or MLFLOW_SERVER_ALLOWED_HOSTS) refuses clients that use the Service name")
            continue
        patterns = [h.strip() for h in hosts.split(",")]
        for pattern in patterns:
            if "*" in pattern:
                problems.append(f"{t.where} container {c.get('name')}: --allowed-hosts entry {pattern!r} is a "
                                f"wildcard; list exact host:port names")
        for svc in (o for o in ctx.objects if o["kind"] == "Service" and _ns(o) == t.namespace):
            if not _selects((svc.get("spec") or {}).get("selector") or {}, t.labels):
                continue
            for port in svc["spec"].get("ports") or []:
                host = f"{svc['metadata']['name']}:{port.get('port')}"
                if not any(p == "*" or fnmatch.fnmatch(host, p) for p in patterns):
                    problems.append(f"{t.where} container {c.get('name')}: --allowed-hosts does not allow "
                                    f"{host!r} ({_name(svc)})")
    return problems


# basic-auth refuses to start without MLFLOW_FLASK_SERVER_SECRET_KEY (CSRF), which replicas must share
MLFLOW_AUTH_SECRET_ENV = ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")
MLFLOW_CLIENT_SECRET_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def check_mlflow_auth_and_cors(ctx: Context) -> list[str]:
    """MLflow runs its basic-auth app with the admin credentials from a Secret, names its CORS origins
    exactly, and the Ray pods (its clients) get their credentials from a Secret too."""
    problems = []
    servers = list(mlflow_servers(ctx))
    for t, c, options in servers:
        where = f"{t.where} container {c.get('name')}"
        origins = options.get("--cors-allowed-origins") or _env_value(c, "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS")
        if not origins:
            problems.append(f"{where}: set --cors-allowed-origins to the UI's exact origins")
        elif any("*" in o for o in origins.split(",")):
            problems.append(f"{where}: --cors-allowed-origins {origins!r} holds a wildcard; list exact origins")
        if options.get("--app-name") != "basic-auth":
            problems.append(f"{where}: run `mlflow server --app-name=basic-auth` (without it anyone who reaches "
                            f"the server can read and delete every run)")
        problems += _secret_env_problems(c, MLFLOW_AUTH_SECRET_ENV, where)
    if servers:
        for t in ctx.templates:
            if t.role in ("ray-head", "ray-worker"):
                ray = (t.spec.get("containers") or [{}])[0]
                problems += _secret_env_problems(ray, MLFLOW_CLIENT_SECRET_ENV, f"{t.where} container {ray.get('name')}")
    return problems


def _secret_env_problems(container: dict[str, Any], names: tuple[str, ...], where: str) -> list[str]:
    env = {e.get("name"): e for e in container.get("env") or []}
    problems = []
    for name in names:
        entry = env.get(name)
        if entry is None or "secretKeyRef" not in ((entry.get("valueFrom") or {})):
            problems.append(f"{where}: {name} must come from a Secret (valueFrom.secretKeyRef)")
    return problems


MLFLOW_CHECKS: tuple[Callable[[Context], list[str]], ...] = (check_mlflow_allowed_hosts, check_mlflow_auth_and_cors)
