"""Declarative apply: validate every document, plan, then write all or nothing.

Validation collects every problem in every document first (index, field
path, message, fix) so an operator fixes a file in one round; nothing is
written unless every document is valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from pydantic import BaseModel, ValidationError

from common.specs import API_VERSION, KINDS, KindInfo, Metadata
from controlplane import events, store
from controlplane.errors import Conflict, Invalid
from controlplane.policies import PolicyProblem, plugin_for, references, resolve
from plugins import manager

TOP_LEVEL = {"apiVersion", "kind", "metadata", "spec", "status"}


@dataclass
class Parsed:
    index: int
    info: KindInfo
    name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: dict[str, Any]
    resource_version: str | None = None


@dataclass
class Outcome:
    kind: str
    name: str
    action: str  # created | configured | unchanged
    generation: int
    diff: list[dict[str, Any]] = field(default_factory=list)
    # Dry runs of Deployments: each candidate scheduler's plan (controlplane.schedule_preview).
    schedule: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        document = {
            "kind": self.kind,
            "name": self.name,
            "action": self.action,
            "generation": self.generation,
            "diff": self.diff,
        }
        if self.schedule is not None:
            document["schedule"] = self.schedule
        return document


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(str(part))
        if info is None:
            return None
        annotation = info.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def pydantic_problems(
    index: int | None, prefix: str, model: type[BaseModel], exc: ValidationError
) -> list[dict[str, Any]]:
    """Field-level problems (path, message, fix) from a pydantic error; ``index`` is the
    document in an apply, None for a body that is not a document (the agent protocol)."""
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = ".".join(part for part in [prefix, *(str(p) for p in loc)] if part)
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            known = ", ".join(parent.model_fields) if parent else ""
            message = f"unknown field {loc[-1]!r}"
            fix = f"remove it; known fields here: {known}" if known else "remove it"
        elif kind == "missing":
            message, fix = "field is required", f"add {path}"
        else:
            message = err["msg"].removeprefix("Value error, ")
            fix = f"correct {path}"
        problem = {"field": path, "message": message, "fix": fix}
        problems.append(problem if index is None else {"document": index, **problem})
    return problems


def validate_document(index: int, document: Any) -> tuple[Parsed | None, list[dict[str, Any]]]:
    def problem(path: str, message: str, fix: str) -> list[dict[str, Any]]:
        return [{"document": index, "field": path, "message": message, "fix": fix}]

    if not isinstance(document, dict):
        return None, problem("", "a document must be a mapping", "start with 'apiVersion: ...'")
    problems: list[dict[str, Any]] = []
    for key in sorted(set(document) - TOP_LEVEL, key=str):
        problems += problem(
            str(key), f"unknown field {key!r}", "remove it; known: " + ", ".join(sorted(TOP_LEVEL))
        )
    if document.get("apiVersion") != API_VERSION:
        problems += problem(
            "apiVersion", f"is {document.get('apiVersion')!r}", f"set apiVersion: {API_VERSION}"
        )
    kind = document.get("kind")
    info = KINDS.get(kind) if isinstance(kind, str) else None
    if info is None:
        problems += problem(
            "kind", f"unknown kind {document.get('kind')!r}", "use one of: " + ", ".join(KINDS)
        )
    try:
        metadata = Metadata.model_validate(document.get("metadata") or {})
    except ValidationError as exc:
        problems += pydantic_problems(index, "metadata", Metadata, exc)
        metadata = None
    spec = None
    if info is not None:
        raw_spec = document.get("spec")
        if raw_spec is None:
            raw_spec = {}
        if not isinstance(raw_spec, dict):
            problems += problem("spec", "spec must be a mapping", "write spec as key: value pairs")
        else:
            try:
                spec = info.spec_model.model_validate(raw_spec)
            except ValidationError as exc:
                problems += pydantic_problems(index, "spec", info.spec_model, exc)
    if problems or info is None or metadata is None or spec is None:
        return None, problems
    return (
        Parsed(
            index=index,
            info=info,
            name=metadata.name,
            labels=metadata.labels,
            annotations=metadata.annotations,
            spec=spec.model_dump(mode="json"),
            resource_version=metadata.resourceVersion,
        ),
        [],
    )


def check_references(parsed: list[Parsed]) -> list[dict[str, Any]]:
    """Plugins and policy names that must resolve, counting Policies in this batch."""
    problems: list[dict[str, Any]] = []
    for item in parsed:
        if item.info.kind == "Workload":
            # A hand-made Workload could claim GPUs another replica holds; only the
            # controllers, which read free capacity under the write lock, create them.
            problems.append(
                {
                    "document": item.index,
                    "field": "kind",
                    "message": "Workloads are created by controllers, not applied",
                    "fix": "apply a Deployment or TrainingJob; its controller creates the Workloads",
                }
            )
    pending = {p.name: p.spec for p in parsed if p.info.kind == "Policy"}
    seen: dict[tuple[str, str], int] = {}
    for item in parsed:
        key = (item.info.kind, item.name)
        if key in seen:
            problems.append(
                {
                    "document": item.index,
                    "field": "metadata.name",
                    "message": f"{item.info.kind.lower()}/{item.name} also appears in document {seen[key]}",
                    "fix": "keep one document per object",
                }
            )
        seen[key] = item.index
        if item.info.kind == "Policy":
            try:
                plugin_for(item.spec)
            except manager.PluginError as exc:
                problems += [
                    {"document": item.index, "field": d["field"], "message": d["message"], "fix": exc.fix}
                    for d in exc.details()
                ]
            continue
        for path, plugin_kind, name in references(item.info.kind, item.spec):
            try:
                resolve(plugin_kind, name, pending)
            except PolicyProblem as exc:
                # resolve knows the name, not the field it was written in.
                problems.append({"document": item.index, **exc.detail(), "field": path})
    return problems


def validate(documents: list[Any]) -> list[Parsed]:
    parsed: list[Parsed] = []
    problems: list[dict[str, Any]] = []
    for index, document in enumerate(documents):
        item, found = validate_document(index, document)
        problems += found
        if item is not None:
            parsed.append(item)
    if not problems:
        problems = check_references(parsed)
    if problems:
        first = problems[0]
        where = (
            f"document {first['document']}, {first['field']}"
            if first["field"]
            else f"document {first['document']}"
        )
        raise Invalid(f"{len(problems)} problem(s); first: {where}: {first['message']}", problems)
    return parsed


def diff(old: Any, new: Any, path: str = "spec") -> list[dict[str, Any]]:
    """Field-level differences: each with its path and old/new value."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes = []
        for key in list(old) + [k for k in new if k not in old]:
            sub = f"{path}.{key}"
            if key not in new:
                changes.append({"path": sub, "op": "remove", "old": old[key]})
            elif key not in old:
                changes.append({"path": sub, "op": "add", "new": new[key]})
            else:
                changes += diff(old[key], new[key], sub)
        return changes
    if old != new:
        return [{"path": path, "op": "replace", "old": old, "new": new}]
    return []


