"""The Deployments pages: list, detail, live partials, and the operator's scale/edit/delete."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
import yaml
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils.html import escape

from common.timeutil import now
from controlplane import store
from controlplane.apply import apply
from controlplane.controllers import owners
from controlplane.models import AuditEntry, Resource
from controlplane.telemetry import store as telemetry
from dashboard.deployments import editable_yaml
from tests.conftest import deployment, logged_in
from tests.test_sizing_controller import CLUSTER, sized

pytestmark = pytest.mark.django_db

LIST = "/deployments/"


def detail(name: str, suffix: str = "") -> str:
    return f"/deployments/{name}/{suffix}"


# --- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def op(db) -> Client:
    return logged_in("op", "operator")


@pytest.fixture
def viewer_client(db) -> Client:
    return logged_in("watcher", "viewer")


def create(*documents: dict[str, Any]) -> None:
    apply(list(documents), actor="test")


def serve(name: str, endpoint_host: str = "10.0.0.5") -> Resource:
    """Reconcile ``name``, then report every Workload Ready with an endpoint, as agents do."""
    owners.reconcile("Deployment", name)
    for index, workload in enumerate(
        Resource.objects.filter(kind="Workload", owner_ref=f"Deployment/{name}")
    ):
        status = {
            "phase": "Running",
            "endpoint": f"http://{endpoint_host}:{8000 + index}",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": "serving"}],
        }
        store.update_status(workload, status)
    owners.reconcile("Deployment", name)
    return store.get("Deployment", name)


def row_of(html: str, name: str) -> str:
    found = re.search(rf'<tr data-deployment="{re.escape(name)}".*?</tr>', html, re.S)
    assert found, f"no row for {name}"
    return found.group(0)


def replicas_text(html: str) -> str:
    found = re.search(r'class="replicas"[^>]*>([^<]*)<', html)
    assert found, "no .replicas element"
    return found.group(1).strip()


def report(node: str, metrics: dict[str, dict[str, float]], seconds_ago: float = 0) -> None:
    telemetry.record(node, {"devices": [], "workloads": metrics}, at=now() - timedelta(seconds=seconds_ago))


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


# --- the list ----------------------------------------------------------------------------


def test_list_shows_replicas_placement_endpoints_and_conditions(op, add_node):
    add_node("gpu-a", gpus=4)
    create(deployment("chat-small", replicas=2, slo={"ttftMs": 250}))
    serve("chat-small")

    response = op.get(LIST)
    assert response.status_code == 200
    row = row_of(response.content.decode(), "chat-small")
    assert replicas_text(row) == "2/2"
    assert "gpu-a" in row and "0,1" in row and "serve" in row
    assert "http://10.0.0.5:8000" in row and "http://10.0.0.5:8001" in row
    assert 'badge ok">Ready' in row and 'badge ok">Scheduled' in row
    assert "target ≤ 250 ms" in row
    assert "hx-trigger=\"every 5s [document.visibilityState === 'visible']\"" in response.content.decode()


def test_list_compares_the_slo_with_the_latency_replicas_report(op, add_node):
    add_node("gpu-a", gpus=4)
    create(deployment("chat-small", replicas=2, slo={"ttftMs": 250, "tpotMs": 20}))
    serve("chat-small")
    row = row_of(op.get(LIST).content.decode(), "chat-small")
    assert row.count(">—</span>") == 2  # nothing measured yet

    report(
        "gpu-a",
        {
            "chat-small-serve-0": {"ttftSeconds.p99": 0.18, "tpotSeconds.p99": 0.03, "requestsTotal": 5},
            "chat-small-serve-1": {"ttftSeconds.p99": 0.12, "tpotSeconds.p99": 0.01},
        },
    )
    row = row_of(op.get(LIST).content.decode(), "chat-small")
    assert re.search(r'data-metric="ttft">TTFT\s*<span class="measured badge ok"[^>]*>180 ms', row)
    assert re.search(r'data-metric="tpot">TPOT\s*<span class="measured badge bad"[^>]*>30 ms', row)


def test_list_empty_state_says_what_to_do(op):
    html = op.get(LIST).content.decode()
    assert "No deployments yet — apply one on the" in html
    assert "<code>flotilla apply -f examples/</code>" in html


def test_list_filters_by_name_and_condition(op, add_node):
    add_node("gpu-a", gpus=1)
    create(deployment("chat-small", replicas=1), deployment("chat-large", replicas=1), deployment("embed", 1))
    serve("chat-small")  # takes the only GPU
    owners.reconcile("Deployment", "chat-large")  # nothing left: Unschedulable
    owners.reconcile("Deployment", "embed")

    names = re.compile(r'data-deployment="([^"]+)"')
    assert names.findall(op.get(LIST, {"name": "chat"}).content.decode()) == ["chat-large", "chat-small"]
    assert names.findall(op.get(LIST, {"condition": "Ready"}).content.decode()) == ["chat-small"]
    unschedulable = op.get(LIST, {"condition": "Unschedulable", "name": "chat"}).content.decode()
    assert names.findall(unschedulable) == ["chat-large"]
    assert "No deployment matches these filters" in op.get(LIST, {"name": "nope"}).content.decode()


def test_list_paginates_fifty_a_page(op):
    create(*[deployment(f"d-{i:03d}", replicas=0) for i in range(51)])
    first = op.get(LIST).content.decode()
    assert first.count("data-deployment=") == 50
    assert "1–50 of 51" in first and "page=2" in first
    second = op.get(LIST, {"page": 2}).content.decode()
    assert re.findall(r'data-deployment="([^"]+)"', second) == ["d-050"]


def test_live_partial_is_the_table_alone(op, add_node):
    add_node("gpu-a", gpus=2)
    create(deployment("chat-small", replicas=1))
    serve("chat-small")
    response = op.get("/deployments/live", {"name": "chat"})
    html = response.content.decode()
    assert response.status_code == 200 and "<html" not in html
    assert replicas_text(row_of(html, "chat-small")) == "1/1"


def _list_queries(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_list_query_count_does_not_grow_with_the_number_of_deployments(op, add_node):
    for n in range(3):
        add_node(f"gpu-{n}", gpus=8)

    def add(names: list[str]) -> None:
        create(*[deployment(name, replicas=2) for name in names])
        for name in names:
            serve(name)
            for workload in Resource.objects.filter(owner_ref=f"Deployment/{name}"):
                report(workload.node_name, {workload.name: {"ttftSeconds.p99": 0.1}}, seconds_ago=len(name))

    add(["a-1", "a-2"])
    few = {url: _list_queries(op, url) for url in (LIST, "/deployments/live", LIST + "?condition=Ready")}
    add([f"b-{i}" for i in range(8)])
    many = {url: _list_queries(op, url) for url in few}
    assert many == few


# --- the detail page ----------------------------------------------------------------------


def test_detail_shows_status_spec_workloads_events_and_charts(op, add_node):
    add_node("gpu-a", gpus=4)
    create(deployment("chat-small", replicas=2, slo={"ttftMs": 250}))
    serve("chat-small")

    response = op.get(detail("chat-small"))
    assert response.status_code == 200
    html = response.content.decode()
    assert replicas_text(html) == "2/2"
    assert 'hx-get="/deployments/chat-small/live"' in html
    for text in ("chat-small-serve-0", "chat-small-serve-1", "gpu-a", "Running", "http://10.0.0.5:8000"):
        assert text in html
    assert 'data-condition="Ready"' in html and "AllReplicasReady" in html
    assert "builtin:tiny-llama" in html and "ttftMs: 250" in html  # the spec as YAML
    assert "Scheduled" in html and "placed 2 replicas" in html  # an event
    # No telemetry yet: every chart says so instead of drawing empty axes.
    assert html.count("no data for this period yet") == 4
    assert "no prefix-cache figures yet" in html
    assert 'id="schedule-plan"' not in html  # binpack sizes nothing: no plan section


def test_detail_charts_read_the_workloads_telemetry(op, add_node):
    add_node("gpu-a", gpus=2)
    create(deployment("chat-small", replicas=1))
    serve("chat-small")
    for step in range(6):
        report(
            "gpu-a",
            {
                "chat-small-serve-0": {
                    "requestsTotal": 10.0 * step,
                    "ttftSeconds.p50": 0.2,
                    "tpotSeconds.p50": 0.02,
                    "kvBlocksUsed": 16,
                    "kvBlocksFree": 48,
                },
                "someone-else-serve-0": {"requestsTotal": 1e6 * step},
            },
            seconds_ago=600 - 100 * step,
        )
    html = op.get(detail("chat-small")).content.decode()
    # These replicas report no prefix cache: only that chart (tests/test_dashboard_cache.py) is empty.
    assert html.count("no data for this period yet") == 1
    assert "Prefix-cache hit rate (%): no data for this period yet" in html
    assert 'aria-label="Request rate (req/s)"' in html
    assert 'aria-label="Latency (ms)"' in html and ">TTFT<" in html and ">TPOT<" in html
    assert 'aria-label="KV cache in use (%)"' in html


def test_detail_live_partial_and_its_end(op, add_node):
    add_node("gpu-a", gpus=2)
    create(deployment("chat-small", replicas=1))
    serve("chat-small")
    response = op.get(detail("chat-small", "live"))
    assert response.status_code == 200 and "<html" not in response.content.decode()
    assert replicas_text(response.content.decode()) == "1/1"
    assert op.get(detail("missing")).status_code == 404
    assert op.get(detail("missing", "live")).status_code == 286  # htmx stops polling


# --- the sizing plan (status.plan) -----------------------------------------------------------


def plan_section(html: str) -> str:
    found = re.search(r'<section class="schedule-plan".*?</section>', html, re.S)
    assert found, "no plan section"
    return found.group(0)


def figure(section: str, name: str) -> str:
    """The text of one figure (cost, ttft-p90, tpot-p90, attainment), tags stripped."""
    found = re.search(rf'<dd data-figure="{name}">(.*?)</dd>', section, re.S)
    assert found, f"no figure {name}"
    return " ".join(re.sub(r"<[^>]+>", " ", found.group(1)).split())


def test_detail_shows_the_melange_plan_with_its_figures_against_the_slo(op, add_node):
    add_node("h100-node", gpus=4, gpu_type="H100")
    add_node("a100-node", gpus=4, gpu_type="A100-80GB", memory_mib=81920)
    create(CLUSTER, sized(rate=70.0))
    owners.reconcile("Deployment", "chat")
    plan = store.get("Deployment", "chat").status["plan"]

    section = plan_section(op.get(detail("chat")).content.decode())
    assert 'data-policy="melange"' in section and 'data-served="all"' in section
    assert "All traffic served" in section and "for generation 1" in section
    for gpu_type, count in plan["replicas"].items():
        row = re.search(rf'<tr data-gpu-type="{re.escape(gpu_type)}">.*?</tr>', section, re.S).group(0)
        assert f'replicas-planned">{count}<' in row
    assert f'total-gpus">{plan["gpus"]}<' in section
    assert figure(section, "cost") == f"${plan['costPerHour']:.2f}/h"  # Cluster prices: no estimate
    predicted = plan["predicted"]
    assert figure(section, "ttft-p90") == f"{predicted['ttftP90Ms']:.0f} ms target ≤ 2000 ms"
    assert figure(section, "tpot-p90") == f"{predicted['tpotP90Ms']:.1f} ms target ≤ 100 ms"
    assert figure(section, "attainment").startswith(f"{predicted['sloAttainment'] * 100:.1f}%")
    assert "goal ≥ 90%" in section
    assert f"over {predicted['simulatedRequests']} requests" in section
    assert escape(plan["notes"][-1]) in section  # "solver: milp (optimal)"


def test_a_partial_mix_says_what_is_missing_and_marks_estimated_prices(op, add_node):
    add_node("a100-node", gpus=1, gpu_type="A100-80GB", memory_mib=81920)
    create(sized(rate=60.0))  # no Cluster: no gpuPrices, so every price is an estimate
    owners.reconcile("Deployment", "chat")
    plan = store.get("Deployment", "chat").status["plan"]
    assert plan["shortfall"]

    section = plan_section(op.get(detail("chat")).content.decode())
    assert 'data-served="partial"' in section and "Partial mix" in section
    assert escape(plan["shortfall"][1:]) in section  # in the plan's own words
    assert "Some figures are estimates" in section
    assert figure(section, "cost") == f"${plan['costPerHour']:.2f}/h estimate"
    row = re.search(r'<tr data-gpu-type="A100-80GB">.*?</tr>', section, re.S).group(0)
    assert "estimate</span>" in row and "using the estimate" in row  # the note is its title
    assert '<li class="estimate"><span class="badge warn">estimate</span> A100-80GB: no price' in section


def test_a_distserve_plan_shows_its_roles_and_that_nothing_runs(op, add_node):
    add_node("h100-node", gpus=8, gpu_type="H100")
    document = sized(disaggregation="auto")
    document["spec"]["policies"] = {"scheduler": "distserve"}
    create(CLUSTER, document)
    owners.reconcile("Deployment", "chat")
    plan = store.get("Deployment", "chat").status["plan"]

    section = plan_section(op.get(detail("chat")).content.decode())
    assert 'data-policy="distserve"' in section and 'data-served="plan-only"' in section
    assert "RuntimeUnsupported" in section and "Nothing is placed." in section
    assert escape(plan["reason"][1:]) in section  # its first letter capitalised
    for role in ("prefill", "decode"):
        row = re.search(rf'<tr data-role="{role}">.*?</tr>', section, re.S).group(0)
        assert plan["roles"][role]["gpuType"] in row
        assert f'<td class="num">{plan["roles"][role]["instances"]}</td>' in row
    assert f'total-gpus">{plan["gpus"]}<' in section
    assert "Goodput per GPU" in section
    assert 'id="plan-types"' not in section


def test_an_old_plan_with_fields_missing_still_reads(op, add_node):
    add_node("gpu-a", gpus=4)
    create(deployment("chat-small", replicas=1, slo={"ttftMs": 250}))
    owner = serve("chat-small")
    store.update_status(owner, {**owner.status, "plan": {"policy": "melange", "replicas": {"H100": 2}}})

    html = op.get(detail("chat-small")).content.decode()
    section = plan_section(html)
    assert "All traffic served" in section and "for generation" not in section
    assert 'replicas-planned">2<' in section and 'total-gpus">2<' in section
    assert figure(section, "cost") == "not in this plan"
    assert figure(section, "ttft-p90") == "— target ≤ 250 ms"
    assert figure(section, "tpot-p90") == "— no target"
    assert figure(section, "attainment").startswith("—")
    assert "Some figures are estimates" not in section and "plan-notes" not in section
    assert section in op.get(detail("chat-small", "live")).content.decode()  # polled with the status


def test_the_plan_is_escaped_and_a_stale_one_says_so(op, add_node):
    add_node("gpu-a", gpus=4)
    create(deployment("chat-small", replicas=1))
    owner = serve("chat-small")
    hostile = {
        "policy": "<b>melange</b>",
        "replicas": {"<i>H100</i>": 1},
        "gpusPerReplica": 2,
        "costPerHour": 4.5,
        "predicted": {"ttftP90Ms": None, "sloAttainment": 0.5},
        "shortfall": "serves 1 of 2 req/s; <script>alert(1)</script>",
        "notes": ["<i>H100</i>: estimated <profile>"],
        "generation": 0,
    }
    store.update_status(owner, {**owner.status, "plan": hostile})

    section = plan_section(op.get(detail("chat-small")).content.decode())
    assert "<script>" not in section and "<b>melange" not in section and "<i>H100" not in section
    assert escape("<script>alert(1)</script>") in section and escape("<i>H100</i>") in section
    assert "made for generation 0; the spec is now at generation 1" in section
    assert figure(section, "ttft-p90") == "unbounded no target"  # rejected requests: no finite P90
    assert '<span class="badge bad">50.0%</span>' in section
    assert "GPUs (2 a replica)" in section and 'total-gpus">2<' in section


# --- scale ---------------------------------------------------------------------------------


def test_scale_sets_replicas_bumps_generation_and_is_audited(op, add_node):
    add_node("gpu-a", gpus=4)
    create(deployment("chat-small", replicas=1))
    before = store.get("Deployment", "chat-small")

    response = op.post(detail("chat-small", "scale"), {"replicas": "3"}, follow=True)
    after = store.get("Deployment", "chat-small")
    assert response.redirect_chain[-1][0] == detail("chat-small")
    assert after.spec["replicas"] == 3 and after.generation == before.generation + 1
    assert any("scaled to 3 replicas" in m for m in messages_of(response))
    entry = AuditEntry.objects.filter(kind="Deployment", name="chat-small").latest("at")
    assert (entry.actor, entry.verb, entry.summary) == ("user/op", "replace", "spec.replicas")


@pytest.mark.parametrize("value", ["-1", "abc", "5000", ""])
def test_scale_refuses_bad_values_with_the_field_and_writes_nothing(op, value):
    create(deployment("chat-small", replicas=1))
    before = store.get("Deployment", "chat-small")
    response = op.post(detail("chat-small", "scale"), {"replicas": value}, follow=True)
    after = store.get("Deployment", "chat-small")
    assert (after.spec, after.generation, after.resource_version) == (
        before.spec,
        before.generation,
        before.resource_version,
    )
    (message,) = messages_of(response)
    assert message.startswith("Not scaled:") and "spec.replicas" in message and "fix:" in message
    assert not AuditEntry.objects.filter(actor="user/op").exists()


# --- edit ----------------------------------------------------------------------------------


def edited(name: str = "chat-small", **spec: Any) -> str:
    """The editor's text for ``name`` with some spec fields changed."""
    document = yaml.safe_load(editable_yaml(store.get("Deployment", name)))
    document["spec"].update(spec)
    return yaml.safe_dump(document, sort_keys=False)


