"""Tables with relative ages, and YAML/JSON output, in kubectl's habits."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import yaml

from cli import checkpoints, cluster_power
from common.timeutil import age, parse_rfc3339


def condition(document: dict[str, Any], type_: str) -> str:
    for item in document.get("status", {}).get("conditions", []):
        if item.get("type") == type_:
            return item.get("status", "Unknown")
    return "-"


def _age(document: dict[str, Any]) -> str:
    return age(parse_rfc3339(document["metadata"].get("creationTimestamp")))


def _replicas(document: dict[str, Any]) -> str:
    replicas = document.get("status", {}).get("replicas", {})
    desired = document.get("spec", {}).get("replicas", 1)
    return f"{replicas.get('ready', 0)}/{desired}"


def _gpus(document: dict[str, Any]) -> str:
    devices = document.get("status", {}).get("devices", [])
    types: dict[str, int] = {}
    for device in devices:
        types[device.get("type", "?")] = types.get(device.get("type", "?"), 0) + 1
    return ",".join(f"{n}x{t}" for t, n in types.items()) or "-"


def _capacity(document: dict[str, Any], key: str) -> str:
    gpus = document.get("status", {}).get("capacity", {}).get("gpus", {})
    return str(sum(v.get(key, 0) for v in gpus.values()))


def _deleting(document: dict[str, Any], text: str) -> str:
    return "Terminating" if document["metadata"].get("deletionTimestamp") else text


Column = tuple[str, Callable[[dict[str, Any]], str]]
COLUMNS: dict[str, list[Column]] = {
    "Deployment": [
        ("READY", _replicas),
        ("SCHEDULED", lambda d: _deleting(d, condition(d, "Scheduled"))),
        (
            "GENERATION",
            lambda d: f"{d['status'].get('observedGeneration', 0)}/{d['metadata']['generation']}",
        ),
        # Where clients go: the router's endpoint (or the one replica's), once it serves.
        ("URL", lambda d: d.get("status", {}).get("url") or "-"),
    ],
    "TrainingJob": [
        ("SCHEDULED", lambda d: _deleting(d, condition(d, "Scheduled"))),
        ("READY", lambda d: condition(d, "Ready")),
        ("STEPS", lambda d: str(d["spec"].get("steps", "-"))),
    ],
    "Node": [
        ("READY", lambda d: condition(d, "Ready")),
        ("CLUSTER", lambda d: d["spec"].get("cluster") or "-"),
        ("SCHEDULABLE", lambda d: "false" if d["spec"].get("unschedulable") else "true"),
        ("DEVICES", _gpus),
    ],
    "Workload": [
        ("OWNER", lambda d: f"{d['spec']['owner']['kind'].lower()}/{d['spec']['owner']['name']}"),
        ("ROLE", lambda d: d["spec"]["role"]),
        ("NODE", lambda d: d["spec"]["nodeName"]),
        ("GPUS", lambda d: ",".join(map(str, d["spec"].get("gpus", []))) or "-"),
        ("READY", lambda d: condition(d, "Ready")),
    ],
    "Cluster": [
        ("READY", lambda d: condition(d, "Ready")),
        ("GPUS", lambda d: _capacity(d, "total")),
        ("FREE", lambda d: _capacity(d, "free")),
        (
            "COST/H",
            lambda d: f"{d.get('status', {}).get('capacity', {}).get('costPerHour', 0):.2f}",
        ),
    ],
    "Policy": [
        ("TYPE", lambda d: d["spec"]["type"]),
        ("PLUGIN", lambda d: d["spec"]["plugin"]),
    ],
}
WIDE: dict[str, list[Column]] = {
    "Cluster": [("POWER", cluster_power.wide_power), ("CAPPED", cluster_power.wide_capped)],
    "TrainingJob": [
        ("STEP", lambda d: str((d.get("status", {}).get("progress") or {}).get("step", "-"))),
        ("CHECKPOINT", lambda d: str((d.get("status", {}).get("lastCheckpoint") or {}).get("step", "-"))),
    ],
    "Deployment": [
        (
            "NODES",
            lambda d: ",".join(sorted({p["node"] for p in d["status"].get("placements", [])})) or "-",
        ),
        ("SCHEDULER", lambda d: d["spec"].get("policies", {}).get("scheduler") or "default"),
    ],
    "Node": [
        (
            "LABELS",
            lambda d: (
                ",".join(
                    f"{k}={v}"
                    for k, v in {
                        **d["metadata"].get("labels", {}),
                        **d["spec"].get("labels", {}),
                    }.items()
                )
                or "-"
            ),
        )
    ],
}


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=False)]
    lines = [
        "   ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=False)).rstrip()
        for row in [headers, *rows]
    ]
    return "\n".join(lines)


def resource_table(kind: str, items: list[dict[str, Any]], wide: bool = False) -> str:
    columns = [("NAME", lambda d: d["metadata"]["name"]), *COLUMNS.get(kind, [])]
    if wide:
        columns += WIDE.get(kind, [])
    columns.append(("AGE", _age))
    rows = []
    for item in items:
        row = []
        for _, render in columns:
            try:
                row.append(render(item))
            except (KeyError, TypeError):
                row.append("?")
        rows.append(row)
    return table(rows, [header for header, _ in columns])


def dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2)
    return yaml.safe_dump(data, sort_keys=False).rstrip()


def describe(document: dict[str, Any], events: list[dict[str, Any]]) -> str:
    meta = document["metadata"]
    labels = ", ".join(f"{k}={v}" for k, v in meta.get("labels", {}).items()) or "<none>"
    observed = document.get("status", {}).get("observedGeneration", "-")
    lines = [
        f"Name:          {meta['name']}",
        f"Kind:          {document['kind']}",
        f"Labels:        {labels}",
        f"Created:       {meta.get('creationTimestamp')} ({_age(document)} ago)",
        f"Generation:    {meta.get('generation')} (observed {observed})",
        f"Version:       {meta.get('resourceVersion')}",
    ]
    if document["kind"] == "Deployment":
        lines.append(f"URL:           {document.get('status', {}).get('url') or '<none>'}")
    if meta.get("deletionTimestamp"):
        lines.append(
            f"Deleting since: {meta['deletionTimestamp']} "
            f"(finalizers: {', '.join(meta.get('finalizers', []))})"
        )
    lines += ["Spec:", _indent(yaml.safe_dump(document.get("spec", {}), sort_keys=False))]
    shown_apart = {"TrainingJob": checkpoints.SHOWN, "Cluster": cluster_power.SHOWN}.get(document["kind"], ())
    hidden = {"conditions", *shown_apart}
    status = {k: v for k, v in document.get("status", {}).items() if k not in hidden}
    if status:
        lines += ["Status:", _indent(yaml.safe_dump(status, sort_keys=False))]
    if document["kind"] == "TrainingJob":
        lines += checkpoints.lines(document.get("status", {}), table)
    if document["kind"] == "Cluster":
        lines += cluster_power.lines(document.get("spec", {}), document.get("status", {}), table)
    conditions = document.get("status", {}).get("conditions", [])
    lines.append("Conditions:")
    if conditions:
        rows = [[c["type"], c["status"], c.get("reason", ""), c.get("message", "")] for c in conditions]
        lines.append(_indent(table(rows, ["TYPE", "STATUS", "REASON", "MESSAGE"])))
    else:
        lines.append("  <none>")
    lines.append("Events:")
    if events:
        lines.append(_indent(events_table(events)))
    else:
        lines.append("  <none>")
    return "\n".join(lines)


def events_table(events: list[dict[str, Any]], with_object: bool = False) -> str:
    headers = ["LAST SEEN", "TYPE", "REASON"] + (["OBJECT"] if with_object else []) + ["MESSAGE"]
    rows = []
    for event in events:
        obj = event["involvedObject"]
        row = [age(parse_rfc3339(event["lastTimestamp"])), event["type"], event["reason"]]
        if with_object:
            row.append(f"{obj['kind'].lower()}/{obj['name']}")
        count = f" (x{event['count']})" if event.get("count", 1) > 1 else ""
        row.append(event["message"] + count)
        rows.append(row)
    return table(rows, headers)


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.rstrip().splitlines())
