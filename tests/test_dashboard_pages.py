"""The dashboard's Training jobs, Policies & plugins, Events and Audit log pages."""

from __future__ import annotations

import io
import re
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client

from common.timeutil import now
from controlplane import logs_api, store
from controlplane.apply import apply
from controlplane.controllers import owners
from controlplane.models import AuditEntry, Event, Resource
from controlplane.telemetry import store as telemetry
from tests.conftest import deployment, logged_in

pytestmark = pytest.mark.django_db

API_VERSION = "flotilla.dev/v1"


# --- fixtures and helpers -----------------------------------------------------------


@pytest.fixture
def viewer_client() -> Client:
    return logged_in("viewer1", "viewer")


@pytest.fixture
def admin_client() -> Client:
    return logged_in("admin1", "admin")


def training_job(name: str = "pretrain", **spec: Any) -> dict[str, Any]:
    body = {"model": {"source": "builtin:tiny-llama"}, "data": {"source": "builtin:synthetic"}, "steps": 100}
    body.update(spec)
    return {"apiVersion": API_VERSION, "kind": "TrainingJob", "metadata": {"name": name}, "spec": body}


def policy(name: str, plugin: str = "binpack", **params: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Policy",
        "metadata": {"name": name},
        "spec": {"type": "scheduler", "plugin": plugin, "params": params},
    }


def start_job(name: str = "pretrain", **spec: Any) -> Resource:
    """Apply a job and let the controller place its Workload."""
    apply([training_job(name, **spec)], actor="test")
    owners.reconcile("TrainingJob", name)
    return store.get("TrainingJob", name)


def report(job: str, progress: dict[str, Any], phase: str = "Running") -> Resource:
    """As the agent does: the Workload's status with progress, then the controller's pass."""
    workload = Resource.objects.get(kind="Workload", owner_ref=f"TrainingJob/{job}")
    ready = {"type": "Ready", "status": "True", "reason": "Training", "message": ""}
    store.update_status(
        workload, {"phase": phase, "restarts": 0, "conditions": [ready], "progress": progress}
    )
    owners.reconcile("TrainingJob", job)
    return workload


def progress_line(step: int, steps: int, loss: float) -> str:
    """The runtime's own log line, so a change of its format breaks this test, not the page."""
    from agents.runtimes.train.progress import Reporter

    err = io.StringIO()
    reporter = Reporter(steps=steps, tokens_per_step=512, out=io.StringIO(), err=err)
    reporter.progress(step, loss)
    return err.getvalue()


def rows(html: str, attribute: str) -> list[str]:
    return re.findall(rf'{attribute}="([^"]+)"', html)


def row_of(html: str, attribute: str, value: str) -> str:
    """The markup of the table row marked ``attribute="value"``."""
    start = html.index(f'{attribute}="{value}"')
    return html[start : html.index("</tr>", start)]


def page_of(response: Any) -> str:
    assert response.status_code in (200, 400), response.status_code
    return response.content.decode()


