"""The OpenAPI 3.1 document for /api/v1/, built from the pydantic spec models.

Specs come from the models (``spec.serving.apiKeys``, Workload role ``router`` and the
rest with them); statuses, which no model describes, are written here for the kinds whose
status clients read: a Deployment's (``url``, ``endpoints``, ``replicas``...), a
TrainingJob's (its checkpoints: openapi_training.py) and a Workload's (a router's
``backends``, a trainer's checkpoints). Other kinds' statuses are plain objects.

It also describes the three token-free routes outside /api/v1/ (``/healthz``,
``/readyz``, ``/metrics``): probes and scrapers are API clients too. Written by hand
for now; ``tests/test_openapi_routes.py`` checks it against the URL resolver.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from common.specs import API_VERSION, KINDS, MAX_DEVICES, MAX_POWER_ERROR_CHARS, MAX_POWER_LIMIT_WATTS
from controlplane import openapi_training as training_status

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


ERRORS = {
    "401": _ok(_ref("Error"), "No or bad token"),
    "403": _ok(_ref("Error"), "The token's role may not do this"),
    "404": _ok(_ref("Error"), "Not found"),
}
# Operations anyone may call: probes, scrapers, and this document itself.
PUBLIC: list[dict[str, list[str]]] = []


def _query(name: str, schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    parameter = {"name": name, "in": "query", "schema": schema}
    return {**parameter, "description": description} if description else parameter


LIMIT = _query("limit", {"type": "integer", "default": 100}, "clamped to 1-1000")


def _components() -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "details": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "document": {"type": "integer"},
                                    "field": {"type": "string"},
                                    "message": {"type": "string"},
                                    "fix": {"type": "string"},
                                },
                            },
                        },
                    },
                    "required": ["code", "message"],
                }
            },
        },
        "Metadata": {
            "type": "object",
            "properties": {
                "name": {
                    "type": "string",
                    "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                    "maxLength": 63,
                },
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                "uid": {"type": "string", "readOnly": True},
                "generation": {"type": "integer", "readOnly": True},
                "resourceVersion": {"type": "string"},
                "creationTimestamp": {"type": "string", "format": "date-time", "readOnly": True},
                "deletionTimestamp": {"type": "string", "format": "date-time", "readOnly": True},
                "finalizers": {"type": "array", "items": {"type": "string"}, "readOnly": True},
                "ownerReferences": {"type": "array", "items": {"type": "object"}, "readOnly": True},
            },
            "required": ["name"],
        },
        "ApplyResult": {
            "type": "object",
            "properties": {
                "dryRun": {"type": "boolean"},
                "results": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "kind": {"type": "string"},
                            "name": {"type": "string"},
                            "action": {"enum": ["created", "configured", "unchanged"]},
                            "generation": {"type": "integer"},
                            "diff": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                },
            },
        },
        "WatchResult": {
            "type": "object",
            "properties": {
                "resourceVersion": {"type": "string"},
                "events": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "type": {"enum": ["ADDED", "MODIFIED", "DELETED"]},
                            "object": {"type": "object"},
                        },
                    },
                },
            },
        },
        "EventList": {
            "type": "object",
            "properties": {"items": {"type": "array", "items": {"type": "object"}}},
        },
        **_heartbeat_schemas(),
        **_status_schemas(),
    }
    for kind, info in KINDS.items():
        spec_schema = info.spec_model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in spec_schema.pop("$defs", {}).items():
            schemas[name] = definition
        schemas[f"{kind}Spec"] = spec_schema
        schemas[kind] = {
            "type": "object",
            "properties": {
                "apiVersion": {"const": API_VERSION},
                "kind": {"const": kind},
                "metadata": _ref("Metadata"),
                "spec": _ref(f"{kind}Spec"),
                "status": (
                    {**_ref(f"{kind}Status"), "readOnly": True}
                    if f"{kind}Status" in schemas
                    else {"type": "object", "readOnly": True}
                ),
            },
            "required": ["apiVersion", "kind", "metadata"],
        }
    return {
        "schemas": schemas,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    }


def _status_schemas() -> dict[str, Any]:
    """What controllers and agents write in the statuses clients read (docs/api.md)."""
    conditions = {"type": "array", "items": _ref("Condition")}
    return {
        "Condition": {
            "type": "object",
            "properties": {
                "type": {"type": "string"},
                "status": {"enum": ["True", "False", "Unknown"]},
                "reason": {"type": "string"},
                "message": {"type": "string"},
                "lastTransitionTime": {"type": "string", "format": "date-time"},
            },
            "required": ["type", "status"],
        },
        "DeploymentStatus": {
            "type": "object",
            "properties": {
                "observedGeneration": {"type": "integer"},
                "conditions": conditions,
                "url": {
                    "type": "string",
                    "description": "where clients send requests: the router's endpoint once it is "
                    "Ready; without a router (one replica, no cache policy) the replica's. Absent "
                    "while nothing serves",
                },
                "endpoints": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "each Ready replica's own endpoint (the router not among them)",
                },
                "replicas": {
                    "type": "object",
                    "properties": {k: {"type": "integer"} for k in ("desired", "scheduled", "ready")},
                    "description": "replicas only: the router is not counted",
                },
                "placements": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "workload": {"type": "string"},
                            "node": {"type": "string"},
                            "gpus": {"type": "array", "items": {"type": "integer"}},
                            "role": {"enum": ["serve", "prefill", "decode", "router"]},
                        },
                    },
                    "description": "every Workload and where it runs, the router with role router",
                },
                "plan": {"type": "object", "description": "a sizing scheduler's plan"},
                "observedWorkload": {"type": "object", "description": "traffic measured live"},
            },
        },
        "CheckpointRecord": training_status.checkpoint_record(),
        "TrainingJobStatus": training_status.training_job_status(conditions),
        "WorkloadStatus": {
            "type": "object",
            "properties": {
                "phase": {
                    "type": "string",
                    "description": "Pending, Starting, Running, BackOff, Failed, Stopped or Succeeded",
                },
                "observedGeneration": {"type": "integer"},
                "conditions": conditions,
                "endpoint": {"type": "string", "description": "where a serve or router Workload listens"},
                "restarts": {"type": "integer"},
                "lastExitCode": {"type": "integer"},
                "progress": {"type": "object", "description": "a training Workload's step and loss"},
                **training_status.checkpoint_fields("its runtime reported, kept across restarts"),
                "backends": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}, "url": {"type": "string"}},
                        "required": ["name", "url"],
                    },
                    "description": "role router only: the Ready serve replicas it sends requests to. "
                    "Written by the owner controller; an agent's status PUT keeps it",
                },
            },
        },
    }


def _heartbeat_schemas() -> dict[str, Any]:
    """The agent's heartbeat and its answer (docs/api.md, "Agent protocol")."""
    gpu_index = {"pattern": "^(0|[1-9][0-9]{0,3})$", "description": "a GPU index, 0-1023"}
    watts = {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_POWER_LIMIT_WATTS}
    return {
        "Heartbeat": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "the node; a node token may name only its own"},
                "devices": {
                    "type": "array",
                    "maxItems": MAX_DEVICES,
                    "items": {"type": "object"},
                    "description": "replaces the Node's status.devices when sent",
                },
                "telemetry": {"type": "object", "description": "device and Workload samples"},
                "appliedPowerLimits": {
                    "type": "object",
                    "propertyNames": gpu_index,
                    "additionalProperties": watts,
                    "maxProperties": MAX_DEVICES,
                    "description": "watts each GPU's board has now; sent with powerBackend, once "
                    "after the agent applied a powerLimits answer",
                },
                "powerBackend": {"enum": ["off", "simulate", "nvml"]},
                "powerError": {"type": ["string", "null"], "maxLength": MAX_POWER_ERROR_CHARS},
            },
            "required": ["name"],
        },
        "HeartbeatAnswer": {
            "type": "object",
            "properties": {
                "resourceVersion": {"type": "string"},
                "at": {"type": "number", "description": "the server's clock, seconds since the epoch"},
                "powerLimits": {
                    "type": "object",
                    "propertyNames": gpu_index,
                    "additionalProperties": {"oneOf": [watts, {"type": "null"}]},
                    "description": "what controllers want each GPU capped at; null lifts the cap "
                    "to the board's default. Absent when nothing was asked",
                },
                "telemetryRejected": {
                    "type": "object",
                    "description": "the error, when the telemetry was malformed and dropped; "
                    "the heartbeat still counted",
                },
            },
            "required": ["resourceVersion", "at"],
        },
    }


