"""The Cluster page's Power card and its chart of draw against the budget, and the power
line of the overview. The status is written here with ``controlplane.store`` in the shape
the powercap controller writes (docs/powercap.md), so these tests need no controller."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from common.timeutil import now, rfc3339
from controlplane import events, store
from controlplane.models import Resource
from controlplane.telemetry import store as telemetry
from dashboard.power import BUDGET_COLOR, MAX_CAPPED_ROWS
from tests.conftest import logged_in

pytestmark = pytest.mark.django_db

CONDITION_OK = {
    "type": "PowerWithinBudget",
    "status": "True",
    "reason": "WithinBudget",
    "message": "draw 9,121 W of a 10,000 W budget; 3 GPUs capped",
}


def capped(node: str, gpu: int, limit: float, owner: str | None, priority: int) -> dict[str, Any]:
    return {
        "node": node,
        "gpu": gpu,
        "limitWatts": limit,
        "maxWatts": 700.0,
        "owner": owner,
        "priority": priority,
    }


def power(**changes: Any) -> dict[str, Any]:
    status = {
        "policy": "polca",
        "budgetWatts": 10000.0,
        "drawWatts": 9120.5,
        "headroomWatts": 879.5,
        "gpus": 16,
        "cappedGpus": 3,
        "capWatts": 1080.0,
        "shortfallWatts": 0.0,
        "staleNodes": ["node-b"],
        "capped": [
            capped("node-a", 5, 560.0, "Deployment/chat", 50),
            capped("node-a", 3, 420.0, "TrainingJob/pretrain", 10),
            capped("node-a", 7, 500.0, None, 0),
        ],
        "updatedAt": rfc3339(now() - timedelta(minutes=3)),
    }
    status.update(changes)
    return status


def make_cluster(name: str = "east", status: dict[str, Any] | None = None, **spec: Any) -> Resource:
    body = {"powerBudgetWatts": 10000.0, "policies": {"powercap": "polca"}, **spec}
    return store.create("Cluster", name, body, status=status or {})


@pytest.fixture
def viewer_client() -> Client:
    return logged_in("viewer1", "viewer")


def card(html: str) -> str:
    start = html.index('<div id="cluster-power"')
    return html[start : html.index('id="cluster-power-chart"', start)]


def test_the_power_card_shows_budget_draw_headroom_the_condition_and_the_capped_gpus(viewer_client, add_node):
    add_node("node-a", cluster="east")
    make_cluster(status={"power": power(), "conditions": [CONDITION_OK]})
    response = viewer_client.get("/clusters/east/")
    assert response.status_code == 200
    html = response.content.decode()
    assert '<h1 data-cluster="east">Cluster east</h1>' in html
    power_card = card(html)
    assert '<span class="badge ok">Within budget</span>' in power_card
    assert "PowerWithinBudget=True (WithinBudget)" in power_card and "3 GPUs capped" in power_card
    text = re.sub(r"<[^>]+>", "", power_card)
    text = re.sub(r"\s+", " ", text)
    assert "Budget10,000 W" in text
    assert "Draw9,120 W (91% of budget)" in text or "Draw9,121 W (91% of budget)" in text
    assert "Headroom880 W" in text
    assert "Capped GPUs3 of 16, 1,080 W below their board limits in all" in text
    assert "Stale nodesnode-b" in text and "counted at their power limits" in text
    assert "Policypolca" in text and "3 minutes ago" in text
    assert "Shortfall" not in text
    # Lowest priority first: what the controller caps first is on top.
    assert re.findall(r'data-capped="([^"]+)"', power_card) == ["node-a/7", "node-a/3", "node-a/5"]
    row = power_card[power_card.index('data-capped="node-a/3"') :]
    row = row[: row.index("</tr>")]
    assert '<a href="/nodes/node-a/">node-a</a>' in row
    assert '<a href="/jobs/pretrain/">TrainingJob/pretrain</a>' in row
    assert "420 W" in row and "700 W" in row and "280 W" in row and "(at 60%)" in row and "batch (10)" in row
    assert '<a href="/deployments/chat/">Deployment/chat</a>' in power_card and "normal (50)" in power_card
    assert '<span class="muted">idle</span>' in power_card
    # Polled: the card every 5 s, the chart every 30 s, with the page's CSRF header on every request.
    assert 'hx-get="/clusters/east/power" hx-trigger="every 5s' in html
    assert 'hx-get="/clusters/east/power/chart?window=1h" hx-trigger="every 30s' in html
    assert "X-CSRFToken" in html


def test_over_budget_and_unmeetable_say_so_with_the_shortfall(viewer_client):
    status = power(drawWatts=10450.0, headroomWatts=-450.0, shortfallWatts=450.0, staleNodes=[])
    condition = {
        "type": "PowerWithinBudget",
        "status": "False",
        "reason": "BudgetUnmeetable",
        "message": "short by 450 W even with every GPU at its minimum",
    }
    make_cluster(status={"power": status, "conditions": [condition]})
    power_card = viewer_client.get("/clusters/east/power").content.decode()
    assert "<html" not in power_card  # the fragment alone
    assert '<span class="badge bad">BudgetUnmeetable</span>' in power_card
    assert "short by 450 W even with every GPU at its minimum" in power_card
    assert '<span class="badge bad">over budget by 450 W</span>' in power_card
    assert '<span class="badge bad">450 W</span>' in power_card  # the shortfall
    assert "Stale nodes" not in power_card


def test_the_chart_draws_the_clusters_summed_draw_against_the_budget_with_the_cap_events(
    viewer_client, add_node
):
    add_node("node-a", gpus=2, cluster="east")
    add_node("node-b", gpus=2, cluster="east")
    add_node("other", gpus=2, cluster="west")
    cluster = make_cluster(status={"power": power()}, powerBudgetWatts=2000.0)
    start = now().replace(second=0, microsecond=0) - timedelta(minutes=10)
    for step in range(0, 300, 5):
        at = start + timedelta(seconds=step)
        for node, watts in (("node-a", 400.0), ("node-b", 300.0), ("other", 9000.0)):
            telemetry.record(node, {"devices": [{"index": i, "powerW": watts} for i in range(2)]}, at=at)
    events.record(cluster, "PowerCapsApplied", "draw 1,950 W > 95% of 2,000 W: capped <2> GPUs")
    events.record(cluster, "Scheduled", "not a power event")
    html = viewer_client.get("/clusters/east/power/chart").content.decode()
    chart = html[html.index('<svg class="chart"') : html.index("</svg>")]
    assert "Power draw vs budget (W)" in chart
    lines = re.findall(r'<polyline class="series" stroke="([^"]+)" points="([^"]+)"', chart)
    assert len(lines) == 2
    (_, draw), (color, budget) = lines
    assert color == BUDGET_COLOR and len(budget.split()) == 2
    ys = {float(p.split(",")[1]) for p in draw.split()}
    # 1,400 W, flat: five minutes of 30 s buckets, and the last readings held for a minute after
    assert len(draw.split()) == 10 + 2 and len(ys) == 1
    # The budget (2,000 W) plots above the draw (1,400 W): smaller y is higher on screen.
    assert all(float(p.split(",")[1]) < min(ys) for p in budget.split())
    marks = re.findall(r'<line class="mark"[^>]*><title>([^<]+)</title>', chart)
    assert marks == ["PowerCapsApplied: draw 1,950 W &gt; 95% of 2,000 W: capped &lt;2&gt; GPUs"]
    assert "2.1k" in chart  # the axis reaches past the budget
    assert "peak 1,400 W" in html and "against its budget of 2,000 W" in html
    assert '<span><i style="background:#b91c1c"></i>budget</span>' in html


def test_the_chart_window_is_one_of_three_and_anything_else_is_the_hour(viewer_client):
    make_cluster()
    page = viewer_client.get("/clusters/east/?window=24h").content.decode()
    assert 'hx-get="/clusters/east/power/chart?window=24h"' in page and "<b>24h</b>" in page
    assert '<a href="?window=1h">1h</a>' in page
    odd = viewer_client.get("/clusters/east/power/chart", {"window": "<script>"})
    assert odd.status_code == 200 and b"<script>" not in odd.content
    page = viewer_client.get("/clusters/east/", {"window": "9999h"}).content.decode()
    assert "<b>1h</b>" in page
    assert "Power draw vs budget (W): no data for this period yet." in page


def test_without_a_status_the_card_says_what_is_missing(viewer_client):
    make_cluster("waiting")
    make_cluster("unwatched", policies={})
    make_cluster("unbudgeted", powerBudgetWatts=None, policies={})
    waiting = viewer_client.get("/clusters/waiting/power").content.decode()
    assert (
        "10,000 W" in waiting and "the powercap controller (policy <code>polca</code>) writes it" in waiting
    )
    unwatched = viewer_client.get("/clusters/unwatched/power").content.decode()
    assert "so nothing watches this budget" in unwatched
    unbudgeted = viewer_client.get("/clusters/unbudgeted/").content.decode()
    assert 'id="power-none"' in unbudgeted and "spec.powerBudgetWatts" in unbudgeted


def test_status_text_is_escaped_and_bad_names_are_shown_not_linked(viewer_client):
    hostile = power(
        policy="<b>polca</b>",
        staleNodes=["<script>alert(1)</script>"],
        capped=[capped("<img src=x onerror=alert(1)>", 0, 400.0, "TrainingJob/<svg onload=alert(1)>", 10)],
        cappedGpus=1,
    )
    condition = {
        **CONDITION_OK,
        "status": "False",
        "reason": "<i>OverBudget</i>",
        "message": "<script>x()</script>",
    }
    make_cluster(status={"power": hostile, "conditions": [condition]})
    html = viewer_client.get("/clusters/east/").content.decode()
    for raw in (
        "<script>alert(1)</script>",
        "<img src=x",
        "<svg onload",
        "<script>x()</script>",
        "<i>OverBudget",
    ):
        assert raw not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "/nodes/%3Cimg" not in html and "/jobs/%3Csvg" not in html  # shown as text, never a link


def test_long_lists_are_cut_to_what_a_page_can_hold(viewer_client):
    many = [capped(f"node-{n:03d}", n % 8, 400.0, None, 10) for n in range(100)]
    stale = [f"node-{n:03d}" for n in range(50)]
    make_cluster(status={"power": power(capped=many, cappedGpus=100, staleNodes=stale)})
    power_card = viewer_client.get("/clusters/east/power").content.decode()
    assert power_card.count("data-capped=") == MAX_CAPPED_ROWS
    assert "and 36 more capped GPUs not listed" in power_card
    assert power_card.count('<span class="badge warn">node-') == 32 and "and 18 more" in power_card


def test_a_missing_cluster_is_a_404_page_and_its_polled_parts_stop_polling(viewer_client):
    response = viewer_client.get("/clusters/nowhere/")
    assert response.status_code == 404 and b"No Cluster named nowhere" in response.content
    assert viewer_client.get("/clusters/nowhere/power").status_code == 286
    assert viewer_client.get("/clusters/nowhere/power/chart").status_code == 286


def test_the_pages_need_a_viewer_and_take_no_posts(db):
    make_cluster()
    assert Client().get("/clusters/east/").status_code == 302  # to the login page
    norole = User.objects.create_user("norole", password="x" * 20)
    client = Client()
    client.force_login(norole)
    assert client.get("/clusters/east/power").status_code == 403
    viewer = logged_in("viewer2", "viewer")
    assert viewer.post("/clusters/east/power").status_code == 405
    enforcing = logged_in("viewer3", "viewer", enforce_csrf_checks=True)
    assert enforcing.post("/clusters/east/power/chart").status_code == 403  # no CSRF token


def test_the_card_and_chart_read_a_fixed_number_of_queries(
    viewer_client, add_node, django_assert_max_num_queries
):
    for n in range(12):
        add_node(f"node-{n}", gpus=2, cluster="east")
    make_cluster(status={"power": power()})
    with django_assert_max_num_queries(8):
        assert viewer_client.get("/clusters/east/power").status_code == 200
    with django_assert_max_num_queries(12):
        assert viewer_client.get("/clusters/east/power/chart").status_code == 200


def test_the_overview_links_the_cluster_page_and_shows_the_power_verdict(viewer_client, add_node):
    add_node("node-a", cluster="east")
    make_cluster(status={"power": power(), "conditions": [CONDITION_OK]})
    html = viewer_client.get("/").content.decode()
    assert '<a href="/clusters/east/">Cluster east</a>' in html
    assert '<span class="badge ok">within budget</span> 3 GPUs capped' in html
    assert '<a href="/clusters/east/">Power →</a>' in html
    add_node("node-z", cluster="undeclared")
    live = viewer_client.get("/overview/live").content.decode()
    assert "<h2>Cluster undeclared" in live and "/clusters/undeclared/" not in live