# --- access --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["/jobs/", "/jobs/live", "/jobs/x/", "/jobs/x/live", "/jobs/x/loss", "/policies/", "/events/", "/audit/"],
)
def test_anonymous_users_are_sent_to_the_login_page(client: Client, db: Any, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_the_audit_log_needs_the_admin_role_as_the_api_does(viewer_client: Client) -> None:
    response = viewer_client.get("/audit/")
    assert response.status_code == 403
    events_page = page_of(viewer_client.get("/events/"))
    assert 'href="/audit/"' not in events_page
    assert "for admins" in events_page


# --- training jobs -------------------------------------------------------------------


def test_jobs_empty_state_says_how_to_start_one(viewer_client: Client) -> None:
    html = page_of(viewer_client.get("/jobs/"))
    assert "No training jobs yet" in html
    assert "flotilla apply -f" in html
    assert "kind: TrainingJob" in html


def test_jobs_list_shows_progress_rate_eta_and_conditions(viewer_client: Client, add_node: Any) -> None:
    add_node("gpu-a", gpus=2)
    start_job("pretrain", batchSize=8, runtime={"seqLen": 64})
    # 512 tokens a step at 1024 tokens/s: the 50 steps left take 25 s.
    report("pretrain", {"step": 50, "steps": 100, "loss": 2.5, "tokensPerSecond": 1024.0, "etaSeconds": 99})
    html = page_of(viewer_client.get("/jobs/"))
    assert rows(html, "data-job") == ["pretrain"]
    row = row_of(html, "data-job", "pretrain")
    assert "step 50 / 100" in row
    assert 'style="width:50.0%"' in row
    assert "2.5000" in row and "1024" in row
    assert ">25s<" in row
    assert "Training" in row and "Scheduled" in row


def test_eta_falls_back_to_the_runtimes_estimate_without_seq_len(
    viewer_client: Client, add_node: Any
) -> None:
    add_node("gpu-a", gpus=2)
    start_job("pretrain")
    report("pretrain", {"step": 10, "steps": 100, "loss": 3.0, "tokensPerSecond": 500.0, "etaSeconds": 125})
    html = page_of(viewer_client.get("/jobs/"))
    assert ">2m 05s<" in html
    assert "the runtime's estimate" in html


def test_an_unschedulable_job_says_so(viewer_client: Client) -> None:
    start_job("nowhere")  # no nodes at all
    html = page_of(viewer_client.get("/jobs/"))
    assert "Unschedulable" in html
    assert 'data-job="nowhere"' in html


def test_job_detail_shows_progress_workloads_conditions_and_loss_curve(
    viewer_client: Client, add_node: Any
) -> None:
    add_node("gpu-a", gpus=2)
    start_job("pretrain")
    workload = report("pretrain", {"step": 40, "steps": 100, "loss": 1.9, "tokensPerSecond": 800.0})
    logs_api.append(workload.name, "".join(progress_line(s, 100, 4.0 - s / 20) for s in (1, 10, 20)))
    for seconds, (step, loss) in zip((1, 2), ((30, 2.2), (40, 1.9)), strict=True):
        telemetry.record(
            "gpu-a",
            {"devices": [], "workloads": {workload.name: {"step": step, "loss": loss}}},
            at=now() + timedelta(seconds=seconds),
        )
    html = page_of(viewer_client.get("/jobs/pretrain/"))
    assert "Training job pretrain" in html
    assert 'hx-get="/jobs/pretrain/live"' in html
    assert "every 5s [document.visibilityState === 'visible']" in html
    assert f'data-workload="{workload.name}"' in html
    assert "gpu-a" in html
    start = html.index('<svg class="chart"')
    svg = html[start : html.index("</svg>", start)]
    points = re.search(r'<polyline class="series" stroke="[^"]+" points="([^"]+)"', svg)
    assert points is not None and len(points.group(1).split()) == 5  # steps 1, 10, 20, 30, 40
    assert "5 points from workload logs, telemetry" in html
    assert "This job saves no checkpoints" in html  # no spec.checkpoint.policy, and nothing else said
    assert "CheckpointingNotAvailable" not in html
    assert "Scheduled" in html  # conditions and the Scheduled event


def test_job_detail_without_history_says_there_is_no_data(viewer_client: Client, add_node: Any) -> None:
    add_node("gpu-a", gpus=2)
    start_job("pretrain")
    html = page_of(viewer_client.get("/jobs/pretrain/"))
    assert '<svg class="chart"' not in html
    assert "no data for this period yet" in html
    assert "This job saves no checkpoints" in html


def test_live_fragments_poll_until_the_job_finishes(viewer_client: Client, add_node: Any) -> None:
    add_node("gpu-a", gpus=2)
    start_job("pretrain")
    report("pretrain", {"step": 60, "steps": 100, "loss": 1.2, "tokensPerSecond": 900.0})
    live = viewer_client.get("/jobs/pretrain/live")
    assert live.status_code == 200
    assert "60" in live.content.decode() and "<html" not in live.content.decode()
    assert viewer_client.get("/jobs/pretrain/loss").status_code == 200

    report("pretrain", {"step": 100, "steps": 100, "loss": 0.9}, phase="Succeeded")
    job = store.get("TrainingJob", "pretrain")
    assert job.status["conditions"][-1]["type"] == "Succeeded"
    assert viewer_client.get("/jobs/pretrain/live").status_code == 286  # htmx: stop polling
    assert viewer_client.get("/jobs/pretrain/loss").status_code == 286
    html = page_of(viewer_client.get("/jobs/pretrain/"))
    assert 'hx-get="/jobs/pretrain/live"' not in html
    assert "Succeeded" in html and "done" in html
    listing = page_of(viewer_client.get("/jobs/"))
    assert 'style="width:100.0%"' in listing


def test_job_detail_queries_do_not_grow_with_history(
    viewer_client: Client, add_node: Any, django_assert_max_num_queries: Any
) -> None:
    add_node("gpu-a", gpus=2)
    start_job("pretrain")
    workload = report("pretrain", {"step": 40, "steps": 100, "loss": 1.9})
    for second in range(1, 200):
        telemetry.record(
            "gpu-a",
            {"devices": [], "workloads": {workload.name: {"step": second, "loss": 2.0}}},
            at=now() + timedelta(seconds=second),
        )
    for step in range(1, 30):
        logs_api.append(workload.name, progress_line(step, 100, 3.0))
    make_events(80, kind="TrainingJob", name="pretrain", reason="Rescheduling")
    with django_assert_max_num_queries(12):
        html = page_of(viewer_client.get("/jobs/pretrain/"))
    assert '<svg class="chart"' in html
    assert html.count("Rescheduling") == 50  # the newest 50 events; the events page has the rest


def test_an_unknown_job_is_a_404_page_not_an_error(viewer_client: Client) -> None:
    response = viewer_client.get("/jobs/nope/")
    assert response.status_code == 404
    assert "no TrainingJob named" in response.content.decode()
    assert viewer_client.get("/jobs/nope/live").status_code == 286


def test_jobs_paginate_50_a_page_with_bounded_queries(
    viewer_client: Client, django_assert_max_num_queries: Any
) -> None:
    apply([training_job(f"job-{i:03d}") for i in range(60)], actor="test")
    with django_assert_max_num_queries(8):
        first = page_of(viewer_client.get("/jobs/"))
    assert len(rows(first, "data-job")) == 50
    assert "page 1 / 2" in first
    second = page_of(viewer_client.get("/jobs/live?page=2"))
    assert rows(second, "data-job") == [f"job-{i:03d}" for i in range(50, 60)]


# --- policies and plugins ------------------------------------------------------------


def test_policies_page_lists_a_policy_its_users_and_the_installed_plugins(viewer_client: Client) -> None:
    apply(
        [
            policy("spread-out", spread=True),
            deployment("chat-small", replicas=1, policies={"scheduler": "spread-out"}),
            training_job("pretrain", policies={"scheduler": "spread-out"}),
            deployment("chat-direct", replicas=1, policies={"scheduler": "binpack"}),
        ],
        actor="test",
    )
    html = page_of(viewer_client.get("/policies/"))
    row = row_of(html, "data-policy", "spread-out")
    assert "scheduler" in row and "binpack" in row
    assert "spread: true" in row
    assert "deployment/chat-small" in row and "trainingjob/pretrain" in row
    assert 'data-plugin="binpack"' in html
    assert "<code>spread</code>" in html and "<code>false</code>" in html  # its schema, with the default
    assert "Named directly (with its defaults) by deployment/chat-direct" in html
    assert 'data-plugin="lazy-async"' in html  # the checkpointers are built in


def test_policies_empty_state_and_an_unusable_policy(viewer_client: Client) -> None:
    html = page_of(viewer_client.get("/policies/"))
    assert "No Policies yet" in html
    assert "examples/policies.yaml" in html
    # Written around apply, as if its plugin had been uninstalled since.
    store.create("Policy", "ghost", {"type": "scheduler", "plugin": "vanished", "params": {}})
    html = page_of(viewer_client.get("/policies/"))
    assert 'data-policy="ghost"' in html
    assert "not usable" in html and "no scheduler plugin named &#x27;vanished&#x27;" in html
    assert "nothing — safe to delete" in html


# --- events --------------------------------------------------------------------------


def make_events(
    count: int, kind: str = "Deployment", name: str = "chat", type_: str = "Normal", reason: str = "Scheduled"
) -> None:
    Event.objects.bulk_create(
        Event(kind=kind, name=name, type=type_, reason=reason, message=f"event {i}", source="test")
        for i in range(count)
    )


def test_events_paginate_50_a_page_and_keep_filters_across_pages(
    viewer_client: Client, django_assert_max_num_queries: Any
) -> None:
    make_events(120, kind="Node", name="gpu-a", type_="Warning", reason="NodeNotReady")
    make_events(7, kind="Deployment", name="chat")
    with django_assert_max_num_queries(8):
        first = page_of(viewer_client.get("/events/", {"kind": "node", "type": "Warning"}))
    assert len(rows(first, "data-event")) == 50
    assert "page 1 / 3" in first and "1–50 of 120" in first
    assert 'href="?kind=node&amp;type=Warning&amp;page=2"' in first
    third = page_of(viewer_client.get("/events/", {"kind": "node", "type": "Warning", "page": 3}))
    assert len(rows(third, "data-event")) == 20
    assert 'href="?kind=node&amp;type=Warning&amp;page=2"' in third
    assert "chat" not in third


def test_events_filter_by_kind_name_type_reason_and_time(viewer_client: Client) -> None:
    make_events(3, kind="Node", name="gpu-a", type_="Warning", reason="NodeNotReady")
    make_events(2, kind="Deployment", name="chat", reason="Scheduled")
    make_events(1, kind="TrainingJob", name="pretrain", reason="Completed")
    old = Event.objects.filter(kind="Node")[:2]
    Event.objects.filter(pk__in=[e.pk for e in old]).update(last_seen=now() - timedelta(hours=3))

    def count(**params: str) -> int:
        return len(rows(page_of(viewer_client.get("/events/", params)), "data-event"))

    assert count() == 6
    assert count(kind="tj") == 1  # the CLI's aliases work
    assert count(kind="Deployment", name="chat") == 2
    assert count(name="gpu-a") == 3
    assert count(type="Warning") == 3
    assert count(reason="Completed") == 1
    assert count(since="1h") == 4
    assert count(since="1d") == 6
    assert count(after=(now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")) == 4
    assert count(kind="Node", since="15m") == 1
    html = page_of(viewer_client.get("/events/", {"name": "nothing-here"}))
    assert "No events match these filters" in html


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"kind": "Pod"}, "&#x27;Pod&#x27; is not a kind"),
        ({"type": "Error"}, "Select a valid choice"),
        ({"since": "2y"}, "Select a valid choice"),
        ({"after": "yesterday"}, "Enter a valid date/time"),
        ({"name": "x" * 500}, "at most 63 characters"),
        ({"reason": "r" * 65}, "at most 64 characters"),
        ({"page": "lots"}, None),  # the paginator clamps it: page 1
    ],
)
def test_bad_event_filters_give_a_message_not_an_error(
    viewer_client: Client, params: dict[str, str], message: str | None
) -> None:
    make_events(3)
    response = viewer_client.get("/events/", params)
    html = response.content.decode()
    if message is None:
        assert response.status_code == 200
    else:
        assert response.status_code == 400
        assert message in html and "The filter is ignored" in html
    assert len(rows(html, "data-event")) == 3  # the other filters (none here) still apply


