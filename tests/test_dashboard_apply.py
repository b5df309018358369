"""The Apply page: paste or upload YAML, Plan (a dry run), then Apply the planned text."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils.html import escape

from controlplane import store
from controlplane.apply import apply
from controlplane.models import AuditEntry, Resource
from tests.conftest import deployment, logged_in

pytestmark = pytest.mark.django_db

URL = "/apply/"


@pytest.fixture
def op(db) -> Client:
    return logged_in("op", "operator")


def dump(*documents: dict[str, Any]) -> str:
    return yaml.safe_dump_all(list(documents), sort_keys=False)


def snapshot() -> list[tuple[str, str, int, int]]:
    """Every resource's identity and versions: equal before and after means nothing was written."""
    return list(
        Resource.objects.order_by("kind", "name").values_list(
            "kind", "name", "generation", "resource_version"
        )
    )


def plan_rows(html: str, table: str = "plan") -> dict[str, str]:
    """object -> action, read from the table with id ``table``."""
    found = re.search(rf'<table id="{table}".*?</table>', html, re.S)
    assert found, f"no table #{table}"
    return dict(re.findall(r'<tr data-object="([^"]+)" data-action="([^"]+)"', found.group(0)))


def test_the_page_offers_paste_and_upload_and_states_the_limit(op, settings):
    settings.FLOTILLA_MAX_BODY_BYTES = 4096
    response = op.get(URL)
    html = response.content.decode()
    assert response.status_code == 200
    assert '<textarea id="yaml" name="yaml"' in html and 'type="file" name="file"' in html
    assert 'enctype="multipart/form-data"' in html and "csrfmiddlewaretoken" in html
    assert "(4096 bytes)" in html and "FLOTILLA_MAX_BODY_BYTES" in html
    assert ">Plan</button>" in html and ">Apply</button>" not in html  # nothing planned yet


def test_plan_shows_each_documents_action_and_diff_and_writes_nothing(op):
    apply([deployment("existing", replicas=1), deployment("same", replicas=1)], actor="test")
    before = snapshot()
    text = dump(deployment("existing", replicas=3), deployment("same", replicas=1), deployment("fresh", 1))

    response = op.post(URL, {"yaml": text, "action": "plan"})
    html = response.content.decode()
    assert response.status_code == 200
    assert plan_rows(html) == {
        "deployment/existing": "configured",
        "deployment/same": "unchanged",
        "deployment/fresh": "created",
    }
    assert 'data-path="spec.replicas"' in html and "− 1" in html and "+ 3" in html
    assert 'data-path="spec.model"' in html  # a created object lists what it will hold
    assert "1 created, 1 configured, 1 unchanged" in html
    # The Apply form carries exactly the planned text.
    assert f'<input type="hidden" name="yaml" value="{escape(text)}">' in html
    assert re.search(r'<button class="primary" name="action" value="apply">Apply</button>', html)
    assert snapshot() == before
    assert not AuditEntry.objects.exclude(actor="test").exists()


def test_apply_applies_the_carried_text_and_shows_the_results(op):
    apply([deployment("existing", replicas=1)], actor="test")
    text = dump(deployment("existing", replicas=3), deployment("fresh", replicas=1))
    planned = op.post(URL, {"yaml": text, "action": "plan"})
    carried = re.search(r'<input type="hidden" name="yaml" value="([^"]*)">', planned.content.decode())
    assert carried

    response = op.post(URL, {"yaml": text, "action": "apply"})
    html = response.content.decode()
    assert response.status_code == 200
    assert plan_rows(html, "results") == {"deployment/existing": "configured", "deployment/fresh": "created"}
    assert 'id="plan"' not in html and "Applied: 1 created, 1 configured" in html
    assert store.get("Deployment", "existing").spec["replicas"] == 3
    assert store.get("Deployment", "existing").generation == 2
    assert store.get("Deployment", "fresh").spec["replicas"] == 1
    audited = set(AuditEntry.objects.filter(actor="user/op").values_list("verb", "name"))
    assert audited == {("configured", "existing"), ("created", "fresh")}


