"""The network flows the deployment needs, and the ones it must refuse: the registry the NetworkPolicy check
evaluates (with `netpol.allowed`) against every rendered kustomization.

An endpoint is either a component of the manifests (pods whose labels include the given ones; a flow whose
component is absent from a kustomization, such as MinIO outside the dev overlay, is skipped), every pod, a
pod outside the manifests, or an address.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from tools.deploy.netpol import METADATA_ADDRESS, Address, Pod, allowed

if TYPE_CHECKING:
    from tools.deploy.checks import Context


@dataclass(frozen=True)
class Component:
    name: str
    labels: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Outside:
    """A pod that is not in the manifests (its own policies are unknown)."""
    name: str
    namespace: str
    labels: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Ip:
    name: str
    ip: str


EVERY_POD = Component("every pod", ())
RAY = Component("Ray pods", (("app.kubernetes.io/name", "largebatch-ray"),))
HEAD = Component("the Ray head", (("app.kubernetes.io/name", "largebatch-ray"),
                                  ("app.kubernetes.io/component", "ray-head")))
SUBMITTER = Component("the job submitter", (("app.kubernetes.io/name", "largebatch-submitter"),))
MLFLOW = Component("MLflow", (("app.kubernetes.io/name", "mlflow"),))
POSTGRES = Component("PostgreSQL", (("app.kubernetes.io/name", "postgres"),))
MINIO = Component("MinIO", (("app.kubernetes.io/name", "minio"),))
BUCKET_JOB = Component("the bucket Job", (("app.kubernetes.io/name", "minio-bucket-init"),))
KUBE_DNS = Outside("cluster DNS", "kube-system", (("k8s-app", "kube-dns"),))
OPERATOR = Outside("the KubeRay operator", "kuberay-system", (("app.kubernetes.io/name", "kuberay-operator"),))
STRANGER = Outside("a pod in another namespace", "default", (("app", "anything"),))
S3 = Ip("S3 (a public address)", "52.216.0.10")
METADATA = Ip("the cloud metadata address", METADATA_ADDRESS)
ELSEWHERE = Ip("an outside address", "203.0.113.7")
KUBE_API = Ip("the Kubernetes API server (a typical control-plane address)", "10.0.0.1")

Endpoint = Component | Outside | Ip


@dataclass(frozen=True)
class Flow:
    src: Endpoint
    dst: Endpoint
    ports: tuple[int, ...]
    allow: bool
    protocol: str = "TCP"

    def __str__(self) -> str:
        return f"{self.src.name} -> {self.dst.name} {self.protocol} {'/'.join(map(str, self.ports))}"


FLOWS: tuple[Flow, ...] = (
    # needed
    Flow(EVERY_POD, KUBE_DNS, (53,), True, "UDP"),
    Flow(EVERY_POD, KUBE_DNS, (53,), True, "TCP"),
    Flow(RAY, RAY, (6379, 8076, 10001, 29500, 45678), True),  # GCS, object manager, client, gloo, a worker port
    Flow(SUBMITTER, HEAD, (8265,), True),
    Flow(HEAD, KUBE_API, (443, 6443), True),  # the autoscaler sidecar
    Flow(OPERATOR, HEAD, (8265,), True),
    Flow(RAY, MLFLOW, (5000,), True),
    Flow(RAY, S3, (443,), True),
    Flow(MLFLOW, POSTGRES, (5432,), True),
    Flow(MLFLOW, S3, (443,), True),
    Flow(RAY, MINIO, (9000,), True),
    Flow(MLFLOW, MINIO, (9000,), True),
    Flow(BUCKET_JOB, MINIO, (9000,), True),
    # refused
    Flow(EVERY_POD, METADATA, (80, 443), False),
    Flow(RAY, POSTGRES, (5432,), False),
    Flow(SUBMITTER, MLFLOW, (5000,), False),
    Flow(SUBMITTER, S3, (443,), False),
    Flow(STRANGER, MLFLOW, (5000,), False),
    Flow(STRANGER, HEAD, (6379, 8265, 10001), False),
    Flow(STRANGER, POSTGRES, (5432,), False),
    Flow(RAY, ELSEWHERE, (22, 80), False),
    Flow(POSTGRES, ELSEWHERE, (443,), False),
)


def _expand(endpoint: Endpoint, ctx: "Context") -> Iterator[tuple[str, Pod | Address]]:
    if isinstance(endpoint, Ip):
        yield endpoint.name, Address(endpoint.ip)
    elif isinstance(endpoint, Outside):
        yield endpoint.name, Pod(endpoint.namespace, dict(endpoint.labels), known=False)
    else:
        for t in ctx.templates:
            if all(t.labels.get(k) == v for k, v in endpoint.labels):
                ports = {p["name"]: p["containerPort"] for c in t.containers() for p in c.get("ports") or []
                         if p.get("name") and p.get("containerPort")}
                yield t.where, Pod(t.namespace, dict(t.labels), ports)


def flow_problems(ctx: "Context", flows: tuple[Flow, ...]) -> list[str]:
    problems = []
    for flow in flows:
        for src_where, src in _expand(flow.src, ctx):
            for dst_where, dst in _expand(flow.dst, ctx):
                for port in flow.ports:
                    if allowed(ctx.objects, src, dst, port, flow.protocol) != flow.allow:
                        verb = "is refused but the deployment needs it" if flow.allow else "is allowed but must not be"
                        problems.append(f"NetworkPolicies: {src_where} -> {dst_where} {flow.protocol} {port} {verb} "
                                        f"({flow})")
                        break
    return problems