def test_edit_page_holds_the_current_document(op):
    create(deployment("chat-small", replicas=1))
    response = op.get(detail("chat-small", "edit"))
    assert response.status_code == 200
    document = yaml.safe_load(response.context["text"])
    resource = store.get("Deployment", "chat-small")
    assert document["spec"] == resource.spec
    assert document["metadata"]["resourceVersion"] == str(resource.resource_version)
    assert "Preview changes" in response.content.decode()


def test_edit_preview_shows_the_diff_and_writes_nothing(op):
    create(deployment("chat-small", replicas=1))
    before = store.get("Deployment", "chat-small")
    text = edited(replicas=4, slo={"ttftMs": 300})

    response = op.post(detail("chat-small", "edit"), {"yaml": text, "action": "preview"})
    html = response.content.decode()
    assert response.status_code == 200
    assert 'id="plan"' in html and 'data-action="configured"' in html
    assert 'data-path="spec.replicas"' in html and "− 1" in html and "+ 4" in html
    assert 'data-path="spec.slo.ttftMs"' in html and "+ 300.0" in html
    assert f'<input type="hidden" name="yaml" value="{escape(text)}">' in html
    assert ">Save</button>" in html
    after = store.get("Deployment", "chat-small")
    assert (after.spec, after.generation, after.resource_version) == (
        before.spec,
        before.generation,
        before.resource_version,
    )