def test_invalid_input_shows_each_problem_and_writes_nothing(op):
    before = snapshot()
    bad = deployment("broken", replicas=1)
    bad["spec"]["replica"] = 2
    text = dump(deployment("fine", replicas=1), bad)

    for action in ("plan", "apply"):
        response = op.post(URL, {"yaml": text, "action": action})
        html = response.content.decode()
        assert response.status_code == 422
        assert 'id="problems"' in html and "nothing was written" in html
        (problem,) = response.context["error"]["details"]
        assert problem["document"] == 1 and problem["field"] == "spec.replica"
        assert "known fields here" in problem["fix"] and escape(problem["fix"]) in html
        assert ">Apply</button>" not in html
        assert response.context["text"] == text  # kept, to be fixed
    assert snapshot() == before
    assert not Resource.objects.filter(name="fine").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kind: [\n", "body is not valid YAML at line"),
        ("", "no documents in the body"),
        ("a: &x 1\nb: *x\n", "YAML alias *x at line 2 is not allowed"),
    ],
)
def test_unparsable_text_is_explained(op, text, expected):
    before = snapshot()
    response = op.post(URL, {"yaml": text, "action": "plan"})
    assert response.status_code == 422 and escape(expected) in response.content.decode()
    assert snapshot() == before


def test_workloads_cannot_be_applied_here_either(op):
    workload = {
        "apiVersion": "flotilla.dev/v1",
        "kind": "Workload",
        "metadata": {"name": "sneaky"},
        "spec": {"owner": {"kind": "Deployment", "name": "x"}, "role": "serve", "nodeName": "gpu-a"},
    }
    response = op.post(URL, {"yaml": dump(workload), "action": "apply"})
    assert response.status_code == 422
    assert "Workloads are created by controllers, not applied" in response.content.decode()
    assert not Resource.objects.filter(kind="Workload").exists()


def test_an_uploaded_file_is_planned_and_wins_over_the_text_box(op):
    upload = SimpleUploadedFile("chat.yaml", dump(deployment("from-file", 1)).encode(), "application/yaml")
    response = op.post(URL, {"yaml": dump(deployment("from-box", 1)), "file": upload, "action": "plan"})
    assert response.status_code == 200
    assert plan_rows(response.content.decode()) == {"deployment/from-file": "created"}
    assert "from-file" in response.context["text"]  # the file's text is shown and carried
    assert not Resource.objects.filter(kind="Deployment").exists()


def test_an_upload_over_the_limit_is_refused_and_says_the_limit(op, settings):
    settings.FLOTILLA_MAX_BODY_BYTES = 2048
    text = dump(*[deployment(f"d-{i}", 1) for i in range(20)])
    assert len(text) > 2048
    upload = SimpleUploadedFile("big.yaml", text.encode(), "application/yaml")
    response = op.post(URL, {"file": upload, "action": "plan"})
    html = response.content.decode()
    assert response.status_code == 413
    assert f"is {len(text.encode())} bytes; the limit is 2048" in html and "FLOTILLA_MAX_BODY_BYTES" in html
    response = op.post(URL, {"yaml": text, "action": "apply"})
    assert response.status_code == 413 and "the limit is 2048" in response.content.decode()
    assert not Resource.objects.exists()


def test_a_file_that_is_not_utf8_is_refused(op):
    upload = SimpleUploadedFile("bin.yaml", b"\xff\xfe\x00bad", "application/octet-stream")
    response = op.post(URL, {"file": upload, "action": "plan"})
    assert response.status_code == 422 and "is not UTF-8 text" in response.content.decode()


def test_a_viewer_cannot_see_or_use_the_page(db):
    viewer = logged_in("watcher", "viewer")
    response = viewer.get(URL)
    assert response.status_code == 403 and "operator" in response.content.decode()
    assert 'href="/apply/"' not in viewer.get("/deployments/").content.decode()
    for action in ("plan", "apply"):
        response = viewer.post(URL, {"yaml": dump(deployment("nope", 1)), "action": action})
        assert response.status_code == 403
    assert not Resource.objects.exists() and not AuditEntry.objects.exists()


def test_an_operator_finds_the_page_in_the_navigation(op):
    assert 'href="/apply/"' in op.get("/deployments/").content.decode()


def test_a_post_without_the_csrf_token_is_refused(db):
    strict = logged_in("strict", "operator", enforce_csrf_checks=True)
    response = strict.post(URL, {"yaml": dump(deployment("nope", 1)), "action": "apply"})
    assert response.status_code == 403
    assert not Resource.objects.exists()


@pytest.mark.parametrize("method", ["get", "post"])
def test_anonymous_users_go_to_the_login_page(client, method):
    response = getattr(client, method)(URL, {"yaml": dump(deployment("nope", 1)), "action": "apply"})
    assert response.status_code == 302 and response["Location"].startswith("/login/?next=")
    assert not Resource.objects.exists()
