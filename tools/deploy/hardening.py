"""Checks for a locked-down deployment: Pod Security "restricted", ServiceAccounts and API tokens,
NetworkPolicies, ephemeral storage, disruption budgets, MLflow's auth and Host/CORS lists, image digests.

Each check takes the `checks.Context` of one rendered kustomization and returns one-line problems naming
the object, the field and the fix; `HARDENING_CHECKS` is appended to `checks.ALL_CHECKS`.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable

from tools.deploy import netpol
from tools.deploy.render import split_image

if TYPE_CHECKING:
    from tools.deploy.checks import Context, PodTemplate

# Pod Security Standards, "restricted" profile (Kubernetes' own list).
RESTRICTED_VOLUME_TYPES = frozenset({"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                                     "persistentVolumeClaim", "projected", "secret"})
VOLUME_META_KEYS = frozenset({"name"})
ALLOWED_ADDED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def _containers_with_kind(t: "PodTemplate"):
    for c in t.spec.get("initContainers") or []:
        yield "init container", c
    for c in t.spec.get("containers") or []:
        yield "container", c


def check_pod_security(ctx: "Context") -> list[str]:
    """Every pod meets Pod Security "restricted", with seccompProfile RuntimeDefault; the namespace enforces it."""
    problems = []
    for t in ctx.templates:
        spec, pod_sc = t.spec, t.spec.get("securityContext") or {}
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                problems.append(f"{t.where}: {key}: true is not allowed (Pod Security restricted)")
        for volume in spec.get("volumes") or []:
            kinds = set(volume) - VOLUME_META_KEYS
            bad = kinds - RESTRICTED_VOLUME_TYPES
            if bad:
                problems.append(f"{t.where}: volume {volume.get('name')} uses {', '.join(sorted(bad))}, "
                                f"not allowed by Pod Security restricted")
        pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
        for kind, c in _containers_with_kind(t):
            where = f"{t.where} {kind} {c.get('name')}"
            sc = c.get("securityContext") or {}
            seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
            if seccomp != "RuntimeDefault":
                problems.append(f"{where}: set securityContext.seccompProfile.type: RuntimeDefault "
                                f"(pod or container; now {seccomp!r})")
            problems += _container_sc_problems(sc, where)
            for port in c.get("ports") or []:
                if port.get("hostPort"):
                    problems.append(f"{where}: hostPort {port['hostPort']} is not allowed (Pod Security restricted)")
    for obj in ctx.objects:
        from tools.deploy.checks import ray_cluster_specs

        for where, cluster in ray_cluster_specs(obj):
            if cluster.get("enableInTreeAutoscaling"):
                sc = (cluster.get("autoscalerOptions") or {}).get("securityContext") or {}
                problems += _container_sc_problems(sc, f"{where} autoscalerOptions")
    problems += _namespace_problems(ctx)
    return problems


def _container_sc_problems(sc: dict[str, Any], where: str) -> list[str]:
    problems = []
    if sc.get("privileged"):
        problems.append(f"{where}: securityContext.privileged must not be true")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}: set securityContext.allowPrivilegeEscalation: false")
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        problems.append(f"{where}: set securityContext.capabilities.drop: [\"ALL\"]")
    added = set(caps.get("add") or []) - ALLOWED_ADDED_CAPABILITIES
    if added:
        problems.append(f"{where}: capabilities.add {sorted(added)} is not allowed (only NET_BIND_SERVICE)")
    if sc.get("procMount", "Default") != "Default":
        problems.append(f"{where}: securityContext.procMount must be Default")
    return problems


def _namespace_problems(ctx: "Context") -> list[str]:
    namespaces = {(o.get("metadata") or {}).get("name"): o for o in ctx.namespaces}
    problems = []
    for ns in sorted({t.namespace for t in ctx.templates}):
        obj = namespaces.get(ns)
        if obj is None:
            problems.append(f"namespace {ns!r} is not defined in {ctx.namespace_file_name}; define it there with "
                            f"the label {ENFORCE_LABEL}: restricted")
        elif ((obj.get("metadata") or {}).get("labels") or {}).get(ENFORCE_LABEL) != "restricted":
            problems.append(f"Namespace/{ns} ({ctx.namespace_file_name}): set label {ENFORCE_LABEL}: restricted")
    return problems


def check_service_accounts(ctx: "Context") -> list[str]:
    """Every pod runs as its own ServiceAccount (rendered here, not `default`) and mounts no API token,
    except the head of an autoscaling Ray cluster, whose autoscaler sidecar needs one."""
    accounts = {((o.get("metadata") or {}).get("namespace", ""), o["metadata"]["name"]): o
                for o in ctx.objects if o["kind"] == "ServiceAccount"}
    problems = []
    for (ns, name), sa in accounts.items():
        if sa.get("automountServiceAccountToken") is not False:
            problems.append(f"ServiceAccount/{name}: set automountServiceAccountToken: false (pods that need a "
                            f"token opt in themselves)")
    for t in ctx.templates:
        name = t.spec.get("serviceAccountName")
        if not name or name == "default":
            problems.append(f"{t.where}: set serviceAccountName to this component's own ServiceAccount, not default")
        elif (t.namespace, name) not in accounts:
            problems.append(f"{t.where}: ServiceAccount {name!r} is not in the manifests")
        needs_token = t.role == "ray-head" and _autoscaling(t, ctx)
        mount = t.spec.get("automountServiceAccountToken")
        if needs_token and mount is not True:
            problems.append(f"{t.where}: the Ray autoscaler sidecar needs the API token: set "
                            f"automountServiceAccountToken: true on this pod")
        if not needs_token and mount is not False:
            problems.append(f"{t.where}: set automountServiceAccountToken: false (it never calls the Kubernetes API)")
    return problems


def _autoscaling(t: "PodTemplate", ctx: "Context") -> bool:
    from tools.deploy.checks import ray_cluster_specs

    for obj in ctx.objects:
        for where, cluster in ray_cluster_specs(obj):
            if t.where.startswith(where) and cluster.get("enableInTreeAutoscaling"):
                return True
    return False


def check_empty_dir_size(ctx: "Context") -> list[str]:
    """Every emptyDir has a sizeLimit: an unbounded one fills the node's disk (or memory, for medium Memory)."""
    problems = []
    for t in ctx.templates:
        for volume in t.spec.get("volumes") or []:
            if "emptyDir" in volume and not (volume["emptyDir"] or {}).get("sizeLimit"):
                problems.append(f"{t.where}: emptyDir volume {volume.get('name')} has no sizeLimit")
    return problems


