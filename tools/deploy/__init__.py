"""Deployment checks (a developer tool, not part of the wheel): render k8s/ (KubeRay + MLflow + PostgreSQL +
MinIO) with `kubectl kustomize` and validate it offline, and validate the `ray up` cluster YAMLs in cluster/.
Nothing here talks to a cluster.

    python -m tools.deploy k8s/base k8s/overlays/dev k8s/overlays/gpu cluster/aws-gpu.yaml cluster/local.yaml
"""
from tools.deploy.render import KustomizeError, render_kustomization
from tools.deploy.validate import validate_cluster_config, validate_kustomization

__all__ = ["KustomizeError", "render_kustomization", "validate_cluster_config", "validate_kustomization"]
