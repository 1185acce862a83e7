"""Checks on the KubeRay objects: GPU worker groups, the RayJob's entrypoint and submission, and the RayJob's
own cluster against the interactive RayCluster."""
from __future__ import annotations

import shlex
from typing import Any, Callable
from urllib.parse import urlparse

from tools.deploy.checks import GPU_RESOURCE, SUBMISSION_MODES, Context, _name, _ns, _options
from tools.deploy.render import split_image


def _is_gpu_group(group: dict[str, Any]) -> bool:
    spec = (group.get("template") or {}).get("spec") or {}
    containers = spec.get("containers") or [{}]
    resources = containers[0].get("resources") or {}
    return (
        "gpu" in str(group.get("groupName", "")).lower()
        or "num-gpus" in (group.get("rayStartParams") or {})
        or any(GPU_RESOURCE in (resources.get(k) or {}) for k in ("requests", "limits"))
        or any(tol.get("key") == GPU_RESOURCE for tol in spec.get("tolerations") or [])
    )


def _quantity(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def check_ray_worker_groups(ctx: Context) -> list[str]:
    """GPU groups get GPUs (limit, toleration, a -gpu image); replica bounds are consistent."""
    problems = []
    for t in ctx.templates:
        if t.role != "ray-worker":
            continue
        group = t.group or {}
        lo, hi = group.get("minReplicas", 0), group.get("maxReplicas", 0)
        if lo > hi:
            problems.append(f"{t.where}: minReplicas {lo} > maxReplicas {hi}")
        if "replicas" in group and not lo <= group["replicas"] <= hi:
            problems.append(f"{t.where}: replicas {group['replicas']} outside [{lo}, {hi}]")
        if not _is_gpu_group(group):
            continue
        ray_container = (t.spec.get("containers") or [{}])[0]  # KubeRay: the Ray container is index 0
        limits = (ray_container.get("resources") or {}).get("limits") or {}
        if _quantity(limits.get(GPU_RESOURCE)) < 1:
            problems.append(f"{t.where}: a GPU worker group must set resources.limits[{GPU_RESOURCE!r}] >= 1 on "
                            f"container {ray_container.get('name')} (Ray derives num-gpus from it)")
        if not any(tol.get("key") == GPU_RESOURCE for tol in t.spec.get("tolerations") or []):
            problems.append(f"{t.where}: add a toleration for the {GPU_RESOURCE} taint (GPU nodes are tainted)")
        _, tag, _ = split_image(ray_container.get("image", ""))
        if "gpu" not in tag:
            problems.append(f"{t.where}: image {ray_container.get('image')} is not a -gpu (CUDA) build")
    return problems


def check_ray_jobs(ctx: Context) -> list[str]:
    """RayJob: a known submissionMode; the entrypoint runs a study that exists in tune_spaces/, with
    S3 storage and an MLflow URL that names a Service and port in these manifests."""
    problems = []
    services = {(_ns(o), o["metadata"]["name"]): {p.get("port") for p in (o.get("spec") or {}).get("ports") or []}
                for o in ctx.objects if o["kind"] == "Service"}
    for job in (o for o in ctx.objects if o["kind"] == "RayJob"):
        spec, name = job.get("spec") or {}, _name(job)
        mode = spec.get("submissionMode", "K8sJobMode")
        if mode not in SUBMISSION_MODES:
            problems.append(f"{name}: submissionMode {mode!r} is not one of {', '.join(SUBMISSION_MODES)}")
        if spec.get("clusterSelector") and spec.get("rayClusterSpec"):
            problems.append(f"{name}: set either clusterSelector or rayClusterSpec, not both")
        if spec.get("shutdownAfterJobFinishes") and not spec.get("rayClusterSpec"):
            problems.append(f"{name}: shutdownAfterJobFinishes needs the job's own rayClusterSpec")
        try:
            tokens = shlex.split(spec.get("entrypoint", ""))
        except ValueError as e:
            problems.append(f"{name}: entrypoint does not parse as a shell command ({e})")
            continue
        positions = [i for i in range(1, len(tokens) - 1)
                     if tokens[i] == "tune" and tokens[i - 1].rsplit("/", 1)[-1] == "largebatch"]
        if not positions:
            problems.append(f"{name}: entrypoint should run `largebatch tune tune_spaces/<study>.yaml ...`")
            continue
        study = tokens[positions[0] + 1]
        if not study.startswith("tune_spaces/") or not (ctx.repo_root / study).is_file():
            problems.append(f"{name}: entrypoint names study {study!r}, which is not a file in tune_spaces/ "
                            f"(the image ships the repo's tune_spaces/ as its working dir)")
        options = _options(tokens[positions[0] + 2:])
        storage = options.get("--storage")
        if storage is not None and not storage.startswith("s3://"):
            problems.append(f"{name}: --storage {storage!r} must be s3://... (pod disks vanish with the cluster)")
        mlflow = options.get("--mlflow")
        if mlflow is not None:
            url = urlparse(mlflow)
            svc = (url.hostname or "").split(".")[0]
            ports = services.get((_ns(job), svc))
            if ports is None or (url.port or 80) not in ports:
                problems.append(f"{name}: --mlflow {mlflow} names no Service {svc!r} with port {url.port or 80} "
                                f"in these manifests")
    return problems


def check_ray_cluster_drift(ctx: Context) -> list[str]:
    """The RayJob's own cluster and the interactive RayCluster must not drift apart: a study that works
    interactively must run the same way as a batch job."""
    clusters = [o for o in ctx.objects if o["kind"] == "RayCluster"]
    problems = []
    for job in (o for o in ctx.objects if o["kind"] == "RayJob"):
        own = (job.get("spec") or {}).get("rayClusterSpec")
        if not own or not clusters or any(c.get("spec") == own for c in clusters):
            continue
        diff = _first_difference(clusters[0].get("spec"), own) or "(root)"
        problems.append(f"{_name(job)}: rayClusterSpec differs from {_name(clusters[0])} spec at {diff}; "
                        f"patch both the same way")
    return problems


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            diff = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
            if diff:
                return diff
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            diff = _first_difference(x, y, f"{path}[{i}]")
            if diff:
                return diff
        return None
    return None if a == b else (path or "(root)")


RAY_CHECKS: tuple[Callable[[Context], list[str]], ...] = (check_ray_worker_groups, check_ray_jobs, check_ray_cluster_drift)
