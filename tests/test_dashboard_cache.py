"""The Deployment pages' URL and prefix cache: status.url in the list and on the page, the
hit-rate chart from the replicas' telemetry, and the latest hits, misses, evictions and pins."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.test import Client

from common.timeutil import now
from controlplane import store
from controlplane.apply import apply
from controlplane.controllers import owners
from controlplane.models import Resource
from controlplane.telemetry import store as telemetry
from dashboard import serving
from tests.conftest import deployment, logged_in

pytestmark = pytest.mark.django_db

ROUTER_URL = "http://10.0.0.5:9000"


@pytest.fixture
def viewer_client(db) -> Client:
    return logged_in("watcher", "viewer")


def served(name: str = "chat", replicas: int = 2) -> Resource:
    """Deployment ``name`` placed, every Workload reporting Ready (the router at ROUTER_URL)."""
    apply([deployment(name, replicas=replicas)], actor="test")
    owners.reconcile("Deployment", name)
    workloads = Resource.objects.filter(kind="Workload", owner_ref=f"Deployment/{name}")
    for workload in workloads:
        router = workload.spec["role"] == "router"
        status = {
            "phase": "Running",
            "observedGeneration": workload.generation,
            "endpoint": ROUTER_URL if router else f"http://10.0.0.5:{8000 + owners.replica_index(workload)}",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": ""}],
        }
        store.update_status(workload, status)
    owners.reconcile("Deployment", name)
    return store.get("Deployment", name)


def cache_numbers(
    hits: int, misses: int, hit_tokens: int, prompt_tokens: int, **more: float
) -> dict[str, float]:
    """A replica's prefix cache as the agent flattens the engine's /stats (agents.agent.flat_numbers)."""
    numbers = {
        "prefixCache.hits": hits,
        "prefixCache.misses": misses,
        "prefixCache.hitTokens": hit_tokens,
        "prefixCache.promptTokens": prompt_tokens,
        "prefixCache.evictions": 0,
        "prefixCache.pinsBroken": 0,
        "prefixCache.cachedBlocks": 40,
        "prefixCache.pinnedBlocks": 0,
        "uptimeSeconds": 1000,
    }
    numbers.update({k if k == "uptimeSeconds" else f"prefixCache.{k}": v for k, v in more.items()})
    return {k: float(v) for k, v in numbers.items()}


def report(node: str, workloads: dict[str, dict[str, float]], seconds_ago: float) -> None:
    telemetry.record(node, {"devices": [], "workloads": workloads}, at=now() - timedelta(seconds=seconds_ago))


def page(client: Client, name: str = "chat") -> str:
    response = client.get(f"/deployments/{name}/")
    assert response.status_code == 200
    return response.content.decode()


def text_of(html: str, css_class: str) -> str:
    found = re.search(rf'class="{css_class}"[^>]*>([^<]*)<', html)
    assert found, f"no .{css_class}"
    return found.group(1).strip()


# --- the URL --------------------------------------------------------------------------------


def test_the_list_and_the_page_show_the_deployments_url(viewer_client, add_node):
    add_node("gpu-a", gpus=2)
    owner = served("chat")
    assert owner.status["url"] == ROUTER_URL

    listing = viewer_client.get("/deployments/").content.decode()
    row = re.search(r'<tr data-deployment="chat".*?</tr>', listing, re.S).group(0)
    assert "<th>URL</th>" in listing
    assert (
        f'<td class="endpoints url"><a class="endpoint mono" href="{ROUTER_URL}">{ROUTER_URL}</a></td>' in row
    )

    html = page(viewer_client)
    url = re.search(r'<div class="endpoints" id="url">(.*?)</div>', html, re.S).group(1)
    assert ROUTER_URL in url
    endpoints = re.search(r'<div class="endpoints" id="endpoints">(.*?)</div></div>', html, re.S).group(1)
    assert ROUTER_URL not in endpoints and "http://10.0.0.5:8000" in endpoints  # the replicas' own
    assert "chat-router-0" in html and ">router<" in html  # listed with the Workloads


def test_a_deployment_not_serving_yet_says_so_instead_of_a_url(viewer_client, add_node):
    add_node("gpu-a", gpus=2)
    apply([deployment("chat", replicas=2)], actor="test")
    owners.reconcile("Deployment", "chat")
    html = page(viewer_client)
    assert re.search(r'id="url"><span class="muted">not serving yet</span>', html)


# --- the prefix cache -------------------------------------------------------------------------


def test_without_figures_the_page_says_there_are_none_yet(viewer_client, add_node):
    add_node("gpu-a", gpus=2)
    served("chat")
    html = page(viewer_client)
    assert "no prefix-cache figures yet" in html
    assert "Prefix-cache hit rate (%): no data for this period yet" in html


def test_the_page_charts_the_hit_rate_and_shows_the_latest_figures_of_the_replicas(viewer_client, add_node):
    add_node("gpu-a", gpus=2)
    served("chat")
    for step in range(4):
        report(
            "gpu-a",
            {
                "chat-serve-0": cache_numbers(
                    10 * step, 5, 300 * step, 500 * step, evictions=step, pinnedBlocks=2
                ),
                "chat-serve-1": cache_numbers(
                    5 * step, 5, 100 * step, 500 * step, evictions=1, pinnedBlocks=1
                ),
                # The router's own numbers are no replica's: never summed in.
                "chat-router-0": cache_numbers(10**6, 10**6, 10**6, 10**6),
            },
            seconds_ago=240 - 60 * step,
        )
    html = page(viewer_client)

    assert "no prefix-cache figures yet" not in html
    chart = re.search(r'<div class="card" id="chart-prefix-cache">(.*?)</div>', html, re.S).group(1)
    assert 'aria-label="Prefix-cache hit rate (%)"' in chart and "<polyline" in chart
    # The newest sample, summed over the two replicas.
    assert text_of(html, "prefix-hits") == "45"
    assert text_of(html, "prefix-misses") == "10"
    assert text_of(html, "prefix-evictions") == "4"
    assert text_of(html, "prefix-pinned") == "3"
    assert "40.0%" in html  # 1200 of 3000 prompt tokens came from the cache


def minute(n: int) -> datetime:
    return datetime(2025, 3, 1, 12, n)


def test_the_hit_rate_is_the_replicas_summed_token_deltas_and_skips_a_restart():
    def sample(n: int, hit: float, prompt: float, uptime: float) -> dict[str, Any]:
        return {"at": minute(n), **cache_numbers(0, 0, hit, prompt, uptimeSeconds=uptime)}

    by_minute = {
        minute(0): {"a": [sample(0, 0, 0, 100)], "b": [sample(0, 100, 1000, 100)]},
        minute(1): {"a": [sample(1, 50, 100, 160)], "b": [sample(1, 250, 1300, 160)]},
        # b restarted: its counters began again, so that interval says nothing.
        minute(2): {"a": [sample(2, 50, 200, 220)], "b": [sample(2, 10, 20, 30)]},
        minute(3): {"a": [sample(3, 50, 200, 280)], "b": [sample(3, 10, 20, 90)]},
    }
    rates = serving._hit_rates(by_minute)

    assert rates[minute(1)] == pytest.approx(100 * (50 + 150) / (100 + 300))
    assert rates[minute(2)] == pytest.approx(0.0)  # a alone: 0 of 100 new prompt tokens
    assert minute(3) not in rates  # no prompt tokens at all that minute
    assert minute(0) not in rates  # a first sample has nothing to compare with


def test_latest_figures_are_none_when_no_replica_reports_a_prefix_cache():
    workloads = [{"name": "chat-serve-0", "node": "gpu-a", "role": "serve"}]
    latest = {"gpu-a": {"workloads": {"chat-serve-0": {"requestsTotal": 3.0}}}}
    assert serving.prefix_cache_figures(workloads, latest) is None
