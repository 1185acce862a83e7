"""Offline validation of k8s/ (rendered by `kubectl kustomize`, as `kubectl apply -k` would) and of cluster/*.yaml.

No API server is reachable where this runs, so `validate_kustomization` checks what one would, and more:

- schemas: built-in kinds with `kubernetes_validate` (strict: unknown fields fail); KubeRay kinds with the
  CRD schemas vendored in k8s/crd-schemas, made strict by adding `additionalProperties: false` to every object
  schema that lists `properties` (the CRDs omit it, so a typo'd field would otherwise pass and be pruned);
- semantics (`checks.py`): pinned images, Secret keys that exist in k8s/secret.example.yaml, Service
  selectors that match a pod template, probes, requests/limits, non-root pods, GPU worker groups that ask
  for GPUs, the RayJob's study file and MLflow Service, MLflow's allowed hosts, and the Ray version pinned
  in pyproject.toml.

`validate_cluster_config` checks a `ray up` YAML against Ray's own `ray/autoscaler/ray-schema.json`.

    python -m tools.deploy k8s/base k8s/overlays/dev k8s/overlays/gpu cluster/aws-gpu.yaml
"""
from __future__ import annotations

import copy
import functools
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from tools.deploy.render import KustomizeError, find_kustomization, load_yaml_documents, render_kustomization
from tools.deploy.pins import Pins, find_repo_root, image_version_problems, read_pins

# The Kubernetes API version we validate against: a release kubernetes-validate ships schemas for
# (it picks the newest schema not newer than this) and that managed clusters run today.
K8S_VERSION = "1.35.0"
RAY_CRD_SCHEMAS = {"RayCluster": "raycluster_v1.json", "RayJob": "rayjob_v1.json", "RayService": "rayservice_v1.json"}
SCHEMAS_ENV = "LARGEBATCH_K8S_SCHEMAS"
DEFAULT_KUSTOMIZATIONS = ("k8s/base", "k8s/overlays/dev", "k8s/overlays/gpu")


def find_schema_dir(repo_root: Path) -> Path:
    """KubeRay CRD schemas: $LARGEBATCH_K8S_SCHEMAS, else the copies vendored in k8s/crd-schemas."""
    path = Path(os.environ.get(SCHEMAS_ENV) or repo_root / "k8s" / "crd-schemas")
    if not (path / RAY_CRD_SCHEMAS["RayCluster"]).is_file():
        raise FileNotFoundError(f"KubeRay CRD schemas not found in {path}; set {SCHEMAS_ENV}")
    return path


def find_secret_example(start: Path) -> Path:
    """The nearest secret.example.yaml at or above a kustomization directory."""
    for candidate in [start, *start.parents]:
        if (candidate / "secret.example.yaml").is_file():
            return candidate / "secret.example.yaml"
    raise FileNotFoundError(f"no secret.example.yaml at or above {start}")


def strictify(schema: Any) -> Any:
    """A copy of `schema` where every object schema with `properties` and no `additionalProperties`
    gets `additionalProperties: false`, so unknown (misspelled) fields are errors."""
    if isinstance(schema, dict):
        out = {key: strictify(value) for key, value in schema.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strictify(item) for item in schema]
    return schema


@functools.lru_cache(maxsize=None)
def _crd_validator(schema_path: str):
    import jsonschema

    schema = strictify(json.loads(Path(schema_path).read_text()))
    return jsonschema.Draft7Validator(schema)