def _kind_paths(kind: str, plural: str) -> dict[str, Any]:
    name_param = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    query = [
        {
            "name": "labelSelector",
            "in": "query",
            "schema": {"type": "string"},
            "description": "k=v,k2=v2",
        },
        {
            "name": "fieldSelector",
            "in": "query",
            "schema": {"type": "string"},
            "description": "spec.nodeName=NODE",
        },
        {"name": "watch", "in": "query", "schema": {"type": "boolean"}},
        {"name": "resourceVersion", "in": "query", "schema": {"type": "integer"}},
        {"name": "timeoutSeconds", "in": "query", "schema": {"type": "integer"}},
    ]
    list_schema = {
        "oneOf": [
            {"type": "object", "properties": {"items": {"type": "array", "items": _ref(kind)}}},
            _ref("WatchResult"),
        ]
    }
    return {
        f"/api/v1/{plural}": {
            "get": {
                "summary": f"List {plural}, or watch them with watch=true",
                "parameters": query,
                "responses": {
                    "200": _ok(list_schema),
                    "410": _ok(_ref("Error"), "resourceVersion too old"),
                    **ERRORS,
                },
            }
        },
        f"/api/v1/{plural}/{{name}}": {
            "parameters": [name_param],
            "get": {"summary": f"Get one {kind}", "responses": {"200": _ok(_ref(kind)), **ERRORS}},
            "put": {
                "summary": f"Replace a {kind}'s spec; needs metadata.resourceVersion",
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref(kind)}}},
                "responses": {
                    "200": _ok(_ref(kind)),
                    "409": _ok(_ref("Error"), "Stale resourceVersion"),
                    "422": _ok(_ref("Error"), "Invalid"),
                    **ERRORS,
                },
            },
            "delete": {
                "summary": f"Delete a {kind} (202 while finalizers remain)",
                "responses": {
                    "200": _ok({"type": "object"}),
                    "202": _ok({"type": "object"}, "Deleting"),
                    **ERRORS,
                },
            },
        },
        f"/api/v1/{plural}/{{name}}/status": {
            "parameters": [name_param],
            "put": {
                "summary": f"Write a {kind}'s status (controllers and agents only)",
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": {"type": "object"}}},
                },
                "responses": {"200": _ok(_ref(kind)), **ERRORS},
            },
        },
        f"/api/v1/{plural}/{{name}}/events": {
            "parameters": [name_param],
            "get": {
                "summary": f"Events about one {kind}, newest first",
                "parameters": [LIMIT],
                "responses": {"200": _ok(_ref("EventList")), **ERRORS},
            },
        },
    }


