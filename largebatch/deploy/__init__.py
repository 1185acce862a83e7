"""Deployment: offline rendering and validation of k8s/ (KubeRay + MLflow + PostgreSQL + MinIO) and of the
`ray up` cluster YAMLs in cluster/. Nothing here talks to a cluster.

    python -m largebatch.deploy k8s k8s/overlays/dev k8s/overlays/gpu cluster/aws-gpu.yaml cluster/local.yaml
"""
from largebatch.deploy.kustomize import KustomizeError, render_kustomization
from largebatch.deploy.validate import validate_cluster_config, validate_kustomization

__all__ = ["KustomizeError", "render_kustomization", "validate_cluster_config", "validate_kustomization"]