def normalised_spec(info: KindInfo, spec: dict[str, Any]) -> dict[str, Any]:
    """A stored spec as today's model sees it, so new defaults do not read as edits."""
    try:
        return info.spec_model.model_validate(spec).model_dump(mode="json")
    except ValidationError:
        return spec


def plan_one(item: Parsed) -> Outcome:
    existing = store.find(item.info.kind, item.name)
    if existing is None:
        return Outcome(item.info.kind, item.name, "created", 1, diff({}, item.spec))
    if existing.deletion_timestamp is not None:
        raise Conflict(
            f"{existing} is being deleted",
            [
                {
                    "document": item.index,
                    "field": "metadata.name",
                    "fix": "wait until it is gone, then apply",
                }
            ],
        )
    old_spec = normalised_spec(item.info, existing.spec)
    changes = diff(old_spec, item.spec)
    changes += diff(existing.labels, item.labels, "metadata.labels")
    changes += diff(existing.annotations, item.annotations, "metadata.annotations")
    if not changes:
        return Outcome(item.info.kind, item.name, "unchanged", existing.generation)
    generation = existing.generation + (1 if old_spec != item.spec else 0)
    return Outcome(item.info.kind, item.name, "configured", generation, changes)


def apply(documents: list[Any], actor: str, dry_run: bool = False) -> list[Outcome]:
    parsed = validate(documents)
    with transaction.atomic():
        outcomes = [plan_one(item) for item in parsed]
        if dry_run:
            from controlplane.schedule_preview import preview

            for item, outcome in zip(parsed, outcomes, strict=True):
                if item.info.kind == "Deployment":
                    outcome.schedule = preview(item.name, item.spec)
            return outcomes
        for item, outcome in zip(parsed, outcomes, strict=True):
            if outcome.action == "created":
                store.create(item.info.kind, item.name, item.spec, item.labels, item.annotations)
            elif outcome.action == "configured":
                resource = store.get(item.info.kind, item.name, for_update=True)
                store.update(resource, spec=item.spec, labels=item.labels, annotations=item.annotations)
            else:
                continue
            summary = ", ".join(c["path"] for c in outcome.diff[:20])
            events.audit(actor, outcome.action, item.info.kind, item.name, summary)
    return outcomes


def replace(document: Any, kind: str, name: str, actor: str) -> Outcome:
    """PUT: like apply of one document, but the resourceVersion must be current."""
    (item,) = validate([document])
    if item.info.kind != kind or item.name != name:
        raise Invalid(
            f"the body is {item.info.kind.lower()}/{item.name} but the URL names {kind.lower()}/{name}",
            [{"document": 0, "field": "metadata.name", "fix": "send the object the URL names"}],
        )
    if not item.resource_version:
        raise Invalid(
            "replace needs metadata.resourceVersion",
            [
                {
                    "document": 0,
                    "field": "metadata.resourceVersion",
                    "fix": "get the object first and send its resourceVersion back",
                }
            ],
        )
    try:
        expected = int(item.resource_version)
    except ValueError:
        raise Invalid(
            "metadata.resourceVersion must be a number",
            [
                {
                    "document": 0,
                    "field": "metadata.resourceVersion",
                    "fix": "send back the value you read",
                }
            ],
        ) from None
    with transaction.atomic():
        resource = store.get(kind, name, for_update=True)
        outcome = plan_one(item)
        store.update(
            resource,
            spec=item.spec,
            labels=item.labels,
            annotations=item.annotations,
            expected_version=expected,
        )
        if outcome.action != "unchanged":
            events.audit(actor, "replace", kind, name, ", ".join(c["path"] for c in outcome.diff[:20]))
    return outcome