def test_edit_save_writes_exactly_the_previewed_text(op):
    create(deployment("chat-small", replicas=1))
    before = store.get("Deployment", "chat-small")
    text = edited(replicas=4)

    response = op.post(detail("chat-small", "edit"), {"yaml": text, "action": "save"}, follow=True)
    after = store.get("Deployment", "chat-small")
    assert response.redirect_chain[-1][0] == detail("chat-small")
    assert after.spec["replicas"] == 4 and after.generation == before.generation + 1
    assert any("configured" in m for m in messages_of(response))
    assert AuditEntry.objects.filter(actor="user/op", kind="Deployment", name="chat-small").exists()


def test_edit_preview_of_an_unchanged_document_offers_no_save(op):
    create(deployment("chat-small", replicas=1))
    response = op.post(detail("chat-small", "edit"), {"yaml": edited(), "action": "preview"})
    html = response.content.decode()
    assert 'data-action="unchanged"' in html and "No changes to save" in html and ">Save</button>" not in html


@pytest.mark.parametrize(
    ("text", "status", "expected"),
    [
        ("spec: [\n", 422, "not valid YAML"),
        (None, 422, "unknown field &#x27;replica&#x27;"),
        ("kind: Deployment\nmetadata: {name: other}\n", 422, "cannot be renamed"),
        ("apiVersion: flotilla.dev/v1\nkind: Policy\nmetadata: {name: chat-small}\n", 422, "this page edits"),
    ],
)
def test_edit_errors_name_the_field_and_fix_and_write_nothing(op, text, status, expected):
    create(deployment("chat-small", replicas=1))
    before = store.get("Deployment", "chat-small")
    if text is None:
        document = yaml.safe_load(edited())
        document["spec"]["replica"] = 3
        text = yaml.safe_dump(document)
    for action in ("preview", "save"):
        response = op.post(detail("chat-small", "edit"), {"yaml": text, "action": action})
        html = response.content.decode()
        assert response.status_code == status
        assert 'id="problems"' in html and expected in html and "nothing was written" in html
        assert response.context["text"] == text  # the operator's text is kept to fix
    after = store.get("Deployment", "chat-small")
    assert (after.spec, after.resource_version) == (before.spec, before.resource_version)
    assert not AuditEntry.objects.filter(actor="user/op").exists()