def test_events_empty_state(viewer_client: Client) -> None:
    assert "No events yet" in page_of(viewer_client.get("/events/"))


# --- audit log -----------------------------------------------------------------------


def audit_entries() -> None:
    AuditEntry.objects.bulk_create(
        [
            AuditEntry(actor="user/alice", verb="created", kind="Deployment", name="chat"),
            AuditEntry(actor="user/alice", verb="delete", kind="Deployment", name="chat"),
            AuditEntry(actor="ci-token", verb="configured", kind="TrainingJob", name="pretrain"),
            AuditEntry(actor="user/bob", verb="cordon", kind="Node", name="gpu-a"),
            AuditEntry(actor="ci-admin", verb="create", kind="Token", name="ci-token"),
        ]
    )


def test_audit_log_filters_by_actor_verb_kind_name_and_time(admin_client: Client) -> None:
    audit_entries()
    AuditEntry.objects.filter(actor="user/bob").update(at=now() - timedelta(days=2))

    def count(**params: str) -> int:
        return len(rows(page_of(admin_client.get("/audit/", params)), "data-audit"))

    assert count() == 5
    assert count(actor="alice") == 2
    assert count(kind="token") == 1
    assert count(actor="user/alice", verb="delete") == 1
    assert count(kind="deploy") == 2
    assert count(kind="Node", name="gpu-a") == 1
    assert count(kind="node") == 1
    assert count(since="1d") == 4
    html = page_of(admin_client.get("/audit/"))
    assert 'href="/events/"' in html
    assert 'href="/audit/"' in page_of(admin_client.get("/events/"))


def test_audit_log_paginates_with_filters_kept_and_rejects_bad_values(
    admin_client: Client, django_assert_max_num_queries: Any
) -> None:
    AuditEntry.objects.bulk_create(
        AuditEntry(actor="user/alice", verb="created", kind="Deployment", name=f"d{i}") for i in range(60)
    )
    with django_assert_max_num_queries(8):
        html = page_of(admin_client.get("/audit/", {"actor": "alice"}))
    assert len(rows(html, "data-audit")) == 50
    assert 'href="?actor=alice&amp;page=2"' in html
    response = admin_client.get("/audit/", {"actor": "a" * 200, "after": "2024-13-45T99:99"})
    assert response.status_code == 400
    text = response.content.decode()
    assert "at most 128 characters" in text and "Enter a valid date/time" in text
    assert len(rows(text, "data-audit")) == 50


def test_audit_empty_state(admin_client: Client) -> None:
    assert "Nothing audited yet" in page_of(admin_client.get("/audit/"))