def _name(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def schema_problems(obj: dict[str, Any], schema_dir: Path) -> list[str]:
    """Problems of one rendered object against its schema (KubeRay CRD or built-in Kubernetes kind)."""
    kind = obj.get("kind")
    if kind in RAY_CRD_SCHEMAS:
        problems = []
        if obj.get("apiVersion") != "ray.io/v1":
            problems.append(f"{_name(obj)}: apiVersion {obj.get('apiVersion')!r}, expected 'ray.io/v1'")
        validator = _crd_validator(str(schema_dir / RAY_CRD_SCHEMAS[kind]))
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
            path = ".".join(str(p) for p in error.absolute_path) or "(root)"
            problems.append(f"{_name(obj)}: {path}: {error.message}")
        return problems

    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(p) for p in error.path) or "(root)"
        return [f"{_name(obj)}: {path}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"{_name(obj)}: {error.message}"]
    return []


def validate_objects(objects: list[dict[str, Any]], *, repo_root: Path, schema_dir: Path,
                     secret_example: Path, pins: Pins | None = None) -> list[str]:
    """Every problem with a rendered list of objects; empty means deployable as far as we can tell offline."""
    from tools.deploy import checks

    pins = pins or read_pins(repo_root)
    problems: list[str] = []
    for obj in objects:
        problems += schema_problems(obj, schema_dir)
    context = checks.Context(
        objects=objects,
        repo_root=repo_root,
        pins=pins,
        secrets=load_secret_example(secret_example),
        secret_example=secret_example,
    )
    k8s_root = secret_example.parent  # namespace.yaml and images.yaml sit beside secret.example.yaml
    namespace_file = k8s_root / "namespace.yaml"
    if namespace_file.is_file():
        context.namespaces = [d for d in load_yaml_documents(namespace_file) if d["kind"] == "Namespace"]
    context.tag_only = load_tag_only(k8s_root / "images.yaml")
    for check in checks.ALL_CHECKS:
        try:
            problems += check(context)
        except Exception as e:  # a malformed object the schema step has already reported
            problems.append(f"{check.__name__} could not run ({e!r}); fix the schema problems first")
    return problems


def load_tag_only(path: Path) -> dict[str, str]:
    """images.yaml's tag_only map (image -> why it has no digest); empty when the file is absent."""
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    tag_only = data.get("tag_only") or {} if isinstance(data, dict) else {}
    return {str(k): str(v) for k, v in tag_only.items()} if isinstance(tag_only, dict) else {}


def load_secret_example(path: Path) -> dict[str, set[str]]:
    """Secret name -> its keys, from the placeholder file."""
    secrets: dict[str, set[str]] = {}
    for doc in load_yaml_documents(path):
        if doc["kind"] == "Secret":
            keys = set(doc.get("data") or {}) | set(doc.get("stringData") or {})
            secrets[doc["metadata"]["name"]] = keys
    return secrets


def validate_kustomization(path: str | Path, *, repo_root: str | Path | None = None,
                           schema_dir: str | Path | None = None,
                           secret_example: str | Path | None = None) -> list[str]:
    """Render the kustomization at `path` and return its problems (empty list = OK).

    repo_root (pyproject.toml, tune_spaces/) defaults to the nearest ancestor with a pyproject.toml;
    secret_example to the nearest secret.example.yaml at or above the kustomization.
    """
    try:
        kdir = find_kustomization(path).parent.resolve()
        objects = render_kustomization(kdir)
    except KustomizeError as e:
        return [str(e)]
    root = Path(repo_root).resolve() if repo_root else find_repo_root(kdir)
    return validate_objects(
        objects,
        repo_root=root,
        schema_dir=Path(schema_dir) if schema_dir else find_schema_dir(root),
        secret_example=Path(secret_example) if secret_example else find_secret_example(kdir),
    )


# ---- Ray cluster launcher YAMLs ----------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _ray_cluster_validator():
    import importlib.util

    import jsonschema

    # find_spec locates the installed package without importing it (importing ray costs seconds).
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("ray is not installed; its autoscaler/ray-schema.json is the cluster schema")
    schema_path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    return jsonschema.Draft7Validator(json.loads(schema_path.read_text()))


def validate_cluster_config(path: str | Path, *, repo_root: str | Path | None = None) -> list[str]:
    """Problems of a `ray up` cluster YAML: Ray's schema, the provider's own rules, the Ray version pin."""
    from tools.deploy.checks import ray_pins_in_commands

    path = Path(path)
    root = Path(repo_root) if repo_root else find_repo_root(path.parent)
    pins = read_pins(root)
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        return [f"{path}: malformed YAML: {e}"]
    if not isinstance(config, dict):
        return [f"{path}: a cluster config must be a mapping"]
    problems = []
    for error in sorted(_ray_cluster_validator().iter_errors(copy.deepcopy(config)),
                        key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in error.absolute_path) or "(root)"
        problems.append(f"{path}: {where}: {error.message}")

    provider = config.get("provider") or {}
    if provider.get("type") == "local":
        # Ray's prepare_local() aborts on these for on-prem clusters.
        for field in ("head_node", "worker_nodes", "available_node_types"):
            if config.get(field):
                problems.append(f"{path}: {field} is not supported with provider type local")
        if "coordinator_address" not in provider and not ("head_ip" in provider and "worker_ips" in provider):
            problems.append(f"{path}: provider type local needs head_ip and worker_ips (or coordinator_address)")
    else:
        node_types = config.get("available_node_types") or {}
        if config.get("head_node_type") not in node_types:
            problems.append(f"{path}: head_node_type {config.get('head_node_type')!r} is not in available_node_types")
        for name, node_type in node_types.items():
            if node_type.get("min_workers", 0) > node_type.get("max_workers", node_type.get("min_workers", 0)):
                problems.append(f"{path}: available_node_types.{name}: min_workers > max_workers")

    docker = config.get("docker") or {}
    for key in ("image", "head_image", "worker_image"):
        if key in docker:
            problems += _cluster_image_problems(docker[key], pins, f"{path}: docker.{key}")
    for name, node_type in (config.get("available_node_types") or {}).items():
        image = (node_type.get("docker") or {}).get("worker_image")
        if image:
            problems += _cluster_image_problems(image, pins, f"{path}: available_node_types.{name}.docker.worker_image")
    problems += [f"{path}: {p}" for p in ray_pins_in_commands(config, pins)]
    problems += [f"{path}: {p}" for p in dashboard_exposure(config)]
    return problems


_DASHBOARD_HOST = re.compile(r"--dashboard-host[= ]+['\"]?([^\s'\"]+)")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def dashboard_exposure(config: dict[str, Any]) -> list[str]:
    """The head's dashboard (and job API, which runs submitted code) binds loopback only."""
    problems = []
    for i, command in enumerate(config.get("head_start_ray_commands") or []):
        for host in _DASHBOARD_HOST.findall(str(command)):
            if host not in LOOPBACK_HOSTS:
                problems.append(f"head_start_ray_commands[{i}]: --dashboard-host={host} exposes the dashboard and "
                                f"job API on the network; use --dashboard-host=127.0.0.1 and reach it through "
                                f"`ray dashboard <config>` (an SSH tunnel)")
    return problems


def _cluster_image_problems(image: str, pins: Pins, where: str) -> list[str]:
    from tools.deploy.render import split_image

    _, tag, digest = split_image(image)
    if not tag and not digest or tag == "latest":
        return [f"{where}: image {image} is not pinned to a tag"]
    return image_version_problems(image, pins, where)


def main(argv: list[str] | None = None) -> int:
    """Validate kustomization directories and cluster YAMLs; print problems; exit 1 if there are any."""
    paths = (argv if argv is not None else sys.argv[1:]) or list(DEFAULT_KUSTOMIZATIONS)
    problems: list[str] = []
    for arg in paths:
        path = Path(arg)
        if path.is_file() and path.suffix in (".yaml", ".yml") and path.name not in ("kustomization.yaml",):
            problems += validate_cluster_config(path)
        else:
            problems += validate_kustomization(path)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"OK: {', '.join(paths)}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
