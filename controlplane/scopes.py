"""What a node's own token may read and write: its Node and the Workloads bound to it.

A node token is an ``agent`` token bound to one node name. It can read only
its own objects and write only their status, so a stolen node token cannot
touch other nodes or any spec.
"""

from __future__ import annotations

from controlplane.auth import Principal
from controlplane.errors import Forbidden
from controlplane.models import Resource


def is_node_token(principal: Principal) -> bool:
    return principal.role == "agent" and bool(principal.node_name)


def deny(principal: Principal, what: str) -> Forbidden:
    return Forbidden(
        f"node token for {principal.node_name} may not {what}",
        [{"field": "Authorization", "fix": "node tokens reach only their own node and its workloads"}],
    )


def check_read(principal: Principal, kind: str, resource: Resource | None = None, name: str = "") -> None:
    """Raise unless a node token reads its own Node or a Workload bound to its node."""
    if not is_node_token(principal):
        return
    if kind == "Node" and name == principal.node_name:
        return
    if kind == "Workload" and resource is not None and resource.node_name == principal.node_name:
        return
    raise deny(principal, f"read {kind.lower()}/{name or '*'}")


def owns(principal: Principal, kind: str, resource: Resource) -> bool:
    """Whether a node token may write this object's status."""
    if kind == "Node":
        return resource.name == principal.node_name
    return kind == "Workload" and resource.node_name == principal.node_name


def node_filter(principal: Principal, kind: str, requested: str | None) -> str | None:
    """The node a list or watch is limited to: a node token always sees only its own."""
    if not is_node_token(principal):
        return requested
    if kind != "Workload" or requested not in (None, principal.node_name):
        raise deny(principal, f"list {kind.lower()}s beyond its own node")
    return principal.node_name
