"""Versions pinned in pyproject.toml: the one source of truth for the Ray (and torch) version.

The Dockerfile, the cluster-launcher YAMLs and the Kubernetes manifests each restate the Ray
version (base image tags, `rayVersion`); the validators compare every restatement with these pins.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

_PIN = re.compile(r"^\s*(?P<name>[A-Za-z0-9_.-]+)\s*(\[[^\]]*\])?\s*==\s*(?P<version>[^\s;,]+)")


@dataclass(frozen=True, slots=True)
class Pins:
    package_version: str  # [project].version, e.g. "0.1.0"; leads our image tags
    ray: str              # ray[...]==X
    torch: str            # torch==X


def find_repo_root(start: str | Path) -> Path:
    """The nearest ancestor of `start` (inclusive) that holds a pyproject.toml."""
    start = Path(start).resolve()
    for candidate in [start, *start.parents]:
        if (candidate / "pyproject.toml").is_file():
            return candidate
    raise FileNotFoundError(f"no pyproject.toml above {start}")


def read_pins(repo_root: str | Path) -> Pins:
    path = Path(repo_root) / "pyproject.toml"
    project = tomllib.loads(path.read_text())["project"]
    pins: dict[str, str] = {}
    for requirement in project.get("dependencies", []):
        match = _PIN.match(requirement)
        if match:
            pins[match["name"].lower()] = match["version"]
    missing = [name for name in ("ray", "torch") if name not in pins]
    if missing:
        raise ValueError(f"{path}: [project].dependencies must pin {', '.join(missing)} with '=='")
    return Pins(package_version=project["version"], ray=pins["ray"], torch=pins["torch"])


# Ray's own images are tagged <ray version>-py311[-gpu]; ours <package version>-ray<ray version>-py311[-gpu].
_RAY_IMAGE_TAG = re.compile(r"^(?P<ray>\d+\.\d+\.\d+)(-py\d+)?(-\w+)*$")
_OUR_IMAGE_TAG = re.compile(r"^(?P<package>[^-]+)-ray(?P<ray>\d+\.\d+\.\d+)(-py\d+)?(-\w+)*$")


def image_version_problems(image: str, pins: Pins, where: str) -> list[str]:
    """Problems with the Ray (and package) version encoded in `image`, for rayproject/ray and largebatch images."""
    from tools.deploy.render import split_image

    name, tag, _ = split_image(image)
    repo = name.rsplit("/", 1)[-1]
    if name in ("rayproject/ray", "docker.io/rayproject/ray", "rayproject/ray-ml"):
        match = _RAY_IMAGE_TAG.match(tag)
        if not match or match["ray"] != pins.ray:
            return [f"{where}: image {image} does not carry Ray {pins.ray} (pyproject.toml pins ray=={pins.ray})"]
    elif repo == "largebatch":
        match = _OUR_IMAGE_TAG.match(tag)
        if not match or match["ray"] != pins.ray:
            return [f"{where}: image {image} should be tagged {pins.package_version}-ray{pins.ray}-py311[-gpu] "
                    f"(pyproject.toml pins ray=={pins.ray})"]
        if match["package"] != pins.package_version:
            return [f"{where}: image {image} is for package version {match['package']}, "
                    f"pyproject.toml says {pins.package_version}"]
    return []
