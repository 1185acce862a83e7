"""Render a kustomization with the real kustomize (`kubectl kustomize`), and small helpers on the result.

The manifests are rendered by the same code `kubectl apply -k` runs, so what is validated is what a cluster
would receive. kubectl needs no cluster for this: `kubectl kustomize` works offline.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KUBECTL_ENV = "LARGEBATCH_KUBECTL"
# A render of k8s/ takes well under a second; a hung binary must not hang the test suite.
RENDER_TIMEOUT_S = 60
# libyaml's loader is ~10x faster than the pure-Python one on these manifests; same results.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class KustomizeError(Exception):
    """kubectl is missing, or it refused to render the kustomization (the message is kustomize's own)."""


def find_kubectl() -> str | None:
    """$LARGEBATCH_KUBECTL, else `kubectl` on PATH; None where there is none."""
    explicit = os.environ.get(KUBECTL_ENV)
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return shutil.which("kubectl")


def find_kustomization(path: str | Path) -> Path:
    """The kustomization file at `path` (a file, or a directory holding one)."""
    path = Path(path)
    if path.is_file():
        return path
    for name in KUSTOMIZATION_FILES:
        if (path / name).is_file():
            return path / name
    raise KustomizeError(f"no kustomization.yaml in {path}")


def parse_documents(text: str, source: str) -> list[dict[str, Any]]:
    """Every non-empty YAML document; each must be a Kubernetes object (a mapping with apiVersion and kind)."""
    try:
        docs = [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]
    except yaml.YAMLError as e:
        raise KustomizeError(f"{source}: malformed YAML: {e}") from e
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise KustomizeError(f"{source}: every document must be an object with apiVersion and kind")
    return docs


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return parse_documents(Path(path).read_text(), str(path))


def render_kustomization(path: str | Path) -> list[dict[str, Any]]:
    """`kubectl kustomize <dir>` parsed into its list of objects, in kustomize's output order."""
    kdir = find_kustomization(path).parent
    kubectl = find_kubectl()
    if kubectl is None:
        raise KustomizeError(f"kubectl not found (PATH or ${KUBECTL_ENV}); it renders the kustomizations")
    try:
        done = subprocess.run([kubectl, "kustomize", str(kdir)], capture_output=True, text=True,
                              timeout=RENDER_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as e:
        raise KustomizeError(f"kubectl kustomize {kdir} did not finish in {RENDER_TIMEOUT_S} s") from e
    if done.returncode != 0:
        message = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        raise KustomizeError(f"kubectl kustomize {kdir} failed: {message}")
    return parse_documents(done.stdout, f"kubectl kustomize {kdir}")


def split_image(ref: str) -> tuple[str, str, str]:
    """'reg:5000/repo:tag@sha256:..' -> ('reg:5000/repo', 'tag', 'sha256:..'); missing parts are ''."""
    ref, _, digest = ref.partition("@")
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1:], digest
    return ref, "", digest