def test_edit_field_errors_list_document_field_and_fix(op):
    create(deployment("chat-small", replicas=1))
    document = yaml.safe_load(edited())
    document["spec"]["replicas"] = -2
    response = op.post(detail("chat-small", "edit"), {"yaml": yaml.safe_dump(document), "action": "preview"})
    problem = response.context["error"]["details"][0]
    assert problem["document"] == 0 and problem["field"] == "spec.replicas" and problem["fix"]
    assert 'data-field="spec.replicas"' in response.content.decode()


def test_edit_save_of_a_stale_text_is_refused(op):
    create(deployment("chat-small", replicas=1))
    text = edited(replicas=4)
    op.post(detail("chat-small", "scale"), {"replicas": "2"})  # someone else changed it meanwhile

    preview = op.post(detail("chat-small", "edit"), {"yaml": text, "action": "preview"})
    assert 'id="stale"' in preview.content.decode()
    response = op.post(detail("chat-small", "edit"), {"yaml": text, "action": "save"})
    assert response.status_code == 409 and "was modified" in response.content.decode()
    assert store.get("Deployment", "chat-small").spec["replicas"] == 2


# --- delete --------------------------------------------------------------------------------


def test_delete_needs_the_name_typed_to_confirm(op, add_node):
    add_node("gpu-a", gpus=2)
    create(deployment("chat-small", replicas=1))
    serve("chat-small")

    for confirm in ("", "chat", "other"):
        response = op.post(detail("chat-small", "delete"), {"confirm": confirm}, follow=True)
        assert any(m.startswith("Not deleted: type the name") for m in messages_of(response))
        assert store.get("Deployment", "chat-small").deletion_timestamp is None
    assert not AuditEntry.objects.filter(verb="delete").exists()

    response = op.post(detail("chat-small", "delete"), {"confirm": "chat-small"}, follow=True)
    assert response.redirect_chain[-1][0] == LIST
    assert any("is being deleted" in m for m in messages_of(response))
    assert store.get("Deployment", "chat-small").deletion_timestamp is not None  # Workloads go first
    entry = AuditEntry.objects.get(verb="delete")
    assert (entry.actor, entry.kind, entry.name) == ("user/op", "Deployment", "chat-small")
    assert 'badge bad">Deleting' in row_of(response.content.decode(), "chat-small")


