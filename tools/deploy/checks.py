"""Semantic checks on rendered manifests: what a schema cannot see, and what breaks only at run time.

Each check takes a `Context` and returns problems as one-line strings naming the object, the field and
the fix. `ALL_CHECKS` is the registry `validate.validate_objects` runs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from tools.deploy.render import split_image
from tools.deploy.pins import Pins, image_version_problems

LONG_RUNNING_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet")
BATCH_KINDS = ("Job",)
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
KUBERAY_TOKEN_KEY = "auth_token"  # fixed by KubeRay (RAY_AUTH_TOKEN_SECRET_KEY)
GPU_RESOURCE = "nvidia.com/gpu"
_PLACEHOLDER = re.compile(r"^(CHANGE_ME.*|<[^>]*>|)$")


@dataclass
class Context:
    objects: list[dict[str, Any]]
    repo_root: Path
    pins: Pins
    secrets: dict[str, set[str]]  # from secret.example.yaml: name -> keys
    secret_example: Path
    namespaces: list[dict[str, Any]] = field(default_factory=list)  # from namespace.yaml
    namespace_file_name: str = "namespace.yaml"
    tag_only: dict[str, str] = field(default_factory=dict)  # from images.yaml: image -> why it has no digest
    image_pins_name: str = "images.yaml"
    _templates: list["PodTemplate"] | None = field(default=None, repr=False)

    @property
    def templates(self) -> list["PodTemplate"]:
        if self._templates is None:
            self._templates = [t for obj in self.objects for t in pod_templates(obj)]
        return self._templates


@dataclass(frozen=True)
class PodTemplate:
    where: str       # e.g. "RayCluster/largebatch worker group gpu"
    namespace: str
    template: dict[str, Any]
    role: str        # long-running | batch | ray-head | ray-worker | ray-submitter
    group: dict[str, Any] | None = None

    @property
    def labels(self) -> dict[str, str]:
        return (self.template.get("metadata") or {}).get("labels") or {}

    @property
    def spec(self) -> dict[str, Any]:
        return self.template.get("spec") or {}

    def containers(self) -> Iterator[dict[str, Any]]:
        yield from self.spec.get("initContainers") or []
        yield from self.spec.get("containers") or []


def _ns(obj: dict[str, Any]) -> str:
    return (obj.get("metadata") or {}).get("namespace", "")


def _name(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{(obj.get('metadata') or {}).get('name')}"


def ray_cluster_specs(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, RayClusterSpec) for RayCluster, RayJob (own cluster) and RayService objects."""
    spec = obj.get("spec") or {}
    if obj["kind"] == "RayCluster":
        return [(_name(obj), spec)]
    if obj["kind"] == "RayJob" and spec.get("rayClusterSpec"):
        return [(f"{_name(obj)} rayClusterSpec", spec["rayClusterSpec"])]
    if obj["kind"] == "RayService" and spec.get("rayClusterConfig"):
        return [(f"{_name(obj)} rayClusterConfig", spec["rayClusterConfig"])]
    return []


def pod_templates(obj: dict[str, Any]) -> list[PodTemplate]:
    kind, ns, spec = obj["kind"], _ns(obj), obj.get("spec") or {}
    out: list[PodTemplate] = []
    if kind in LONG_RUNNING_KINDS + BATCH_KINDS and spec.get("template"):
        role = "long-running" if kind in LONG_RUNNING_KINDS else "batch"
        out.append(PodTemplate(_name(obj), ns, spec["template"], role))
    if kind == "CronJob":
        template = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template")
        if template:
            out.append(PodTemplate(_name(obj), ns, template, "batch"))
    if kind == "Pod":
        out.append(PodTemplate(_name(obj), ns, obj, "long-running"))
    for where, cluster in ray_cluster_specs(obj):
        head = cluster.get("headGroupSpec") or {}
        if head.get("template"):
            out.append(PodTemplate(f"{where} head", ns, head["template"], "ray-head", head))
        for group in cluster.get("workerGroupSpecs") or []:
            if group.get("template"):
                out.append(PodTemplate(f"{where} worker group {group.get('groupName')}", ns, group["template"],
                                       "ray-worker", group))
    if kind == "RayJob" and spec.get("submitterPodTemplate"):
        out.append(PodTemplate(f"{_name(obj)} submitterPodTemplate", ns, spec["submitterPodTemplate"], "ray-submitter"))
    return out


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every mapping in a nested structure, with its dotted path."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ---- checks (more in ray_checks.py, mlflow_checks.py, hardening.py; ALL_CHECKS at the end lists them all) ----

