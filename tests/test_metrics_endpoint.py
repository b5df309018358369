"""GET /metrics: the control plane's aggregate counts in Prometheus text format."""

from __future__ import annotations

import pytest
from django.test import override_settings

from controlplane import fleet
from controlplane.apply import apply
from controlplane.controllers import owners
from tests.conftest import deployment

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_cache():
    fleet._cache.clear()


def samples(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_it_counts_resources_nodes_gpus_and_scheduled_owners_without_a_token(client, add_node):
    add_node("gpu-a", gpus=4, gpu_type="H100")
    add_node("gpu-b", gpus=2, gpu_type="L4", memory_mib=23034)
    apply([deployment("chat", replicas=2)], actor="test")
    owners.reconcile("Deployment", "chat")

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    values = samples(response.content.decode())
    assert values['flotilla_resources{kind="Node"}'] == 2
    assert values['flotilla_resources{kind="Workload"}'] == 3  # two replicas and their router
    assert values['flotilla_nodes{ready="true"}'] == 2

    def gpus(state: str) -> float:
        return sum(v for k, v in values.items() if k.startswith("flotilla_gpus{") and f'state="{state}"' in k)

    assert (gpus("allocated"), gpus("free"), gpus("unhealthy")) == (2, 4, 0)
    assert values['flotilla_owners_scheduled{kind="Deployment"}'] == 1
    assert "chat" not in response.content.decode() and "gpu-a" not in response.content.decode()


def test_it_can_be_turned_off_and_takes_only_get(client):
    with override_settings(FLOTILLA_METRICS=False):
        assert client.get("/metrics").status_code == 404
    assert client.post("/metrics").status_code == 405