def test_delete_form_is_behind_a_confirmation_step(op):
    create(deployment("chat-small", replicas=1))
    html = op.get(detail("chat-small")).content.decode()
    assert '<details class="card danger-zone" id="delete">' in html
    assert 'name="confirm" required' in html


# --- who may do what -----------------------------------------------------------------------


ACTIONS = [
    ("scale", {"replicas": "5"}),
    ("edit", {"yaml": "", "action": "save"}),
    ("delete", {"confirm": "chat-small"}),
]


def test_a_viewer_sees_no_controls_and_every_action_is_forbidden(viewer_client):
    create(deployment("chat-small", replicas=1))
    before = store.get("Deployment", "chat-small")
    text = yaml.safe_dump({**store.to_document(before), "spec": {**before.spec, "replicas": 5}})

    page = viewer_client.get(detail("chat-small")).content.decode()
    assert page.count("csrfmiddlewaretoken") == 1  # the log-out form only
    for control in (">Scale</button>", "Edit spec", 'name="confirm"', ">Delete</button>"):
        assert control not in page
    listing = viewer_client.get(LIST).content.decode()
    assert "Apply YAML" not in listing and 'href="/apply/"' not in listing.split("<main>")[0]

    for action, data in ACTIONS:
        if action == "edit":
            data = {**data, "yaml": text}
        assert viewer_client.post(detail("chat-small", action), data).status_code == 403
    assert viewer_client.get(detail("chat-small", "edit")).status_code == 403
    after = store.get("Deployment", "chat-small")
    assert (after.spec, after.resource_version, after.deletion_timestamp) == (
        before.spec,
        before.resource_version,
        None,
    )
    assert not AuditEntry.objects.exclude(actor="test").exists()


