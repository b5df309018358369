"""The Nodes pages: the live GPU grid, a node's page, and cordon / uncordon / drain / labels."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from common.timeutil import now
from controlplane import store
from controlplane.apply import apply
from controlplane.controllers import nodes, owners
from controlplane.drain import cordon, drain_node
from controlplane.models import AuditEntry, Event, Resource
from controlplane.telemetry import store as telemetry
from controlplane.users import create_or_reset
from tests.conftest import age_lease, deployment, logged_in

pytestmark = pytest.mark.django_db


# --- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture
def op() -> Client:
    return logged_in("op", "operator")


@pytest.fixture
def watcher() -> Client:
    return logged_in("watcher", "viewer")


def reading(index: int, util: float = 87.0, used: int = 40960, power: float = 350.0, temp: float = 61.0):
    return {
        "index": index,
        "utilization": util,
        "memoryUsedMiB": used,
        "powerW": power,
        "powerLimitW": 700.0,
        "temperatureC": temp,
    }


def record(node: str, gpus: int = 8, at=None, **values: Any) -> None:
    telemetry.record(node, {"devices": [reading(i, **values) for i in range(gpus)]}, at=at)


def text(response) -> str:
    return response.content.decode()


def cell(html: str, key: str) -> str:
    """The markup of one GPU cell of the grid (up to the next cell or card)."""
    start = html.index(f'data-gpu="{key}"')
    ends = [i for i in (html.find("data-gpu=", start + 1), html.find("data-node=", start)) if i != -1]
    return html[start : min(ends) if ends else len(html)]


def shown_nodes(html: str) -> list[str]:
    return re.findall(r'<div class="card node-card" data-node="([^"]+)"', html)


def owned(name: str) -> list[Resource]:
    """Every Workload of Deployment ``name``: its replicas and (with several) its router."""
    return list(Resource.objects.filter(kind="Workload", owner_ref=f"Deployment/{name}").order_by("name"))


def schedule(name: str = "chat-small", replicas: int = 2) -> list[Resource]:
    """Apply and place Deployment ``name``; its replicas, which take the GPUs."""
    apply([deployment(name, replicas=replicas)], actor="test")
    owners.reconcile("Deployment", name)
    return [w for w in owned(name) if w.spec["role"] != "router"]


def node_spec(name: str) -> dict[str, Any]:
    return store.get("Node", name).spec


# --- the grid ----------------------------------------------------------------------------


def test_the_grid_shows_each_node_and_gpu_with_its_telemetry(op, add_node):
    add_node("gpu-a", gpus=2, cluster="east")
    add_node("gpu-b", gpus=1)
    record("gpu-a", gpus=2, util=87.0, used=40960, power=350.0, temp=61.0)

    html = text(op.get("/nodes/"))

    assert shown_nodes(html) == ["gpu-a", "gpu-b"]
    first = cell(html, "gpu-a/0")
    assert '<div class="util">87%</div>' in first
    assert "H100" in first
    assert "40/80 GiB" in first  # 40960 MiB used of 81559 MiB
    assert ">350 W<" in first and "of a 700 W limit" in first
    assert "61°C" in first
    assert 'style="width:50.0%"' in first  # the power bar: 350 of 700 W
    assert 'data-gpu="gpu-a/1"' in html
    assert '<div class="util">—</div>' in cell(html, "gpu-b/0")  # no telemetry yet
    assert "cluster east" in html
    assert '<span class="badge ok">Ready</span>' in html


def test_the_grid_names_the_workload_and_owner_on_each_gpu(op, add_node):
    add_node("gpu-a", gpus=2)
    (first, second) = schedule("chat-small", replicas=2)

    html = text(op.get("/nodes/"))

    busy = cell(html, f"gpu-a/{first.spec['gpus'][0]}")
    assert 'class="gpu busy"' in busy
    assert "Deployment/chat-small" in busy
    assert first.name in busy
    assert second.name in cell(html, f"gpu-a/{second.spec['gpus'][0]}")


def test_the_grid_marks_cordoned_and_not_ready_nodes(op, add_node):
    add_node("gpu-a", gpus=1)
    add_node("gpu-b", gpus=1)
    cordon("gpu-a", "test")
    age_lease("gpu-b")
    nodes.check_heartbeats()

    html = text(op.get("/nodes/"))

    card_a = html[html.index('data-node="gpu-a"') : html.index('data-node="gpu-b"')]
    assert "cordoned" in card_a
    card_b = html[html.index('data-node="gpu-b"') :]
    assert "NotReady" in card_b


def test_the_grid_pages_fifty_nodes_at_a_time(op, add_node):
    for i in range(55):
        add_node(f"n{i:03d}", gpus=1)

    first = text(op.get("/nodes/"))
    second = text(op.get("/nodes/", {"page": 2}))

    assert shown_nodes(first) == [f"n{i:03d}" for i in range(50)]
    assert shown_nodes(second) == [f"n{i:03d}" for i in range(50, 55)]
    assert "page 1 / 2" in first
    assert 'href="?page=2"' in first
    assert "page 2 / 2" in second


def test_the_pager_keeps_the_filters(op, add_node):
    for i in range(52):
        add_node(f"n{i:03d}", gpus=1, cluster="east")
    add_node("other", gpus=1, cluster="west")

    html = text(op.get("/nodes/", {"cluster": "east"}))

    assert 'href="?cluster=east&amp;page=2"' in html


def test_filters_by_cluster_state_and_name(op, add_node):
    add_node("east-1", gpus=1, cluster="east")
    add_node("east-2", gpus=1, cluster="east")
    add_node("west-1", gpus=1, cluster="west")
    add_node("loose", gpus=1)
    cordon("east-2", "test")
    age_lease("west-1")
    nodes.check_heartbeats()

    def shown(**params: str) -> list[str]:
        return shown_nodes(text(op.get("/nodes/", params)))

    assert shown(cluster="east") == ["east-1", "east-2"]
    assert shown(cluster="-") == ["loose"]
    assert shown(state="cordoned") == ["east-2"]
    assert shown(state="notready") == ["west-1"]
    assert shown(state="ready") == ["east-1", "east-2", "loose"]
    assert shown(q="EAST") == ["east-1", "east-2"]
    assert shown(cluster="east", state="cordoned", q="2") == ["east-2"]
    assert shown(state="bogus") == ["east-1", "east-2", "loose", "west-1"]  # unknown state: ignored
    assert "No nodes match these filters" in text(op.get("/nodes/", {"q": "nothing-like-this"}))


def test_the_filter_form_offers_the_clusters_and_keeps_the_choices(op, add_node):
    add_node("east-1", gpus=1, cluster="east")
    add_node("west-1", gpus=1, cluster="west")

    html = text(op.get("/nodes/", {"cluster": "west", "state": "ready", "q": "we"}))

    assert '<option value="east" >east</option>' in html
    assert '<option value="west" selected>west</option>' in html
    assert '<option value="ready" selected>Ready</option>' in html
    assert 'name="q" value="we"' in html


def test_the_grid_polls_its_partial_with_the_same_filters_and_page(op, add_node):
    add_node("east-1", gpus=1, cluster="east")

    html = text(op.get("/nodes/", {"cluster": "east", "page": "1"}))

    assert 'hx-get="/nodes/live?cluster=east&amp;page=1"' in html
    assert "hx-trigger=\"every 5s [document.visibilityState === 'visible']\"" in html


def test_the_live_partial_is_the_grid_alone_and_current(op, add_node):
    add_node("east-1", gpus=1, cluster="east")
    add_node("west-1", gpus=1, cluster="west")
    before = text(op.get("/nodes/live", {"cluster": "east"}))
    record("east-1", gpus=1, util=42.0)

    response = op.get("/nodes/live", {"cluster": "east"})

    html = text(response)
    assert response.status_code == 200
    assert "<html" not in html and "<form" not in html
    assert shown_nodes(html) == ["east-1"]
    assert '<div class="util">—</div>' in cell(before, "east-1/0")
    assert '<div class="util">42%</div>' in cell(html, "east-1/0")


def test_with_no_nodes_the_grid_says_how_to_start_an_agent(op):
    html = text(op.get("/nodes/"))

    assert "No nodes yet" in html
    assert "flotilla agent --server" in html
    assert "--token TOKEN" in html
    assert "--simulate 8xH100" in html


def test_the_grid_reads_a_constant_number_of_queries(op, add_node, django_assert_max_num_queries):
    """At 60 nodes the grid costs what it costs at 3: nothing is read per node."""

    def populate(start: int, stop: int) -> None:
        for i in range(start, stop):
            add_node(f"n{i:03d}", gpus=8, cluster="east" if i % 2 else "west")
            record(f"n{i:03d}")

    populate(0, 3)
    schedule("small", replicas=2)
    with CaptureQueriesContext(connection) as few:
        assert op.get("/nodes/").status_code == 200
    populate(3, 60)
    schedule("large", replicas=20)
    with CaptureQueriesContext(connection) as many:
        assert op.get("/nodes/").status_code == 200
    with django_assert_max_num_queries(12):
        html = text(op.get("/nodes/live"))

    assert len(many) == len(few)
    assert len(shown_nodes(html)) == 50


def test_the_grid_reads_telemetry_of_the_page_nodes_only(op, add_node, monkeypatch):
    for i in range(55):
        add_node(f"n{i:03d}", gpus=1)
    asked: list[list[str]] = []
    original = telemetry.latest_many

    def spy(names):
        asked.append(sorted(names))
        return original(names)

    monkeypatch.setattr(telemetry, "latest_many", spy)
    op.get("/nodes/", {"page": 2})

    assert asked == [[f"n{i:03d}" for i in range(50, 55)]]


# --- one node ----------------------------------------------------------------------------


def test_the_node_page_shows_info_gpus_workloads_and_events(op, add_node):
    add_node("gpu-a", gpus=2, cluster="east", labels={"zone": "eu-1"})
    (workload, _) = schedule("chat-small", replicas=2)
    record("gpu-a", gpus=2, util=55.0)

    html = text(op.get("/nodes/gpu-a/"))

    assert "Node gpu-a" in html
    assert "east" in html
    assert "zone=eu-1" in html
    assert "Last heartbeat" in html and "never" not in html
    assert "AgentHeartbeat" in html  # the Ready condition's reason
    row = cell(html, f"gpu-a/{workload.spec['gpus'][0]}")
    assert "55%" in row and workload.name in row and "Deployment/chat-small" in row
    assert "Registered" in html  # the node's registration event


def test_the_node_page_charts_the_last_hour_of_telemetry(op, add_node):
    add_node("gpu-a", gpus=2)
    record("gpu-a", gpus=2, at=now() - timedelta(minutes=20), util=30.0)
    record("gpu-a", gpus=2, at=now() - timedelta(minutes=5), util=70.0)

    html = text(op.get("/nodes/gpu-a/"))

    assert html.count('<svg class="chart"') == 4
    for title in ("Utilisation (%)", "Power vs limit (W)", "Memory used (GiB)", "Temperature (°C)"):
        assert f'aria-label="{title}"' in html
    assert "GPU 0" in html and "GPU 1" in html and "limit" in html
    assert "No telemetry from this node" not in html


def test_the_node_page_without_telemetry_says_so_instead_of_charts(op, add_node):
    add_node("gpu-a", gpus=2)
    record("gpu-a", gpus=2, at=now() - timedelta(hours=3))  # outside the hour charted

    html = text(op.get("/nodes/gpu-a/"))

    assert '<svg class="chart"' not in html
    assert "No telemetry from this node in the last hour" in html


def test_an_unknown_node_is_a_404_page(op):
    response = op.get("/nodes/no-such-node/")

    assert response.status_code == 404
    assert "No node named no-such-node" in text(response)


# --- actions -------------------------------------------------------------------------------


def test_an_operator_sees_the_action_buttons(op, add_node):
    add_node("gpu-a", gpus=1)

    html = text(op.get("/nodes/gpu-a/"))

    assert 'action="/nodes/gpu-a/cordon"' in html
    assert 'action="/nodes/gpu-a/drain"' in html
    assert 'action="/nodes/gpu-a/labels"' in html
    assert 'name="csrfmiddlewaretoken"' in html


def test_cordon_and_uncordon_change_the_spec_and_log_it(op, add_node):
    add_node("gpu-a", gpus=1)
    generation = store.get("Node", "gpu-a").generation

    response = op.post("/nodes/gpu-a/cordon")

    assert response.status_code == 302 and response.url == "/nodes/gpu-a/"
    node = store.get("Node", "gpu-a")
    assert node.spec["unschedulable"] is True
    assert node.generation == generation + 1
    assert AuditEntry.objects.filter(actor="user/op", verb="cordon", kind="Node", name="gpu-a").exists()
    assert Event.objects.filter(kind="Node", name="gpu-a", reason="Cordoned").exists()
    page = text(op.get("/nodes/gpu-a/"))
    assert "node gpu-a cordoned" in page
    assert 'action="/nodes/gpu-a/uncordon"' in page

    response = op.post("/nodes/gpu-a/uncordon", follow=True)

    assert "node gpu-a uncordoned" in text(response)
    assert node_spec("gpu-a")["unschedulable"] is False
    assert AuditEntry.objects.filter(verb="uncordon", name="gpu-a").count() == 1


def test_cordoning_twice_writes_once(op, add_node):
    add_node("gpu-a", gpus=1)
    op.post("/nodes/gpu-a/cordon")
    generation = store.get("Node", "gpu-a").generation

    response = op.post("/nodes/gpu-a/cordon", follow=True)

    assert "was already cordoned" in text(response)
    assert store.get("Node", "gpu-a").generation == generation
    assert AuditEntry.objects.filter(verb="cordon").count() == 1


def test_actions_are_post_only(op, add_node):
    add_node("gpu-a", gpus=1)

    for action in ("cordon", "uncordon", "drain", "labels"):
        assert op.get(f"/nodes/gpu-a/{action}").status_code == 405
    assert node_spec("gpu-a")["unschedulable"] is False


def test_actions_need_the_csrf_token(add_node):
    add_node("gpu-a", gpus=1)
    user, _, _ = create_or_reset("op", "operator")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)

    assert client.post("/nodes/gpu-a/cordon").status_code == 403
    assert client.post("/nodes/gpu-a/drain").status_code == 403
    assert node_spec("gpu-a")["unschedulable"] is False


def test_actions_on_an_unknown_node_are_404(op):
    for action in ("cordon", "uncordon", "drain", "labels"):
        assert op.post(f"/nodes/nope/{action}", {"labels": "a=b"}).status_code == 404


def test_drain_evicts_the_workloads_and_their_owners_place_them_elsewhere(op, add_node):
    add_node("gpu-a", gpus=2)
    add_node("gpu-b", gpus=2)
    placed = schedule("chat-small", replicas=2)
    drained = placed[0].node_name
    other = "gpu-b" if drained == "gpu-a" else "gpu-a"
    on_drained = [w.name for w in owned("chat-small") if w.node_name == drained]  # the router too

    response = op.post(f"/nodes/{drained}/drain", follow=True)

    assert f"node {drained} drained: cordoned and {len(on_drained)} workloads evicted" in text(response)
    assert node_spec(drained)["unschedulable"] is True
    assert not Resource.objects.filter(kind="Workload", node_name=drained).exists()
    assert Event.objects.filter(kind="Node", name=drained, reason="Drained").exists()
    assert Event.objects.filter(kind="Deployment", name="chat-small", reason="Evicted").exists()
    assert AuditEntry.objects.filter(actor="user/op", verb="drain", kind="Node", name=drained).exists()
    evicted = set(AuditEntry.objects.filter(verb="evict", kind="Workload").values_list("name", flat=True))
    assert evicted == set(on_drained)

    owners.reconcile("Deployment", "chat-small")

    replaced = Resource.objects.filter(kind="Workload", owner_ref="Deployment/chat-small")
    assert replaced.count() == 3  # two replicas and the router
    assert {w.node_name for w in replaced} == {other}


def test_drain_marks_workloads_an_agent_still_holds(add_node):
    add_node("gpu-a", gpus=2)
    add_node("gpu-b", gpus=2)
    placed = schedule("chat-small", replicas=1)
    held = placed[0]
    store.set_finalizers(held, ["flotilla.dev/agent-stop"])

    assert drain_node(held.node_name, "user/op") == 1

    held.refresh_from_db()
    assert held.deletion_timestamp is not None


def test_drain_of_an_empty_node_just_cordons_it(add_node):
    add_node("gpu-a", gpus=1)

    assert drain_node("gpu-a", "user/op") == 0
    assert node_spec("gpu-a")["unschedulable"] is True


def test_labels_replace_spec_labels_and_are_audited(op, add_node):
    add_node("gpu-a", gpus=1, labels={"old": "x"})
    generation = store.get("Node", "gpu-a").generation

    response = op.post(
        "/nodes/gpu-a/labels",
        {
            "labels": "team=search\n\n# a comment\n zone = eu-1 \nflotilla.dev/pool=a",
            "generation": generation,
        },
    )

    assert response.status_code == 302 and response.url == "/nodes/gpu-a/"
    node = store.get("Node", "gpu-a")
    assert node.spec["labels"] == {"team": "search", "zone": "eu-1", "flotilla.dev/pool": "a"}
    assert node.generation == generation + 1
    assert AuditEntry.objects.filter(actor="user/op", verb="label", kind="Node", name="gpu-a").exists()
    assert "labels of node gpu-a saved" in text(op.get("/nodes/gpu-a/"))


@pytest.mark.parametrize(
    ("labels", "says"),
    [
        ("bad key=x", ["label key 'bad key' is not valid", "use letters, digits"]),
        ("team=has space", ["label team='has space' is not valid", "at most 63"]),
        ("team=search\njust-a-word", ["line 2", "'just-a-word' is not key=value", "e.g. team=search"]),
        ("=value", ["line 1", "is not key=value"]),
        ("a=1\na=2", ["line 2", "label 'a' is given twice"]),
        ("\n".join(f"k{i}=v" for i in range(65)), ["65 labels given; at most 64"]),
        ("k=" + "v" * 30_000, ["characters; at most"]),
    ],
)
def test_bad_labels_say_what_is_wrong_and_change_nothing(op, add_node, labels, says):
    add_node("gpu-a", gpus=1, labels={"keep": "me"})
    before = store.get("Node", "gpu-a")

    response = op.post("/nodes/gpu-a/labels", {"labels": labels})

    assert response.status_code == 400
    html = text(response)
    for phrase in says:
        assert phrase.replace("'", "&#x27;") in html
    after = store.get("Node", "gpu-a")
    assert (after.spec, after.generation, after.resource_version) == (
        before.spec,
        before.generation,
        before.resource_version,
    )
    assert not AuditEntry.objects.filter(verb="label").exists()


def test_a_labels_form_from_before_another_change_is_refused(op, add_node):
    add_node("gpu-a", gpus=1)
    stale = store.get("Node", "gpu-a").generation
    cordon("gpu-a", "someone-else")

    response = op.post("/nodes/gpu-a/labels", {"labels": "team=x", "generation": stale})

    assert response.status_code == 400
    assert "was changed since you opened this page" in text(response)
    assert node_spec("gpu-a")["labels"] == {}


# --- roles -----------------------------------------------------------------------------------


def test_a_viewer_sees_the_pages_but_no_action_buttons(watcher, add_node):
    add_node("gpu-a", gpus=1)

    assert watcher.get("/nodes/").status_code == 200
    html = text(watcher.get("/nodes/gpu-a/"))

    assert "Node gpu-a" in html
    for action in ("cordon", "uncordon", "drain", "labels"):
        assert f'action="/nodes/gpu-a/{action}"' not in html
    assert "<textarea" not in html


def test_a_viewer_cannot_act(watcher, add_node):
    add_node("gpu-a", gpus=2)
    placed = schedule("chat-small", replicas=1)
    before = store.get("Node", "gpu-a")

    for action in ("cordon", "drain"):
        response = watcher.post(f"/nodes/gpu-a/{action}")
        assert response.status_code == 403
        assert "needs the <b>operator</b> role" in text(response)
    assert watcher.post("/nodes/gpu-a/labels", {"labels": "team=x"}).status_code == 403
    store.update(before, spec={**before.spec, "unschedulable": True})
    assert watcher.post("/nodes/gpu-a/uncordon").status_code == 403

    after = store.get("Node", "gpu-a")
    assert after.spec == {**before.spec, "unschedulable": True}
    assert Resource.objects.filter(kind="Workload", name=placed[0].name).exists()
    assert not AuditEntry.objects.filter(actor="user/watcher").exists()


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/nodes/"),
        ("get", "/nodes/live"),
        ("get", "/nodes/gpu-a/"),
        ("post", "/nodes/gpu-a/cordon"),
        ("post", "/nodes/gpu-a/drain"),
        ("post", "/nodes/gpu-a/labels"),
    ],
)
def test_anonymous_users_are_sent_to_log_in(add_node, method, url):
    add_node("gpu-a", gpus=1)

    response = getattr(Client(), method)(url)

    assert response.status_code == 302
    assert response.url.startswith("/login/?next=")
    assert node_spec("gpu-a")["unschedulable"] is False