def check_injected_container_storage(ctx: "Context") -> list[str]:
    """Where KubeRay injects containers (workers' wait-gcs-ready, with cpu/memory but no ephemeral-storage),
    a LimitRange gives Containers a default ephemeral-storage limit."""
    from tools.deploy.checks import ray_cluster_specs

    namespaces = {_ns(o) for o in ctx.objects if ray_cluster_specs(o)}
    problems = []
    for ns in sorted(namespaces):
        if not any(_ns(o) == ns and any(item.get("type") == "Container"
                                        and "ephemeral-storage" in (item.get("default") or {})
                                        for item in (o.get("spec") or {}).get("limits") or [])
                   for o in ctx.objects if o["kind"] == "LimitRange"):
            problems.append(f"namespace {ns}: no LimitRange gives Containers a default ephemeral-storage limit "
                            f"(KubeRay's injected init containers set none)")
    return problems


# The components whose pods a voluntary disruption must not take down unannounced.
PDB_REQUIRED = {"Ray head": {"app.kubernetes.io/component": "ray-head"},
                "MLflow": {"app.kubernetes.io/name": "mlflow"}}


def check_disruption_budgets(ctx: "Context") -> list[str]:
    """A PodDisruptionBudget covers the Ray head and MLflow, and every PDB selects some pod."""
    pdbs = [o for o in ctx.objects if o["kind"] == "PodDisruptionBudget"]
    problems = []
    for pdb in pdbs:
        selector = (pdb.get("spec") or {}).get("selector")
        if not selector or not any(t.namespace == _ns(pdb) and netpol.selector_matches(selector, t.labels)
                                   for t in ctx.templates):
            problems.append(f"PodDisruptionBudget/{pdb['metadata']['name']}: selector {selector} matches no pod "
                            f"template")
    for component, labels in PDB_REQUIRED.items():
        for t in ctx.templates:
            if not all(t.labels.get(k) == v for k, v in labels.items()):
                continue
            if not any(_ns(p) == t.namespace and netpol.selector_matches((p.get("spec") or {}).get("selector"),
                                                                          t.labels) for p in pdbs):
                problems.append(f"{t.where}: no PodDisruptionBudget selects the {component} pods")
    return problems


def _ns(obj: dict[str, Any]) -> str:
    return (obj.get("metadata") or {}).get("namespace", "")


def check_image_digests(ctx: "Context") -> list[str]:
    """Images are pinned by digest with the tag beside it, or listed as tag-only with the reason."""
    from tools.deploy.checks import _images

    problems = []
    for where, image in _images(ctx):
        _, tag, digest = split_image(image)
        if digest:
            if not _DIGEST.match(digest):
                problems.append(f"{where}: image {image!r}: digest must be sha256:<64 lowercase hex>")
            if not tag:
                problems.append(f"{where}: image {image!r}: write the tag beside the digest (name:tag@sha256:...)")
        elif not str(ctx.tag_only.get(image, "")).strip():
            problems.append(f"{where}: image {image!r} is not pinned by digest; pin it (name:tag@sha256:...) or "
                            f"list it under tag_only in {ctx.image_pins_name} with the reason")
    return problems


def check_network_policies_lock_down(ctx: "Context") -> list[str]:
    """Default-deny in both directions, DNS for every pod, no route to the metadata address, and exactly the
    flows in FLOWS: the needed ones allowed, the others refused."""
    from tools.deploy.flows import FLOWS, flow_problems

    problems = []
    namespaces = sorted({t.namespace for t in ctx.templates})
    for ns in namespaces:
        if not any(_ns(p) == ns and not ((p.get("spec") or {}).get("podSelector") or {})
                   and {"Ingress", "Egress"} <= set((p.get("spec") or {}).get("policyTypes") or [])
                   and not (p.get("spec") or {}).get("ingress") and not (p.get("spec") or {}).get("egress")
                   for p in netpol.policies(ctx.objects)):
            problems.append(f"namespace {ns}: no default-deny NetworkPolicy (podSelector: {{}}, policyTypes: "
                            f"[Ingress, Egress], no rules)")
    for pol in netpol.policies(ctx.objects):
        problems += [f"NetworkPolicy/{pol['metadata']['name']}: {p}" for p in netpol.metadata_leaks(pol)]
    problems += flow_problems(ctx, FLOWS)
    return problems


HARDENING_CHECKS: tuple[Callable[["Context"], list[str]], ...] = (
    check_pod_security,
    check_service_accounts,
    check_empty_dir_size,
    check_injected_container_storage,
    check_disruption_budgets,
    check_image_digests,
    check_network_policies_lock_down,
)