def _public_paths() -> dict[str, Any]:
    """The routes that need no token: this document, the probes and the metrics."""
    probe = {
        "type": "object",
        "properties": {
            "status": {"enum": ["ok", "unavailable"]},
            "failed": {"type": "array", "items": {"type": "string"}},
            "checks": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    return {
        "/api/v1/openapi.json": {
            "get": {
                "summary": "This document",
                "security": PUBLIC,
                "responses": {"200": _ok({"type": "object"})},
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness: the process answers; it checks nothing else",
                "security": PUBLIC,
                "responses": {"200": _ok(probe)},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: the database and the Celery broker answer",
                "security": PUBLIC,
                "responses": {
                    "200": _ok(probe),
                    "503": _ok(probe, "A check failed; `failed` names it"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Aggregate counts in Prometheus text format (no names)",
                "security": PUBLIC,
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "404": _ok(_ref("Error"), "Metrics are off (FLOTILLA_METRICS=false)"),
                },
            }
        },
    }


@cache
def document() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/api/v1/apply": {
            "post": {
                "summary": "Apply one or many documents (YAML or JSON); all or nothing",
                "parameters": [{"name": "dryRun", "in": "query", "schema": {"type": "boolean"}}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/yaml": {"schema": {"type": "string"}},
                        JSON: {"schema": {"type": "object"}},
                    },
                },
                "responses": {
                    "200": _ok(_ref("ApplyResult")),
                    "409": _ok(_ref("Error"), "Object is being deleted"),
                    "413": _ok(_ref("Error"), "Body or document count over the limit"),
                    "422": _ok(_ref("Error"), "Invalid documents; nothing was written"),
                    **ERRORS,
                },
            }
        },
        "/api/v1/events": {
            "get": {
                "summary": "Recent events, newest first",
                "parameters": [
                    _query("kind", {"type": "string"}, "Deployment, deployment or deployments"),
                    _query("name", {"type": "string"}),
                    _query("type", {"enum": ["Normal", "Warning"]}),
                    LIMIT,
                ],
                "responses": {"200": _ok(_ref("EventList")), **ERRORS},
            }
        },
        "/api/v1/audit": {
            "get": {
                "summary": "The audit log (admin), newest first",
                "parameters": [
                    _query("actor", {"type": "string"}, "the token's name"),
                    _query("kind", {"type": "string"}),
                    _query("name", {"type": "string"}),
                    LIMIT,
                ],
                "responses": {"200": _ok(_ref("EventList")), **ERRORS},
            }
        },
        "/api/v1/plugins": {
            "get": {
                "summary": "Installed plugins by kind with parameter schemas",
                "responses": {"200": _ok({"type": "object"}), **ERRORS},
            }
        },
        "/api/v1/tokens": {
            "get": {
                "summary": "List tokens (admin)",
                "responses": {"200": _ok({"type": "object"}), **ERRORS},
            },
            "post": {
                "summary": "Create a token (admin); the plaintext is returned once",
                "responses": {"201": _ok({"type": "object"}), **ERRORS},
            },
        },
        "/api/v1/tokens/{prefix}": {
            "delete": {
                "summary": "Revoke a token (admin)",
                "parameters": [
                    {"name": "prefix", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": _ok({"type": "object"}), **ERRORS},
            }
        },
        "/api/v1/users": {
            "get": {
                "summary": "Dashboard users and their roles (admin)",
                "responses": {"200": _ok({"type": "object"}), **ERRORS},
            },
            "post": {
                "summary": "Create a dashboard user, or reset one with reset=true (admin); "
                "the password is returned once",
                "responses": {"201": _ok({"type": "object"}), "200": _ok({"type": "object"}), **ERRORS},
            },
        },
        "/api/v1/workloads/{name}/logs": {
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {
                "summary": "A Workload's output: chunks after `since`; `follow=true` long-polls",
                "parameters": [
                    {"name": "since", "in": "query", "schema": {"type": "integer"}},
                    {"name": "follow", "in": "query", "schema": {"type": "boolean"}},
                    {"name": "timeoutSeconds", "in": "query", "schema": {"type": "integer"}},
                ],
                "responses": {"200": _ok({"type": "object"}), **ERRORS},
            },
            "post": {
                "summary": "Agent protocol: append output of a Workload on the caller's node",
                "responses": {"200": _ok({"type": "object"}), **ERRORS},
            },
        },
        "/api/v1/nodes/{name}/telemetry": {
            "get": {
                "summary": "A node's telemetry: raw samples or minute averages over a time range",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "since", "in": "query", "schema": {"type": "string"}},
                    {"name": "until", "in": "query", "schema": {"type": "string"}},
                    {"name": "resolution", "in": "query", "schema": {"enum": ["raw", "minute", "auto"]}},
                    {"name": "device", "in": "query", "schema": {"type": "integer"}},
                    _query(
                        "limit", {"type": "integer", "default": 2000}, "clamped to 1-20000; the newest points"
                    ),
                ],
                "responses": {"200": _ok({"type": "object"}), "422": _ok(_ref("Error"), "Invalid"), **ERRORS},
            }
        },
        "/api/v1/telemetry/latest": {
            "get": {
                "summary": "The latest sample of each node, and their total power draw",
                "parameters": [{"name": "nodes", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": _ok({"type": "object"}), **ERRORS},
            }
        },
        "/api/v1/agent/register": {
            "post": {
                "summary": "Agent protocol: register a node and its devices",
                "responses": {"200": _ok({"type": "object"}), **ERRORS},
            }
        },
        "/api/v1/agent/heartbeat": {
            "post": {
                "summary": "Agent protocol: heartbeat, with telemetry and the power limits applied",
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("Heartbeat")}}},
                "responses": {
                    "200": _ok(_ref("HeartbeatAnswer")),
                    "422": _ok(_ref("Error"), "Invalid devices or power report; the beat did not count"),
                    **ERRORS,
                },
            }
        },
    }
    for kind, info in KINDS.items():
        paths.update(_kind_paths(kind, info.plural))
    paths.update(_public_paths())
    return {
        "openapi": "3.1.0",
        "info": {"title": "Flotilla API", "version": "v1"},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": _components(),
    }