def check_images(ctx: Context) -> list[str]:
    """Every image names an explicit tag (not `latest`) or a digest, so a rollout is reproducible."""
    problems = []
    for where, image in _images(ctx):
        _, tag, digest = split_image(image)
        if not digest and (not tag or tag == "latest"):
            problems.append(f"{where}: image {image!r} is not pinned; use an explicit version tag or a digest")
    return problems


def _images(ctx: Context) -> Iterator[tuple[str, str]]:
    for t in ctx.templates:
        for c in t.containers():
            yield f"{t.where} container {c.get('name')}", c.get("image", "")
    for obj in ctx.objects:
        for where, cluster in ray_cluster_specs(obj):
            image = (cluster.get("autoscalerOptions") or {}).get("image")
            if image:
                yield f"{where} autoscalerOptions", image


def check_ray_version(ctx: Context) -> list[str]:
    """rayVersion and every Ray-based image agree with the ray==X pin in pyproject.toml."""
    problems = []
    for obj in ctx.objects:
        for where, cluster in ray_cluster_specs(obj):
            if str(cluster.get("rayVersion")) != ctx.pins.ray:
                problems.append(f"{where}: rayVersion {cluster.get('rayVersion')!r} != {ctx.pins.ray!r} "
                                f"(the ray pin in pyproject.toml)")
    for where, image in _images(ctx):
        problems += image_version_problems(image, ctx.pins, where)
    return problems


def check_secrets(ctx: Context) -> list[str]:
    """Credentials come only from Secrets created out of band, and every reference resolves to a
    Secret and key documented (as a placeholder) in secret.example.yaml."""
    problems = []
    example = ctx.secret_example.name
    for obj in ctx.objects:
        if obj["kind"] == "Secret":
            problems.append(f"{_name(obj)}: Secrets must not be rendered into the manifests; create it with "
                            f"`kubectl create secret` (see {example})")
        for path, node in _walk(obj):
            refs: list[tuple[str, str | None]] = []
            if "secretKeyRef" in node and isinstance(node["secretKeyRef"], dict):
                refs.append((node["secretKeyRef"].get("name"), node["secretKeyRef"].get("key")))
            if "secretRef" in node and isinstance(node["secretRef"], dict):
                refs.append((node["secretRef"].get("name"), None))
            if isinstance(node.get("secret"), dict) and "secretName" in node["secret"]:
                refs.append((node["secret"]["secretName"], None))
            if path.endswith("authOptions") and node.get("mode", "token") == "token" \
                    and not node.get("enableK8sTokenAuth"):
                if "secretName" in node:
                    refs.append((node["secretName"], KUBERAY_TOKEN_KEY))
            for name, key in refs:
                if name not in ctx.secrets:
                    problems.append(f"{_name(obj)}: {path}: Secret {name!r} is not documented in {example} "
                                    f"(known: {', '.join(sorted(ctx.secrets))})")
                elif key is not None and key not in ctx.secrets[name]:
                    problems.append(f"{_name(obj)}: {path}: Secret {name!r} has no key {key!r} in {example} "
                                    f"(keys: {', '.join(sorted(ctx.secrets[name]))})")
    return problems


