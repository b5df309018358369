"""Dashboard log-in, roles, users (page and API) and the overview page."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

from controlplane import users
from controlplane.apply import apply
from controlplane.controllers import owners
from controlplane.models import AuditEntry, Event
from controlplane.telemetry import store as telemetry
from tests.conftest import deployment, logged_in


@pytest.fixture
def as_viewer(db) -> Client:
    return logged_in("viewer1", "viewer")


@pytest.fixture
def as_admin(db) -> Client:
    return logged_in("admin1", "admin")


# --- log-in and roles ---------------------------------------------------------------------


def test_anonymous_users_are_sent_to_the_login_page(db):
    response = Client().get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=/")


def test_a_user_logs_in_with_the_password_they_were_given(db):
    users.create_or_reset("alice", "operator", password="correct horse battery")
    client = Client()
    page = client.get("/login/")
    assert b'name="csrfmiddlewaretoken"' in page.content
    wrong = client.post("/login/", {"username": "alice", "password": "nope"})
    assert wrong.status_code == 200 and b"do not match" in wrong.content
    right = client.post("/login/", {"username": "alice", "password": "correct horse battery"})
    assert right.status_code == 302 and right["Location"] == "/"
    assert b"operator" in client.get("/").content


def test_login_refuses_a_post_without_its_csrf_token(db):
    users.create_or_reset("alice", "operator", password="correct horse battery")
    client = Client(enforce_csrf_checks=True)
    response = client.post("/login/", {"username": "alice", "password": "correct horse battery"})
    assert response.status_code == 403


def test_a_user_without_a_role_sees_what_role_is_needed(db):
    user = User.objects.create_user("norole", password="x" * 20)
    client = Client()
    client.force_login(user)
    response = client.get("/")
    assert response.status_code == 403
    assert b"viewer" in response.content


def test_role_of_ranks_groups_and_superusers(db):
    admin = User.objects.create_superuser("root", password="x" * 20)
    assert users.role_of(admin) == "admin"
    user, _, _ = users.create_or_reset("bob", "viewer")
    users.set_role(user, "operator")
    assert users.role_of(User.objects.get(pk=user.pk)) == "operator"
    user.is_active = False
    assert users.role_of(user) is None
    with pytest.raises(ValueError, match="viewer, operator, admin"):
        users.set_role(user, "root")


def test_logging_out_needs_a_post(as_viewer):
    assert as_viewer.get("/logout/").status_code == 405
    assert as_viewer.post("/logout/").status_code == 302
    assert as_viewer.get("/").status_code == 302


# --- users: page, API, bootstrap -------------------------------------------------------------


def test_only_admins_see_the_users_page(as_viewer, as_admin):
    assert as_viewer.get("/users/").status_code == 403
    assert b'href="/users/"' not in as_viewer.get("/").content
    page = as_admin.get("/users/")
    assert page.status_code == 200 and b"admin1" in page.content


def test_an_admin_adds_a_user_and_sees_the_password_once(as_admin):
    page = as_admin.post("/users/", {"username": "carol", "role": "operator"})
    assert page.status_code == 200
    password = page.content.split(b'id="new-password">')[1].split(b"<")[0].decode()
    assert Client().login(username="carol", password=password)
    assert users.role_of(User.objects.get(username="carol")) == "operator"
    assert AuditEntry.objects.filter(kind="User", name="carol", actor="user/admin1").exists()
    assert password.encode() not in as_admin.get("/users/").content


def test_the_users_page_refuses_a_bad_name_or_role_and_changes_nothing(as_admin):
    before = User.objects.count()
    page = as_admin.post("/users/", {"username": "Bad Name!", "role": "operator"}, follow=True)
    assert b"user name" in page.content
    page = as_admin.post("/users/", {"username": "dave", "role": "root"}, follow=True)
    assert b"role must be one of" in page.content
    assert User.objects.count() == before


def test_an_admin_deactivates_a_user_but_not_themself(as_admin):
    users.create_or_reset("erin", "viewer")
    as_admin.post("/users/", {"username": "erin", "role": "viewer", "action": "deactivate"})
    assert not User.objects.get(username="erin").is_active
    as_admin.post("/users/", {"username": "admin1", "role": "viewer", "action": "deactivate"})
    assert User.objects.get(username="admin1").is_active


def test_the_users_api_creates_then_refuses_a_duplicate_unless_reset(admin, operator):
    created = admin.post("/users", {"name": "frank", "role": "viewer"})
    assert created.status_code == 201
    assert Client().login(username="frank", password=created.json()["password"])
    duplicate = admin.post("/users", {"name": "frank", "role": "viewer"})
    assert duplicate.status_code == 409
    assert "reset" in duplicate.json()["error"]["details"][0]["fix"]
    reset = admin.post("/users", {"name": "frank", "role": "operator", "reset": True})
    assert reset.status_code == 200
    assert Client().login(username="frank", password=reset.json()["password"])
    assert {"name": "frank", "role": "operator"}.items() <= {
        k: v
        for item in admin.get("/users").json()["items"]
        if item["name"] == "frank"
        for k, v in item.items()
    }.items()
    assert operator.post("/users", {"name": "gina", "role": "admin"}).status_code == 403
    bad = admin.post("/users", {"name": "gina", "role": "root"})
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "role"


def test_bootstrap_creates_the_admin_user_once(db):
    first = StringIO()
    call_command("flotilla_bootstrap", stdout=first)
    password = json.loads(first.getvalue())["password"]
    assert Client().login(username="admin", password=password)
    again = StringIO()
    call_command("flotilla_bootstrap", stdout=again)
    assert json.loads(again.getvalue())["password"] is None


# --- overview --------------------------------------------------------------------------------


def test_the_overview_says_how_to_add_a_node_when_there_is_none(as_viewer):
    page = as_viewer.get("/")
    assert page.status_code == 200
    assert b"No nodes yet" in page.content and b"flotilla agent --server" in page.content
    assert b"No events yet" in page.content


def test_the_overview_counts_gpus_cost_and_power_by_cluster(as_viewer, add_node):
    apply(
        [
            {
                "apiVersion": "flotilla.dev/v1",
                "kind": "Cluster",
                "metadata": {"name": "east"},
                "spec": {"gpuPrices": {"H100": 4.5}, "powerBudgetWatts": 10000},
            }
        ],
        actor="test",
    )
    add_node("gpu-a", gpus=8, cluster="east")
    add_node("gpu-b", gpus=4, gpu_type="L4", memory_mib=23034, cluster="east")
    chat = deployment("chat", replicas=3, cluster="east")
    chat["spec"]["resources"]["gpuTypes"] = ["H100"]
    apply([chat], actor="test")
    owners.reconcile("Deployment", "chat")
    telemetry.record(
        "gpu-a",
        {"devices": [{"index": i, "powerW": 500.0, "utilization": 50.0} for i in range(8)]},
    )
    page = as_viewer.get("/").content.decode()
    assert "Cluster east" in page
    h100 = page.split("<b>H100</b>")[1].split("</tr>")[0]
    cells = [c.split(">")[-1] for c in h100.split("</td>")[:5]]
    assert cells[1:5] == ["8", "3", "5", "0"]  # total, allocated, free, unhealthy
    assert "$13.50/h" in page  # 3 allocated H100 at 4.50
    assert "no price for" not in page
    assert "4000 W of 10000 W budget" in page
    assert "1 Progressing" in page or "1 Ready" in page
    assert Event.objects.exists() and "Latest events" in page


def test_the_live_fragment_is_the_overview_without_the_page(as_viewer, add_node):
    add_node("gpu-a", gpus=2)
    fragment = as_viewer.get("/overview/live")
    assert fragment.status_code == 200
    assert b"<html" not in fragment.content and b"(no cluster)" in fragment.content
    page = as_viewer.get("/").content
    assert b"every 5s [document.visibilityState === 'visible']" in page


def test_every_page_carries_the_csrf_token_for_htmx(as_viewer):
    page = as_viewer.get("/").content.decode()
    assert 'hx-headers=\'{"X-CSRFToken": "' in page
    assert "/static/dashboard/vendor/htmx-2.0.11.min.js" in page


def test_the_overview_does_not_query_per_node(as_viewer, add_node, django_assert_max_num_queries):
    for i in range(40):
        add_node(f"gpu-{i:02d}", gpus=8)
    with django_assert_max_num_queries(15):
        assert as_viewer.get("/overview/live").status_code == 200
