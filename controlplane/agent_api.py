"""The agent protocol: register a node (and get its own credential), heartbeat.

Registration takes a bootstrap token (role ``agent`` with no node, or an
admin token) and answers with a node token bound to that node. A bootstrap
token may register a new node, or re-register one whose agent has gone silent
(not Ready); it cannot take over a live node. A node token may re-register its
own node only.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from pydantic import TypeAdapter, ValidationError

from common.specs import MAX_DEVICES, Device, Metadata, name_problem
from controlplane import auth, power, scopes, store
from controlplane.apply import pydantic_problems
from controlplane.conditions import is_true
from controlplane.controllers import nodes, powercap
from controlplane.errors import Forbidden, Invalid
from controlplane.http import endpoint, json_body
from controlplane.telemetry import store as telemetry_store

_DEVICE_LIST = TypeAdapter(list[Device])


def _devices(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or len(value) > MAX_DEVICES:
        raise Invalid(
            f"devices must be a list of at most {MAX_DEVICES} devices",
            [{"field": "devices", "fix": "send the node's devices as a list"}],
        )
    try:
        devices = _DEVICE_LIST.validate_python(value)
    except ValidationError as exc:
        raise Invalid("a device is malformed", pydantic_problems(None, "devices", Device, exc)) from None
    indices = [d.index for d in devices]
    if len(set(indices)) != len(indices):
        raise Invalid(
            "device indices repeat", [{"field": "devices", "fix": "give each device its own index"}]
        )
    return [d.model_dump(mode="json") for d in devices]


def _power_report(body: dict[str, Any]) -> dict[str, Any] | None:
    """The power limits the agent applied (docs/agent.md, "Power limits"), or None if it sent none."""
    sent = {key: body[key] for key in power.PowerReport.model_fields if body.get(key) is not None}
    if not sent:
        return None
    applied = sent.get("appliedPowerLimits")
    if not isinstance(applied, dict) or len(applied) > MAX_DEVICES:
        raise Invalid(
            f"appliedPowerLimits must be an object of at most {MAX_DEVICES} GPUs",
            [{"field": "appliedPowerLimits", "fix": 'send {"GPU_INDEX": WATTS, ...} with powerBackend'}],
        )
    try:
        return power.PowerReport.model_validate(sent).as_status()
    except ValidationError as exc:
        problems = pydantic_problems(None, "", power.PowerReport, exc)
        raise Invalid("the power report is malformed", problems) from None


def _agent_body(request: HttpRequest) -> tuple[dict[str, Any], str]:
    """The JSON object an agent sent, and the node name it names."""
    body = json_body(request)
    if not isinstance(body, dict):
        raise Invalid("send a JSON object", [{"field": "", "fix": 'send {"name": NODE, ...}'}])
    name = body.get("name")
    if problem := name_problem(name):
        raise Invalid(f"node name {problem}", [{"field": "name", "fix": "use the host name, lower-cased"}])
    return body, name


def _may_register(principal: auth.Principal, name: str) -> None:
    if principal.role == "admin":
        return
    if scopes.is_node_token(principal):
        if principal.node_name != name:
            raise scopes.deny(principal, f"register node {name}")
        return
    existing = store.find("Node", name)
    if existing is not None and is_true(existing.status, "Ready"):
        raise Forbidden(
            f"node {name} is registered and its agent is alive; a bootstrap token cannot take it over",
            [{"field": "name", "fix": "restart the agent with its node token (kept in its state directory)"}],
        )


def issue_node_token(name: str) -> str:
    """A fresh credential for the node; older ones for it stop working."""
    auth.revoke_node_tokens(name)
    token, _ = auth.create_token(f"node/{name}", "agent", node_name=name)
    return token


@endpoint({"POST": "agent"})
def register_view(request: HttpRequest) -> dict[str, Any]:
    body, name = _agent_body(request)
    _may_register(request.principal, name)
    devices = _devices(body.get("devices") or [])
    cluster = body.get("cluster") or None
    if cluster is not None and (problem := name_problem(cluster)):
        raise Invalid(f"cluster {problem}", [{"field": "cluster", "fix": "use a Cluster's name"}])
    try:
        labels = Metadata.model_validate({"name": name, "labels": body.get("labels") or {}}).labels
    except ValidationError as exc:
        raise Invalid("labels are malformed", pydantic_problems(None, "", Metadata, exc)) from None
    with transaction.atomic():
        node = nodes.register(
            name, cluster=cluster, labels=labels, devices=devices, info=body.get("info") or {}
        )
        token = issue_node_token(name)
    return {
        "node": store.to_document(node),
        "token": token,
        "heartbeatSeconds": max(1.0, settings.FLOTILLA_NODE_TIMEOUT / 8),
    }


@endpoint({"POST": "agent"})
def heartbeat_view(request: HttpRequest) -> dict[str, Any]:
    body, name = _agent_body(request)
    principal = request.principal
    if principal.role == "agent" and principal.node_name != name:
        raise Forbidden(
            f"token {principal.name!r} may not heartbeat node {name}",
            [{"field": "name", "fix": "register first and heartbeat with the node token it returns"}],
        )
    devices = _devices(body["devices"]) if body.get("devices") is not None else None
    beat = nodes.heartbeat(name, devices, _power_report(body))
    answer: dict[str, Any] = {"resourceVersion": str(beat.resource_version), "at": time.time()}
    if beat.power_limits:
        answer["powerLimits"] = beat.power_limits
    if body.get("telemetry") is not None:
        # The heartbeat counts even when its telemetry is refused: a telemetry bug on
        # a node must not make a live node look dead.
        try:
            with transaction.atomic():
                telemetry_store.record(name, body["telemetry"])
        except Invalid as exc:
            answer["telemetryRejected"] = exc.body()["error"]
        else:
            powercap.telemetry_arrived(name)
    return answer
