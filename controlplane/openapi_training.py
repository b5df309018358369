"""The OpenAPI schemas of what training reports: a TrainingJob's status and the checkpoint
history fields it shares with its training Workload's (controllers/checkpoints.py,
agents/supervisor.py). Kept apart from openapi.py, which lists them among the statuses."""

from __future__ import annotations

from typing import Any


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def training_job_status(conditions: dict[str, Any]) -> dict[str, Any]:
    """A TrainingJob's status: what its Workload reports, kept after it (controllers/checkpoints.py)."""
    return {
        "type": "object",
        "properties": {
            "observedGeneration": {"type": "integer"},
            "conditions": conditions,
            "progress": {"type": "object", "description": "the latest step, loss and throughput"},
            "lastCheckpoint": {
                **_ref("CheckpointRecord"),
                "description": "the newest checkpoint at a durable level (any but memory) that completed",
            },
            **checkpoint_fields("its Workloads reported, merged and kept after them"),
            "placements": {"type": "array", "items": {"type": "object"}},
        },
    }


def checkpoint_fields(whose: str) -> dict[str, Any]:
    """The checkpoint history fields a training Workload's and its TrainingJob's statuses share."""
    return {
        "checkpoints": {
            "type": "array",
            "items": _ref("CheckpointRecord"),
            "maxItems": 20,
            "description": f"the last checkpoint records {whose}, oldest first",
        },
        "restoredFrom": {
            "type": "object",
            "properties": {
                **{k: {"type": "string"} for k in ("level", "path", "plugin")},
                "step": {"type": "integer"},
                "seconds": {"type": "number"},
                "restoredAt": {"type": "number", "description": "Unix time the agent saw it"},
            },
            "description": "the checkpoint the last run resumed from; absent when it started afresh",
        },
        "rejectedCheckpoints": {
            "type": "array",
            "maxItems": 10,
            "items": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "reason": {"type": "string"}},
            },
            "description": "checkpoints passed over at restore: manifest or checksum did not verify",
        },
        "stepTimes": {
            "type": "array",
            "maxItems": 200,
            "items": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "number"}]},
            "description": "[step, mean wall ms per step] from the runtime's progress reports",
        },
    }


def checkpoint_record() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "step": {"type": "integer"},
            "level": {"type": "string", "description": "memory, local, durable... as the plugin names them"},
            "path": {"type": "string"},
            "bytes": {"type": "integer"},
            "seconds": {"type": "number", "description": "from the save call until this level held it"},
            "completedAt": {"type": "number", "description": "Unix time"},
            "plugin": {"type": "string"},
            "error": {"type": "string", "description": "set when this level failed or was skipped"},
            "skipped": {"type": "boolean", "description": "the save was skipped (whenBusy: skip)"},
        },
    }
