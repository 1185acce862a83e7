"""A small, pure-Python kustomize renderer: exactly the features k8s/ uses, nothing more.

No cluster and no `kustomize` binary exist where the manifests are tested, so this renders
`k8s/` and its overlays the way `kubectl apply -k` would, for the subset of kustomize we use:

- `resources`: YAML files (multi-document) and directories holding a kustomization.yaml;
- `namespace`: set on every namespaced object;
- `labels`: `pairs` added to every object's metadata.labels (`includeSelectors: false` only);
- `patches`: strategic merge (a partial object, matched by kind + name, or by `target`) and
  JSON 6902 (a list of `add`/`replace`/`remove`/`test` ops, with a `target`);
- `images`: `name` -> `newName` / `newTag` / `digest` on every `containers[]` / `initContainers[]`
  image anywhere in an object (what `kustomize edit set image` writes).

Strategic merge follows kyaml's rules for kinds it has no schema for (our CRDs): maps merge key by
key, `null` deletes a key, and a list merges element-wise by `name` only when every element has a
`name`; any other list (e.g. KubeRay `workerGroupSpecs`, keyed by `groupName`) is replaced whole.
That is why overlays edit worker groups with JSON 6902 ops rather than strategic merge.

Any other kustomization key raises `KustomizeError`: silently ignoring a feature would let a
rendering here differ from the real one.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from largebatch.errors import BadInput

SUPPORTED_KEYS = frozenset({"apiVersion", "kind", "resources", "namespace", "labels", "patches", "images"})
# Kinds that live outside any namespace; the namespace transformer leaves them alone.
CLUSTER_SCOPED_KINDS = frozenset({
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PersistentVolume", "StorageClass", "PriorityClass", "IngressClass",
})
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# libyaml's loader parses our manifests ~10x faster than the pure-Python one; same results.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class KustomizeError(BadInput):
    """The kustomization uses a feature this renderer does not implement, or is malformed."""


def find_kustomization(path: str | Path) -> Path:
    """The kustomization file at `path` (a file, or a directory holding one)."""
    path = Path(path)
    if path.is_file():
        return path
    for name in KUSTOMIZATION_FILES:
        if (path / name).is_file():
            return path / name
    raise KustomizeError(f"no kustomization.yaml in {path}")


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty document of a YAML file; each must be a Kubernetes object (a mapping with a kind)."""
    try:
        docs = [d for d in yaml.load_all(path.read_text(), Loader=_Loader) if d is not None]
    except yaml.YAMLError as e:
        raise KustomizeError(f"malformed YAML: {e}", source=str(path)) from e
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise KustomizeError("every document must be an object with apiVersion and kind", source=str(path))
    return docs


def render_kustomization(path: str | Path) -> list[dict[str, Any]]:
    """Render a kustomization (file or directory) to its list of objects, in resource order."""
    kfile = find_kustomization(path)
    root = kfile.parent
    spec = yaml.load(kfile.read_text(), Loader=_Loader) or {}
    if not isinstance(spec, dict):
        raise KustomizeError("a kustomization must be a mapping", source=str(kfile))
    unsupported = sorted(set(spec) - SUPPORTED_KEYS)
    if unsupported:
        raise KustomizeError(
            f"unsupported kustomization key(s) {', '.join(unsupported)}; this renderer supports "
            f"{', '.join(sorted(SUPPORTED_KEYS))} (extend largebatch/deploy/kustomize.py first)",
            source=str(kfile),
        )

    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources") or []:
        objects.extend(_load_resource(root, entry, kfile))
    _check_unique(objects, kfile)

    for patch in spec.get("patches") or []:
        _apply_patch(objects, patch, root, kfile)
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED_KINDS:
                obj.setdefault("metadata", {})["namespace"] = spec["namespace"]
    for label_set in spec.get("labels") or []:
        _apply_labels(objects, label_set, kfile)
    for image in spec.get("images") or []:
        _apply_image(objects, image, kfile)
    return objects


