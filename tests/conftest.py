"""Fixtures shared by the suites: API clients with tokens, simulated nodes, apply helpers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import yaml
from django.test import Client

from common.timeutil import now
from controlplane.auth import create_token, verified
from controlplane.controllers import nodes
from controlplane.models import NodeLease

API = "/api/v1"


class Api:
    """A Django test client that sends a bearer token and speaks JSON/YAML."""

    def __init__(self, token: str | None):
        self.client = Client()
        self.headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}

    def get(self, path: str, **params: Any):
        return self.client.get(API + path, params, **self.headers)

    def apply(self, documents: Any, dry_run: bool = False):
        if isinstance(documents, str):
            body = documents
        else:
            docs = documents if isinstance(documents, list) else [documents]
            body = yaml.safe_dump_all(docs)
        suffix = "?dryRun=true" if dry_run else ""
        return self.client.post(f"{API}/apply{suffix}", body, content_type="application/yaml", **self.headers)

    def put(self, path: str, body: Any):
        return self.client.put(API + path, body, content_type="application/json", **self.headers)

    def post(self, path: str, body: Any):
        return self.client.post(API + path, body, content_type="application/json", **self.headers)

    def delete(self, path: str):
        return self.client.delete(API + path, **self.headers)


def logged_in(username: str, role: str, **client_options: Any) -> Client:
    """A test client logged in to the dashboard as a new user with this role."""
    from controlplane.users import create_or_reset

    user, _, _ = create_or_reset(username, role)
    client = Client(**client_options)
    client.force_login(user)
    return client


def age_lease(node_name: str, seconds: float = 3600) -> None:
    """As if the node's agent had been silent for ``seconds``: its lease, and what this
    process remembers of renewing it, both that old."""
    NodeLease.objects.filter(node_name=node_name).update(renewed_at=now() - timedelta(seconds=seconds))
    nodes.renewed_here.pop(node_name, None)


@pytest.fixture(autouse=True)
def _fresh_token_cache():
    """Each test's rows are rolled back; so must be what the process remembers of them."""
    verified.clear()
    nodes.renewed_here.clear()
    yield
    verified.clear()
    nodes.renewed_here.clear()


@pytest.fixture
def token_for(db) -> Callable[[str], str]:
    def make(role: str) -> str:
        token, _ = create_token(f"test-{role}", role)
        return token

    return make


@pytest.fixture
def admin(token_for) -> Api:
    return Api(token_for("admin"))


@pytest.fixture
def operator(token_for) -> Api:
    return Api(token_for("operator"))


@pytest.fixture
def viewer(token_for) -> Api:
    return Api(token_for("viewer"))


@pytest.fixture
def anonymous(db) -> Api:
    return Api(None)


def simulated_devices(count: int, gpu_type: str = "H100", memory_mib: int = 81559) -> list[dict]:
    return [{"index": i, "type": gpu_type, "memoryMiB": memory_mib, "healthy": True} for i in range(count)]


@pytest.fixture
def add_node(db) -> Callable[..., Any]:
    """Register a node through the same code path the agent protocol uses."""

    def make(
        name: str,
        gpus: int = 8,
        gpu_type: str = "H100",
        memory_mib: int = 81559,
        cluster: str | None = None,
        labels: dict[str, str] | None = None,
    ):
        return nodes.register(
            name,
            cluster=cluster,
            labels=labels or {},
            devices=simulated_devices(gpus, gpu_type, memory_mib),
            info={},
        )

    return make


def deployment(name: str = "chat-small", replicas: int = 2, **spec: Any) -> dict[str, Any]:
    body = {
        "model": {"source": "builtin:tiny-llama", "config": {"layers": 4, "hidden": 256}},
        "replicas": replicas,
        "resources": {"gpusPerReplica": 1},
    }
    body.update(spec)
    return {
        "apiVersion": "flotilla.dev/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"team": "search"}},
        "spec": body,
    }
