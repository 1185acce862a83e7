"""NetworkPolicy semantics, evaluated offline: may pod A reach pod B (or an address) on a port?

A flow is allowed when the source's egress side and the destination's ingress side both allow it. A pod
that no policy of a direction selects is not isolated in that direction (Kubernetes' rule). Only the
policies in the rendered manifests are known, so a destination outside them (kube-dns, the operator, an
outside address) is judged on the source's egress side alone, and a source outside them on the
destination's ingress side alone.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

METADATA_ADDRESS = "169.254.169.254"  # the cloud instance metadata service (AWS, GCP, Azure, ...)
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by the API server on every namespace


@dataclass(frozen=True)
class Pod:
    """A pod (template) as NetworkPolicies see it."""
    namespace: str
    labels: dict[str, str]
    named_ports: dict[str, int] = field(default_factory=dict)
    known: bool = True  # False: not rendered here, so its own policies are unknown (treated as open)


@dataclass(frozen=True)
class Address:
    ip: str


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics; an empty selector matches everything."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


def _ns(obj: dict[str, Any]) -> str:
    return (obj.get("metadata") or {}).get("namespace", "")


def policies(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == "NetworkPolicy"]


def _selecting(pols: list[dict[str, Any]], pod: Pod, direction: str) -> list[dict[str, Any]]:
    """The policies that isolate `pod` in `direction` ("Ingress" or "Egress")."""
    out = []
    for pol in pols:
        spec = pol.get("spec") or {}
        types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])
        if direction in types and _ns(pol) == pod.namespace and selector_matches(spec.get("podSelector"), pod.labels):
            out.append(pol)
    return out


def _peer_matches(peer: dict[str, Any], policy_ns: str, other: Pod | Address) -> bool:
    if "ipBlock" in peer:
        if not isinstance(other, Address):
            return False  # ipBlock is meant for traffic from/to outside the cluster's pods
        block = peer["ipBlock"] or {}
        ip = ipaddress.ip_address(other.ip)
        cidr = ipaddress.ip_network(block.get("cidr", "0.0.0.0/32"), strict=False)
        if ip.version != cidr.version or ip not in cidr:
            return False
        return not any(ip in ipaddress.ip_network(e, strict=False) for e in block.get("except") or []
                       if ipaddress.ip_network(e, strict=False).version == ip.version)
    if isinstance(other, Address):
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], {NAMESPACE_NAME_LABEL: other.namespace}):
            return False
    elif other.namespace != policy_ns:
        return False
    return selector_matches(peer.get("podSelector"), other.labels) if "podSelector" in peer else True


def _port_matches(ports: list[dict[str, Any]] | None, port: int, protocol: str, dst: Pod | Address) -> bool:
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        want = entry.get("port")
        if want is None:
            return True
        if isinstance(want, str):
            want = dst.named_ports.get(want) if isinstance(dst, Pod) else None
            if want is None:
                continue
        if want <= port <= entry.get("endPort", want):
            return True
    return False


def _side_allows(pols: list[dict[str, Any]], pod: Pod, other: Pod | Address, port: int, protocol: str,
                 direction: str, dst: Pod | Address) -> bool:
    selecting = _selecting(pols, pod, direction)
    if not selecting:
        return True
    rules_key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    for pol in selecting:
        for rule in (pol.get("spec") or {}).get(rules_key) or []:
            peers = rule.get(peers_key)
            if (not peers or any(_peer_matches(p, _ns(pol), other) for p in peers)) \
                    and _port_matches(rule.get("ports"), port, protocol, dst):
                return True
    return False


def allowed(objects: list[dict[str, Any]], src: Pod | Address, dst: Pod | Address, port: int,
            protocol: str = "TCP") -> bool:
    """May `src` open a connection to `dst`:`port` under the NetworkPolicies in `objects`?"""
    pols = policies(objects)
    if isinstance(src, Pod) and src.known and not _side_allows(pols, src, dst, port, protocol, "Egress", dst):
        return False
    if isinstance(dst, Pod) and dst.known and not _side_allows(pols, dst, src, port, protocol, "Ingress", dst):
        return False
    return True


def metadata_leaks(obj: dict[str, Any]) -> list[str]:
    """Egress rules of one policy that would let a pod reach the metadata address: an ipBlock that contains
    it without excepting it, or a rule with no `to` (every destination)."""
    if obj.get("kind") != "NetworkPolicy":
        return []
    problems = []
    meta = ipaddress.ip_address(METADATA_ADDRESS)
    for i, rule in enumerate((obj.get("spec") or {}).get("egress") or []):
        if not rule.get("to"):
            problems.append(f"egress[{i}] has no `to`, so it allows every address including {METADATA_ADDRESS}")
            continue
        for j, peer in enumerate(rule["to"]):
            if "ipBlock" in peer and _peer_matches(peer, _ns(obj), Address(METADATA_ADDRESS)):
                problems.append(f"egress[{i}].to[{j}].ipBlock {peer['ipBlock'].get('cidr')} contains "
                                f"{meta} (cloud metadata); add it to `except`")
    return problems