def test_an_operator_sees_the_controls(op):
    create(deployment("chat-small", replicas=1))
    page = op.get(detail("chat-small")).content.decode()
    assert ">Scale</button>" in page and 'name="replicas"' in page and "Edit spec" in page
    assert ">Delete</button>" in page


@pytest.mark.parametrize(("action", "data"), ACTIONS)
def test_a_post_without_the_csrf_token_is_refused(action, data):
    create(deployment("chat-small", replicas=1))
    before = store.get("Deployment", "chat-small")
    client = logged_in("strict", "operator", enforce_csrf_checks=True)
    assert client.post(detail("chat-small", action), data).status_code == 403
    after = store.get("Deployment", "chat-small")
    assert (after.resource_version, after.deletion_timestamp) == (before.resource_version, None)


def test_actions_are_post_only(op):
    create(deployment("chat-small", replicas=1))
    assert op.get(detail("chat-small", "scale")).status_code == 405
    assert op.get(detail("chat-small", "delete")).status_code == 405
    assert op.post(detail("missing", "scale"), {"replicas": "1"}).status_code == 404


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", LIST),
        ("get", "/deployments/live"),
        ("get", detail("chat-small")),
        ("get", detail("chat-small", "live")),
        ("get", detail("chat-small", "edit")),
        ("post", detail("chat-small", "scale")),
        ("post", detail("chat-small", "delete")),
    ],
)
def test_anonymous_users_go_to_the_login_page(client, method, url):
    create(deployment("chat-small", replicas=1))
    response = getattr(client, method)(url)
    assert response.status_code == 302 and response["Location"].startswith("/login/?next=")
    assert store.get("Deployment", "chat-small").deletion_timestamp is None