def check_secret_example_placeholders(ctx: Context) -> list[str]:
    from tools.deploy.render import load_yaml_documents

    problems = []
    for doc in load_yaml_documents(ctx.secret_example):
        for section in ("data", "stringData"):
            for key, value in (doc.get(section) or {}).items():
                if not _PLACEHOLDER.match(str(value)):
                    problems.append(f"{ctx.secret_example}: Secret {doc['metadata']['name']} key {key!r} holds a "
                                    f"value; this file must hold placeholders (CHANGE_ME) only")
    return problems


def check_configmaps(ctx: Context) -> list[str]:
    """configMapRef / configMapKeyRef / configMap volumes name a rendered ConfigMap (and key)."""
    maps = {(_ns(o), o["metadata"]["name"]): set((o.get("data") or {})) | set(o.get("binaryData") or {})
            for o in ctx.objects if o["kind"] == "ConfigMap"}
    problems = []
    for obj in ctx.objects:
        for path, node in _walk(obj):
            for ref_key in ("configMapRef", "configMapKeyRef", "configMap"):
                ref = node.get(ref_key)
                if not isinstance(ref, dict) or ref.get("optional"):
                    continue
                keys = maps.get((_ns(obj), ref.get("name")))
                if keys is None:
                    problems.append(f"{_name(obj)}: {path}.{ref_key}: no ConfigMap {ref.get('name')!r} "
                                    f"in the manifests")
                elif ref_key == "configMapKeyRef" and ref.get("key") not in keys:
                    problems.append(f"{_name(obj)}: {path}: ConfigMap {ref.get('name')!r} "
                                    f"has no key {ref.get('key')!r}")
    return problems


def check_services(ctx: Context) -> list[str]:
    """Every Service selector matches some pod template, and named target ports exist on those pods."""
    problems = []
    for svc in (o for o in ctx.objects if o["kind"] == "Service"):
        selector = (svc.get("spec") or {}).get("selector") or {}
        if not selector:
            continue
        matches = [t for t in ctx.templates if t.namespace == _ns(svc) and _selects(selector, t.labels)]
        if not matches:
            problems.append(f"{_name(svc)}: selector {selector} matches no pod template's labels")
            continue
        port_names = {p.get("name") for t in matches for c in t.containers() for p in c.get("ports") or []}
        for port in svc["spec"].get("ports") or []:
            target = port.get("targetPort")
            if isinstance(target, str) and target not in port_names:
                problems.append(f"{_name(svc)}: targetPort {target!r} is not a named port of the selected pods")
    return problems