def _load_resource(root: Path, entry: Any, kfile: Path) -> list[dict[str, Any]]:
    if not isinstance(entry, str) or "://" in entry or entry.startswith(("github.com", "git@")):
        raise KustomizeError(f"resource {entry!r}: only local files and directories are supported", source=str(kfile))
    target = (root / entry).resolve()
    if target.is_dir():
        return render_kustomization(target)
    if target.is_file():
        return load_yaml_documents(target)
    raise KustomizeError(f"resource {entry!r} does not exist ({target})", source=str(kfile))


def object_id(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return obj["kind"], meta.get("namespace", ""), meta.get("name", "")


def _check_unique(objects: list[dict[str, Any]], kfile: Path) -> None:
    seen: set[tuple[str, str, str]] = set()
    for obj in objects:
        oid = object_id(obj)
        if oid in seen:
            raise KustomizeError(f"duplicate object {oid[0]}/{oid[2]}", source=str(kfile))
        seen.add(oid)


# ---- patches ---------------------------------------------------------------------------------

def _apply_patch(objects: list[dict[str, Any]], patch: Any, root: Path, kfile: Path) -> None:
    if not isinstance(patch, dict) or set(patch) - {"path", "patch", "target"} \
            or ("path" in patch) == ("patch" in patch):
        raise KustomizeError(
            f"each patch needs exactly one of path/patch (and an optional target), got {patch!r}", source=str(kfile))
    text = (root / patch["path"]).read_text() if "path" in patch else patch["patch"]
    body = yaml.load(text, Loader=_Loader)
    target = patch.get("target")
    where = f"patch {patch.get('path', '(inline)')}"
    if isinstance(body, list):  # JSON 6902
        if not target:
            raise KustomizeError(f"{where}: a JSON 6902 patch needs a target", source=str(kfile))
        matched = _select(objects, target)
        if not matched:
            raise KustomizeError(f"{where}: target {target} matches no object", source=str(kfile))
        for obj in matched:
            for op in body:
                _json6902(obj, op, f"{kfile}: {where}")
        return
    if not isinstance(body, dict):
        raise KustomizeError(f"{where}: a patch must be an object or a list of JSON 6902 ops", source=str(kfile))
    if target:
        matched = _select(objects, target)
    else:
        name = (body.get("metadata") or {}).get("name")
        matched = [o for o in objects if o["kind"] == body.get("kind") and o["metadata"].get("name") == name]
    if not matched:
        raise KustomizeError(f"{where}: no {body.get('kind')}/{(body.get('metadata') or {}).get('name')} to patch",
                             source=str(kfile))
    for i, obj in enumerate(matched):
        merged = strategic_merge(obj, body)
        objects[objects.index(obj)] = merged
        matched[i] = merged


def _select(objects: list[dict[str, Any]], target: dict[str, Any]) -> list[dict[str, Any]]:
    unknown = set(target) - {"group", "version", "kind", "name", "namespace"}
    if unknown:
        raise KustomizeError(f"patch target selector(s) {sorted(unknown)} are not supported")

    def hit(obj: dict[str, Any]) -> bool:
        group, _, version = obj["apiVersion"].rpartition("/")
        meta = obj.get("metadata") or {}
        return all([
            target.get("group", group) == group,
            target.get("version", version) == version,
            target.get("kind", obj["kind"]) == obj["kind"],
            target.get("name", meta.get("name")) == meta.get("name"),
            target.get("namespace", meta.get("namespace")) == meta.get("namespace"),
        ])

    return [o for o in objects if hit(o)]


def strategic_merge(base: Any, patch: Any) -> Any:
    """kyaml-style strategic merge of `patch` onto a copy of `base` (see the module docstring)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        if any(isinstance(k, str) and k.startswith("$") for k in patch):
            raise KustomizeError(f"strategic-merge directives ({[k for k in patch if k.startswith('$')]}) "
                                 "are not supported")
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and _merge_by_name(base, patch):
        out = copy.deepcopy(base)
        index = {item["name"]: i for i, item in enumerate(out)}
        for item in patch:
            if item["name"] in index:
                out[index[item["name"]]] = strategic_merge(out[index[item["name"]]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def _merge_by_name(base: list[Any], patch: list[Any]) -> bool:
    items = base + patch
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def _json6902(obj: dict[str, Any], op: Any, where: str) -> None:
    if not isinstance(op, dict) or op.get("op") not in {"add", "replace", "remove", "test"} or "path" not in op:
        raise KustomizeError(f"unsupported JSON 6902 op {op!r} (supported: add, replace, remove, test)", source=where)
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in op["path"].split("/")[1:]]
    if not tokens:
        raise KustomizeError(f"op {op!r}: patching the whole object is not supported", source=where)
    parent: Any = obj
    try:
        for token in tokens[:-1]:
            parent = parent[int(token)] if isinstance(parent, list) else parent[token]
        last = tokens[-1]
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if op["op"] == "add":
                parent.insert(index, copy.deepcopy(op["value"]))
            elif op["op"] == "replace":
                parent[index] = copy.deepcopy(op["value"])
            elif op["op"] == "remove":
                del parent[index]
            elif parent[index] != op["value"]:
                raise KustomizeError(f"test failed at {op['path']}: {parent[index]!r} != {op['value']!r}", source=where)
        else:
            if op["op"] in {"replace", "remove", "test"} and last not in parent:
                raise KeyError(last)
            if op["op"] in {"add", "replace"}:
                parent[last] = copy.deepcopy(op["value"])
            elif op["op"] == "remove":
                del parent[last]
            elif parent[last] != op["value"]:
                raise KustomizeError(f"test failed at {op['path']}: {parent[last]!r} != {op['value']!r}", source=where)
    except (KeyError, IndexError, ValueError, TypeError) as e:
        name = f"{obj['kind']}/{obj['metadata'].get('name')}"
        raise KustomizeError(f"op {op['op']} {op['path']}: path does not exist in {name} ({e!r})", source=where) from e


# ---- labels and images -------------------------------------------------------------------------

def _apply_labels(objects: list[dict[str, Any]], label_set: Any, kfile: Path) -> None:
    if not isinstance(label_set, dict) or set(label_set) - {"pairs", "includeSelectors"}:
        raise KustomizeError(f"labels entry {label_set!r}: only `pairs` (+ includeSelectors: false) is supported",
                             source=str(kfile))
    if label_set.get("includeSelectors"):
        raise KustomizeError("labels.includeSelectors: true is not supported (it rewrites selectors)",
                             source=str(kfile))
    for obj in objects:
        obj.setdefault("metadata", {}).setdefault("labels", {}).update(label_set.get("pairs") or {})


def _apply_image(objects: list[dict[str, Any]], image: Any, kfile: Path) -> None:
    if not isinstance(image, dict) or "name" not in image or set(image) - {"name", "newName", "newTag", "digest"}:
        raise KustomizeError(f"images entry {image!r}: supported keys are name, newName, newTag, digest",
                             source=str(kfile))
    for obj in objects:
        for container in iter_containers(obj):
            if "image" not in container:
                continue
            name, tag, digest = split_image(container["image"])
            if name != image["name"]:
                continue
            name = image.get("newName", name)
            if "digest" in image:
                container["image"] = f"{name}@{image['digest']}"
            else:
                new_tag = image.get("newTag", tag)
                container["image"] = name + (f":{new_tag}" if new_tag else "") + (f"@{digest}" if digest else "")


def iter_containers(node: Any):
    """Every container mapping under any `containers`/`initContainers` list, at any depth (like kustomize)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from iter_containers(value)
    elif isinstance(node, list):
        for value in node:
            yield from iter_containers(value)


def split_image(ref: str) -> tuple[str, str, str]:
    """'reg:5000/repo:tag@sha256:..' -> ('reg:5000/repo', 'tag', 'sha256:..'); missing parts are ''."""
    ref, _, digest = ref.partition("@")
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1:], digest
    return ref, "", digest