def check_network_policies(ctx: Context) -> list[str]:
    """A NetworkPolicy whose selectors match nothing protects nothing (or admits nobody)."""
    problems = []
    for pol in (o for o in ctx.objects if o["kind"] == "NetworkPolicy"):
        spec = pol.get("spec") or {}
        selectors = [("podSelector", (spec.get("podSelector") or {}).get("matchLabels") or {})]
        for i, rule in enumerate(spec.get("ingress") or []):
            for j, peer in enumerate(rule.get("from") or []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    selectors.append((f"ingress[{i}].from[{j}].podSelector",
                                      (peer["podSelector"] or {}).get("matchLabels") or {}))
        for where, labels in selectors:
            if labels and not any(t.namespace == _ns(pol) and _selects(labels, t.labels) for t in ctx.templates):
                problems.append(f"{_name(pol)}: {where} {labels} matches no pod template")
    return problems


def check_probes(ctx: Context) -> list[str]:
    """Long-running containers (Deployments, StatefulSets, ...) have readiness and liveness probes.
    Ray containers are exempt: KubeRay injects Ray's own health probes into them."""
    problems = []
    for t in ctx.templates:
        if t.role != "long-running":
            continue
        for c in t.spec.get("containers") or []:
            missing = [p for p in ("readinessProbe", "livenessProbe") if p not in c]
            if missing:
                problems.append(f"{t.where} container {c.get('name')}: missing {' and '.join(missing)}")
    return problems


def check_resources(ctx: Context) -> list[str]:
    """Every container (and the KubeRay autoscaler) sets cpu, memory and ephemeral-storage requests and
    limits: without an ephemeral-storage limit, logs and spilled objects can fill the node's disk and get
    every pod on it evicted."""
    problems = []
    targets = [(f"{t.where} container {c.get('name')}", c.get("resources") or {})
               for t in ctx.templates for c in t.containers()]
    for obj in ctx.objects:
        for where, cluster in ray_cluster_specs(obj):
            if cluster.get("enableInTreeAutoscaling"):
                options = cluster.get("autoscalerOptions") or {}
                targets.append((f"{where} autoscalerOptions", options.get("resources") or {}))
    for where, resources in targets:
        missing = [f"{kind}.{r}" for kind in ("requests", "limits") for r in ("cpu", "memory", "ephemeral-storage")
                   if r not in (resources.get(kind) or {})]
        if missing:
            problems.append(f"{where}: resources missing {', '.join(missing)}")
    return problems


def check_non_root(ctx: Context) -> list[str]:
    """Every container runs with runAsNonRoot and a non-zero runAsUser (pod- or container-level)."""
    problems = []
    for t in ctx.templates:
        pod_sc = t.spec.get("securityContext") or {}
        for c in t.containers():
            sc = {**pod_sc, **(c.get("securityContext") or {})}
            if sc.get("runAsNonRoot") is not True:
                problems.append(f"{t.where} container {c.get('name')}: securityContext.runAsNonRoot must be true")
            if not isinstance(sc.get("runAsUser"), int) or sc["runAsUser"] == 0:
                problems.append(f"{t.where} container {c.get('name')}: set a non-zero securityContext.runAsUser")
    for obj in ctx.objects:
        for where, cluster in ray_cluster_specs(obj):
            sc = (cluster.get("autoscalerOptions") or {}).get("securityContext") or {}
            if cluster.get("enableInTreeAutoscaling") and sc.get("runAsNonRoot") is not True:
                problems.append(f"{where} autoscalerOptions: securityContext.runAsNonRoot must be true")
    return problems


def _options(tokens: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for i, token in enumerate(tokens):
        if token.startswith("--"):
            key, eq, value = token.partition("=")
            options[key] = value if eq else (tokens[i + 1] if i + 1 < len(tokens) else "")
    return options


_RAY_PIN = re.compile(r"\bray(\[[^\]]*\])?==([0-9][^\s'\"]*)")
_TORCH_PIN = re.compile(r"\btorch==([0-9][^\s'\"]*)")


def ray_pins_in_commands(config: dict[str, Any], pins: Pins) -> list[str]:
    """`ray==X` / `torch==X` in a cluster config's shell commands must match pyproject.toml."""
    problems = []
    for path, node in _walk(config):
        for key, value in node.items():
            if not key.endswith("_commands") or not isinstance(value, list):
                continue
            where = f"{path}.{key}" if path else key
            for command in value:
                for match in _RAY_PIN.finditer(str(command)):
                    if match[2] != pins.ray:
                        problems.append(f"{where}: installs ray=={match[2]}, pyproject.toml pins {pins.ray}")
                for match in _TORCH_PIN.finditer(str(command)):
                    if match[1] != pins.torch:
                        problems.append(f"{where}: installs torch=={match[1]}, pyproject.toml pins {pins.torch}")
    return problems


ALL_CHECKS: tuple[Callable[[Context], list[str]], ...] = (
    check_images,
    check_ray_version,
    check_secrets,
    check_secret_example_placeholders,
    check_configmaps,
    check_services,
    check_network_policies,
    check_probes,
    check_resources,
    check_non_root,
)


def _with_more_checks() -> tuple[Callable[[Context], list[str]], ...]:
    from tools.deploy.hardening import HARDENING_CHECKS
    from tools.deploy.mlflow_checks import MLFLOW_CHECKS
    from tools.deploy.ray_checks import RAY_CHECKS

    return ALL_CHECKS + RAY_CHECKS + MLFLOW_CHECKS + HARDENING_CHECKS


ALL_CHECKS = _with_more_checks()
