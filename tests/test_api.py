"""The REST API: auth, apply (and its refusals), get/list, replace, status and delete.

Watch, events, plugins, the agent protocol and OpenAPI are in test_api_watch.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import yaml

from controlplane.auth import verified
from controlplane.controllers import owners
from controlplane.models import ApiToken, AuditEntry, Change, Resource
from tests.conftest import API, Api, deployment

LAUGHS = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
"""


def policy(name: str = "packed", plugin: str = "binpack", **params: Any) -> dict[str, Any]:
    return {
        "apiVersion": "flotilla.dev/v1",
        "kind": "Policy",
        "metadata": {"name": name},
        "spec": {"type": "scheduler", "plugin": plugin, "params": params},
    }


def error_of(response, status: int) -> dict[str, Any]:
    """The JSON error body of a refused request, after checking its status."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] and error["message"]
    return error


def detail_for(error: dict[str, Any], field: str) -> dict[str, Any]:
    """The detail naming ``field``; every detail carries a fix."""
    for detail in error.get("details", []):
        assert detail.get("fix"), detail
        if detail["field"] == field:
            return detail
    raise AssertionError(f"no detail names {field!r}: {error}")


def store_rows() -> tuple[int, int, int]:
    return Resource.objects.count(), Change.objects.count(), AuditEntry.objects.count()


@contextmanager
def nothing_written() -> Iterator[None]:
    before = store_rows()
    yield
    assert store_rows() == before


def result(response, index: int = 0) -> dict[str, Any]:
    assert response.status_code == 200, response.content
    return response.json()["results"][index]


def stored(kind: str, name: str) -> Resource:
    return Resource.objects.get(kind=kind, name=name)


# --- auth -----------------------------------------------------------------------------


def test_it_requires_a_token(anonymous):
    error = error_of(anonymous.get("/deployments"), 401)
    assert error["code"] == "Unauthorized"
    assert detail_for(error, "Authorization")["fix"].startswith("send 'Authorization: Bearer")


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer not-a-token",
        "Basic dXNlcjpwYXNz",
        "Bearer flt_0123456789ab_" + "x" * 43,
    ],
)
def test_it_rejects_a_malformed_or_unknown_token(db, header):
    response = Api(None).client.get(f"{API}/deployments", HTTP_AUTHORIZATION=header)
    assert error_of(response, 401)["code"] == "Unauthorized"


def test_it_rejects_a_token_with_a_known_prefix_and_a_wrong_secret(token_for):
    token = token_for("admin")
    forged = token[:-4] + ("aaaa" if not token.endswith("aaaa") else "bbbb")
    error_of(Api(forged).get("/deployments"), 401)


def test_a_viewer_can_read_but_not_write(viewer, operator):
    operator.apply(deployment())
    assert viewer.get("/deployments").status_code == 200
    assert viewer.get("/deployments/chat-small").status_code == 200
    assert error_of(viewer.apply(deployment("other")), 403)["code"] == "Forbidden"
    error_of(viewer.delete("/deployments/chat-small"), 403)
    assert not Resource.objects.filter(name="other").exists()


def test_an_operator_can_apply_and_delete(operator):
    assert result(operator.apply(policy()))["action"] == "created"
    assert operator.delete("/policies/packed").status_code == 200
    assert not Resource.objects.filter(kind="Policy").exists()


def test_only_an_admin_manages_tokens(operator, viewer):
    error_of(operator.post("/tokens", {"name": "ci", "role": "admin"}), 403)
    error_of(viewer.get("/tokens"), 403)
    assert not ApiToken.objects.filter(name="ci").exists()


def test_an_admin_creates_a_token_that_authenticates_and_is_stored_hashed(admin):
    response = admin.post("/tokens", {"name": "ci", "role": "operator"})
    assert response.status_code == 201
    body = response.json()
    token = body["token"]
    assert body["role"] == "operator" and token.startswith(f"flt_{body['prefix']}_")

    row = ApiToken.objects.get(name="ci")
    assert row.digest != token
    secret = token.split("_", 2)[2]
    for field in ApiToken._meta.fields:
        assert secret not in str(getattr(row, field.attname))

    ci = Api(token)
    assert result(ci.apply(policy()))["action"] == "created"
    error_of(ci.get("/tokens"), 403)


def test_listing_tokens_never_shows_the_plaintext(admin):
    token = admin.post("/tokens", {"name": "ci", "role": "viewer"}).json()["token"]
    response = admin.get("/tokens")
    assert response.status_code == 200
    items = response.json()["items"]
    assert {"ci", "test-admin"} <= {item["name"] for item in items}
    assert all("token" not in item for item in items)
    assert token.encode() not in response.content


def test_it_refuses_an_unknown_role_for_a_new_token(admin):
    error = error_of(admin.post("/tokens", {"name": "ci", "role": "root"}), 422)
    assert "viewer" in detail_for(error, "role")["fix"]


def test_a_revoked_token_no_longer_authenticates(admin):
    created = admin.post("/tokens", {"name": "ci", "role": "viewer"}).json()
    assert Api(created["token"]).get("/deployments").status_code == 200
    assert admin.delete(f"/tokens/{created['prefix']}").status_code == 200
    error_of(Api(created["token"]).get("/deployments"), 401)
    assert "ci" not in {item["name"] for item in admin.get("/tokens").json()["items"]}


def test_a_verified_token_is_not_looked_up_again_until_its_cache_entry_expires(
    admin, django_assert_num_queries, settings
):
    settings.FLOTILLA_TOKEN_CACHE_SECONDS = 60
    created = admin.post("/tokens", {"name": "ci", "role": "viewer"}).json()
    viewer = Api(created["token"])
    assert viewer.get("/deployments").status_code == 200
    with django_assert_num_queries(2):  # the listing's version and rows; no token row read
        assert viewer.get("/deployments").status_code == 200
    settings.FLOTILLA_TOKEN_CACHE_SECONDS = 0
    verified.clear()
    with django_assert_num_queries(3):  # token row, then the listing
        assert viewer.get("/deployments").status_code == 200


def test_a_revoked_node_token_stops_working_at_once_in_this_process(admin):
    first = admin.post("/agent/register", {"name": "gpu-a"}).json()["token"]
    node = Api(first)
    assert node.post("/agent/heartbeat", {"name": "gpu-a"}).status_code == 200
    second = Api(first).post("/agent/register", {"name": "gpu-a"}).json()["token"]
    error_of(node.post("/agent/heartbeat", {"name": "gpu-a"}), 401)
    assert Api(second).post("/agent/heartbeat", {"name": "gpu-a"}).status_code == 200


def test_a_wrong_token_is_never_remembered(admin):
    bogus = Api("flt_000000000000_not-a-real-secret")
    for _ in range(2):
        error_of(bogus.get("/deployments"), 401)
    assert len(verified) == 0


# --- apply ------------------------------------------------------------------------------


def test_it_creates_then_leaves_unchanged_then_configures(operator):
    first = result(operator.apply(deployment()))
    assert (first["action"], first["generation"]) == ("created", 1)
    version = stored("Deployment", "chat-small").resource_version
    changes = Change.objects.count()

    again = result(operator.apply(deployment()))
    assert (again["action"], again["generation"]) == ("unchanged", 1)
    assert again["diff"] == []
    assert stored("Deployment", "chat-small").resource_version == version
    assert Change.objects.count() == changes

    edited = result(operator.apply(deployment(replicas=3)))
    assert (edited["action"], edited["generation"]) == ("configured", 2)
    assert {"path": "spec.replicas", "op": "replace", "old": 2, "new": 3} in edited["diff"]
    resource = stored("Deployment", "chat-small")
    assert resource.generation == 2 and resource.spec["replicas"] == 3
    assert resource.resource_version > version


def test_a_labels_only_edit_is_configured_without_a_new_generation(operator):
    operator.apply(deployment())
    document = deployment()
    document["metadata"]["labels"] = {"team": "ranking"}
    outcome = result(operator.apply(document))
    assert (outcome["action"], outcome["generation"]) == ("configured", 1)
    assert outcome["diff"] == [
        {"path": "metadata.labels.team", "op": "replace", "old": "search", "new": "ranking"}
    ]
    assert stored("Deployment", "chat-small").labels == {"team": "ranking"}


def test_it_accepts_a_json_body(operator):
    outcome = result(operator.post("/apply", deployment()))
    assert (outcome["kind"], outcome["name"], outcome["action"]) == ("Deployment", "chat-small", "created")

    response = operator.post("/apply", [policy("a"), policy("b")])
    assert [r["name"] for r in response.json()["results"]] == ["a", "b"]

    response = operator.post("/apply", {"kind": "List", "items": [policy("c")]})
    assert result(response)["name"] == "c"
    assert Resource.objects.filter(kind="Policy").count() == 3


def test_it_applies_several_yaml_documents_in_order(operator):
    body = yaml.safe_dump_all([policy(), deployment("one"), deployment("two")])
    response = operator.apply(body)
    assert [(r["kind"], r["name"], r["action"]) for r in response.json()["results"]] == [
        ("Policy", "packed", "created"),
        ("Deployment", "one", "created"),
        ("Deployment", "two", "created"),
    ]


def test_it_records_who_applied_what_in_the_audit_log(admin, operator):
    operator.apply(deployment())
    response = admin.get("/audit")
    assert response.status_code == 200
    entry = response.json()["items"][0]
    assert entry["actor"] == "test-operator"
    assert entry["verb"] == "created"
    assert entry["object"] == {"kind": "Deployment", "name": "chat-small"}
    error_of(operator.get("/audit"), 403)


def test_a_dry_run_of_new_objects_writes_nothing(operator):
    with nothing_written():
        response = operator.apply([policy(), deployment()], dry_run=True)
    assert response.json()["dryRun"] is True
    outcomes = response.json()["results"]
    assert [o["action"] for o in outcomes] == ["created", "created"]
    assert {"path": "spec.replicas", "op": "add", "new": 2} in outcomes[1]["diff"]
    assert not Resource.objects.exists() and not Change.objects.exists()


def test_a_dry_run_of_an_edit_shows_the_field_diff_and_writes_nothing(operator):
    operator.apply(deployment())
    document = deployment(replicas=5, slo={"ttftMs": 250})
    with nothing_written():
        outcome = result(operator.apply(document, dry_run=True))
    assert (outcome["action"], outcome["generation"]) == ("configured", 2)
    assert {"path": "spec.replicas", "op": "replace", "old": 2, "new": 5} in outcome["diff"]
    assert {"path": "spec.slo.ttftMs", "op": "replace", "old": None, "new": 250.0} in outcome["diff"]
    resource = stored("Deployment", "chat-small")
    assert (resource.generation, resource.spec["replicas"]) == (1, 2)


# --- invalid input ------------------------------------------------------------------------


def test_one_invalid_document_of_three_writes_none_of_them(operator):
    bad = deployment("two", replicas="many")
    with nothing_written():
        error = error_of(operator.apply([deployment("one"), bad, deployment("three")]), 422)
    detail = detail_for(error, "spec.replicas")
    assert detail["document"] == 1
    assert "document 1" in error["message"]


def test_it_names_an_unknown_spec_field_and_lists_the_known_ones(operator):
    with nothing_written():
        error = error_of(operator.apply(deployment(replica=3)), 422)
    detail = detail_for(error, "spec.replica")
    assert "replica" in detail["message"]
    assert "replicas" in detail["fix"] and "resources" in detail["fix"]


def test_it_names_an_unknown_nested_field(operator):
    error = error_of(operator.apply(deployment(slo={"ttft": 500})), 422)
    assert "ttftMs" in detail_for(error, "spec.slo.ttft")["fix"]


def test_it_rejects_a_value_of_the_wrong_type(operator):
    with nothing_written():
        error = error_of(operator.apply(deployment(resources={"gpusPerReplica": "two"})), 422)
    assert detail_for(error, "spec.resources.gpusPerReplica")["document"] == 0


def test_it_rejects_a_missing_required_field(operator):
    document = deployment()
    del document["spec"]["model"]
    del document["metadata"]["name"]
    with nothing_written():
        error = error_of(operator.apply(document), 422)
    assert detail_for(error, "spec.model")["fix"] == "add spec.model"
    assert detail_for(error, "metadata.name")["message"] == "field is required"


def test_it_rejects_a_bad_api_version(operator):
    document = {**deployment(), "apiVersion": "flotilla.dev/v2"}
    with nothing_written():
        error = error_of(operator.apply(document), 422)
    assert "flotilla.dev/v1" in detail_for(error, "apiVersion")["fix"]


def test_it_rejects_an_unknown_kind(operator):
    document = {**deployment(), "kind": "Deploymnet"}
    with nothing_written():
        error = error_of(operator.apply(document), 422)
    detail = detail_for(error, "kind")
    assert "Deploymnet" in detail["message"] and "Deployment" in detail["fix"]


def test_it_rejects_an_unknown_top_level_field(operator):
    document = {**deployment(), "sepc": {}}
    error = error_of(operator.apply(document), 422)
    assert "spec" in detail_for(error, "sepc")["fix"]


@pytest.mark.parametrize("name", ["Chat-Small", "chat_small", "a" * 64, "-chat", "chat-", "chat.small", ""])
def test_it_rejects_a_name_that_is_not_a_dns_label(operator, name):
    with nothing_written():
        error = error_of(operator.apply(deployment(name)), 422)
    detail_for(error, "metadata.name")


def test_it_accepts_a_name_of_63_characters(operator):
    assert result(operator.apply(deployment("a" * 63)))["action"] == "created"


def test_it_rejects_a_body_over_the_size_limit(operator, settings):
    settings.FLOTILLA_MAX_BODY_BYTES = 2048
    documents = [deployment(f"d{i}") for i in range(20)]
    assert len(yaml.safe_dump_all(documents)) > 2048
    with nothing_written():
        error = error_of(operator.apply(documents), 413)
    assert "2048" in error["message"]


def test_it_rejects_more_documents_than_the_limit(operator, settings):
    settings.FLOTILLA_MAX_DOCUMENTS = 3
    documents = [policy(f"p{i}") for i in range(4)]
    with nothing_written():
        error_of(operator.apply(documents), 413)
        error_of(operator.post("/apply", documents), 413)
    assert result(operator.apply(documents[:3]), 2)["action"] == "created"


def test_it_rejects_yaml_aliases_before_they_expand(operator):
    with nothing_written():
        error = error_of(operator.apply(LAUGHS), 422)
    assert "alias" in error["message"].lower()


def test_it_rejects_an_alias_inside_a_resource(operator):
    body = yaml.safe_dump(deployment()) + "extra: &x {a: 1}\nmore: *x\n"
    error = error_of(operator.apply(body), 422)
    assert "alias" in error["message"].lower()


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe\x00garbage",
        "{not json",
        "kind: [unclosed",
        "just some words",
        "- a\n- list\n",
        "!!python/object/apply:os.system ['true']\n",
        "[" * 100 + "]" * 100,
        "a:\n" + "".join("  " * i + "- \n" for i in range(1, 60)),
    ],
    ids=["not-utf8", "bad-json", "bad-yaml", "a-scalar", "a-list", "python-tag", "deep-json", "deep-yaml"],
)
def test_it_rejects_a_body_that_is_not_resources(operator, body):
    with nothing_written():
        response = operator.client.post(
            f"{API}/apply", body, content_type="application/yaml", **operator.headers
        )
        error_of(response, 422)


def test_it_rejects_an_empty_body(operator):
    error = error_of(operator.apply(""), 422)
    assert "no documents" in error["message"]


@pytest.mark.parametrize(
    "body",
    [
        "apiVersion: flotilla.dev/v1\nkind: [Deployment]\nmetadata: {name: a}\n",
        "apiVersion: flotilla.dev/v1\nkind: {a: b}\nmetadata: {name: a}\n",
        "apiVersion: flotilla.dev/v1\nkind: Policy\nmetadata: {name: a}\n1: x\nextra: y\n",
    ],
    ids=["kind-is-a-list", "kind-is-a-mapping", "mixed-key-types"],
)
def test_it_rejects_oddly_typed_envelopes_without_an_internal_error(operator, body):
    with nothing_written():
        error_of(operator.apply(body), 422)


def test_a_nul_character_is_refused_alike_on_every_backend(operator):
    document = deployment()
    document["spec"]["model"]["config"]["note"] = "a\x00b"
    with nothing_written():
        error_of(operator.post("/apply", document), 422)


def test_it_rejects_the_same_object_twice_in_one_apply(operator):
    with nothing_written():
        error = error_of(operator.apply([deployment(), policy(), deployment(replicas=3)]), 422)
    detail = detail_for(error, "metadata.name")
    assert detail["document"] == 2 and "document 0" in detail["message"]


def test_it_rejects_a_policy_naming_an_unknown_plugin(operator):
    with nothing_written():
        error = error_of(operator.apply(policy(plugin="no-such-plugin")), 422)
    detail = detail_for(error, "spec.plugin")
    assert "no-such-plugin" in detail["message"] and "binpack" in detail["fix"]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"spread": "notabool-xyz"}, "spec.params.spread"), ({"spred": True}, "spec.params.spred")],
)
def test_it_rejects_a_policy_with_bad_plugin_params(operator, params, field):
    with nothing_written():
        error = error_of(operator.apply(policy(**params)), 422)
    assert detail_for(error, field)["document"] == 0


def test_it_accepts_a_policy_with_valid_params(operator):
    assert result(operator.apply(policy(spread=True)))["action"] == "created"
    assert stored("Policy", "packed").spec["params"] == {"spread": True}


def test_it_rejects_a_deployment_whose_scheduler_is_neither_a_policy_nor_a_plugin(operator):
    with nothing_written():
        error = error_of(operator.apply(deployment(policies={"scheduler": "nowhere"})), 422)
    detail = detail_for(error, "spec.policies.scheduler")
    assert "nowhere" in detail["message"] and "binpack" in detail["fix"]


def test_a_deployment_may_use_a_policy_applied_in_the_same_batch(operator):
    documents = [deployment(policies={"scheduler": "packed"}), policy("packed", spread=True)]
    response = operator.apply(documents)
    assert [r["action"] for r in response.json()["results"]] == ["created", "created"]


def test_a_deployment_may_name_a_plugin_directly(operator):
    assert result(operator.apply(deployment(policies={"scheduler": "binpack"})))["action"] == "created"


# --- list and get -------------------------------------------------------------------------


def test_it_lists_objects_with_the_list_resource_version(viewer, operator):
    operator.apply([deployment("b"), deployment("a"), policy()])
    body = viewer.get("/deployments").json()
    assert body["kind"] == "DeploymentList"
    assert [item["metadata"]["name"] for item in body["items"]] == ["a", "b"]
    assert int(body["metadata"]["resourceVersion"]) == max(Change.objects.values_list("id", flat=True))


def test_it_filters_a_list_by_label_selector(viewer, operator):
    other = deployment("ads")
    other["metadata"]["labels"] = {"team": "ads", "tier": "gold"}
    operator.apply([deployment("chat"), other])

    def matching(selector: str) -> list[str]:
        items = viewer.get("/deployments", labelSelector=selector).json()["items"]
        return [item["metadata"]["name"] for item in items]

    assert matching("team=search") == ["chat"]
    assert matching("team=ads,tier=gold") == ["ads"]
    assert matching("team=ads,tier=silver") == []
    error_of(viewer.get("/deployments", labelSelector="team"), 422)


def test_it_answers_404_for_an_unknown_resource_type(viewer):
    error = error_of(viewer.get("/gizmos"), 404)
    assert "gizmos" in error["message"]
    assert "deployments" in detail_for(error, "kind")["fix"]


def test_it_gets_one_object_with_its_server_fields(viewer, operator):
    operator.apply(deployment())
    body = viewer.get("/deployments/chat-small").json()
    assert (body["kind"], body["metadata"]["name"], body["metadata"]["generation"]) == (
        "Deployment",
        "chat-small",
        1,
    )
    assert body["metadata"]["uid"] and body["metadata"]["resourceVersion"]
    assert body["metadata"]["finalizers"] == ["flotilla.dev/workloads"]
    assert body["spec"]["replicas"] == 2 and body["status"] == {}


def test_it_answers_404_naming_a_missing_object(viewer):
    error = error_of(viewer.get("/deployments/ghost"), 404)
    assert "deployment/ghost" in error["message"]


# --- replace (PUT) --------------------------------------------------------------------------


def current(api: Api, name: str = "chat-small") -> dict[str, Any]:
    return api.get(f"/deployments/{name}").json()


def test_replace_requires_a_resource_version(operator):
    operator.apply(deployment())
    with nothing_written():
        error = error_of(operator.put("/deployments/chat-small", deployment(replicas=4)), 422)
    assert "get the object" in detail_for(error, "metadata.resourceVersion")["fix"]


def test_replace_with_a_stale_resource_version_is_a_conflict(operator):
    operator.apply(deployment())
    document = current(operator)
    operator.apply(deployment(replicas=3))
    document["spec"]["replicas"] = 4
    with nothing_written():
        error = error_of(operator.put("/deployments/chat-small", document), 409)
    assert detail_for(error, "metadata.resourceVersion")
    assert stored("Deployment", "chat-small").spec["replicas"] == 3


def test_replace_with_the_current_resource_version_bumps_the_generation(operator):
    operator.apply(deployment())
    document = current(operator)
    document["spec"]["replicas"] = 4
    response = operator.put("/deployments/chat-small", document)
    assert response.status_code == 200
    body = response.json()
    assert body["action"] == "configured"
    assert body["metadata"]["generation"] == 2
    assert int(body["metadata"]["resourceVersion"]) > int(document["metadata"]["resourceVersion"])
    assert stored("Deployment", "chat-small").spec["replicas"] == 4


def test_replace_rejects_a_body_naming_another_object(operator):
    operator.apply([deployment(), deployment("other")])
    document = current(operator, "other")
    with nothing_written():
        error = error_of(operator.put("/deployments/chat-small", document), 422)
    assert "deployment/other" in error["message"] and "deployment/chat-small" in error["message"]


def test_replace_of_a_missing_object_is_404(operator):
    document = deployment("ghost")
    document["metadata"]["resourceVersion"] = "1"
    error_of(operator.put("/deployments/ghost", document), 404)


def test_a_viewer_may_not_replace(viewer, operator):
    operator.apply(deployment())
    error_of(viewer.put("/deployments/chat-small", current(viewer)), 403)


# --- status ----------------------------------------------------------------------------


FAKE_STATUS = {"observedGeneration": 99, "conditions": [{"type": "Ready", "status": "True"}]}


def test_apply_never_writes_status(operator):
    operator.apply({**deployment(), "status": FAKE_STATUS})
    assert stored("Deployment", "chat-small").status == {}
    outcome = result(operator.apply({**deployment(replicas=3), "status": FAKE_STATUS}))
    assert outcome["action"] == "configured"
    assert all(not change["path"].startswith("status") for change in outcome["diff"])
    assert stored("Deployment", "chat-small").status == {}


def test_replace_never_writes_status(operator):
    operator.apply(deployment())
    document = {**current(operator), "status": FAKE_STATUS}
    assert operator.put("/deployments/chat-small", document).status_code == 200
    assert stored("Deployment", "chat-small").status == {}


def test_an_admin_writes_status_through_the_status_subresource(admin, operator):
    operator.apply(deployment())
    response = admin.put("/deployments/chat-small/status", {"status": FAKE_STATUS})
    assert response.status_code == 200
    assert response.json()["status"] == FAKE_STATUS
    resource = stored("Deployment", "chat-small")
    assert resource.status == FAKE_STATUS and resource.generation == 1


@pytest.mark.parametrize("role", ["operator", "viewer"])
def test_only_controllers_and_agents_write_status(token_for, operator, role):
    operator.apply(deployment())
    error_of(Api(token_for(role)).put("/deployments/chat-small/status", {"status": FAKE_STATUS}), 403)
    assert stored("Deployment", "chat-small").status == {}


def test_a_status_write_must_be_an_object(admin, operator):
    operator.apply(deployment())
    error_of(admin.put("/deployments/chat-small/status", {"status": "Ready"}), 422)


# --- delete ----------------------------------------------------------------------------


def test_deleting_a_deployment_waits_for_its_workloads(operator, add_node):
    add_node("gpu-a")
    add_node("gpu-b")
    operator.apply(deployment())
    owners.reconcile("Deployment", "chat-small")
    assert len(operator.get("/workloads").json()["items"]) == 3  # two replicas and their router

    response = operator.delete("/deployments/chat-small")
    assert response.status_code == 202
    assert response.json()["object"]["metadata"]["deletionTimestamp"]
    assert current(operator)["metadata"]["deletionTimestamp"]

    owners.reconcile("Deployment", "chat-small")
    error_of(operator.get("/deployments/chat-small"), 404)
    assert operator.get("/workloads").json()["items"] == []
    assert not Resource.objects.filter(kind="Workload").exists()


def test_deleting_a_policy_removes_it_at_once(operator):
    operator.apply(policy())
    response = operator.delete("/policies/packed")
    assert response.status_code == 200
    assert response.json()["status"] == "deleted"
    error_of(operator.get("/policies/packed"), 404)


def test_a_policy_in_use_cannot_be_deleted(operator):
    operator.apply([policy(), deployment(policies={"scheduler": "packed"})])
    error = error_of(operator.delete("/policies/packed"), 409)
    assert "deployment/chat-small" in error["message"]
    assert operator.get("/policies/packed").status_code == 200


def test_applying_an_object_that_is_being_deleted_is_a_conflict(operator):
    operator.apply(deployment())
    assert operator.delete("/deployments/chat-small").status_code == 202
    with nothing_written():
        error = error_of(operator.apply(deployment(replicas=3)), 409)
    assert "being deleted" in error["message"]


def test_deleting_a_missing_object_is_404(operator):
    error = error_of(operator.delete("/deployments/ghost"), 404)
    assert "deployment/ghost" in error["message"]


def test_it_answers_405_for_a_method_it_does_not_serve(operator):
    response = operator.client.patch(f"{API}/deployments/chat-small", "{}", **operator.headers)
    assert error_of(response, 405)["code"] == "MethodNotAllowed"
    assert "POST" in error_of(operator.client.get(f"{API}/apply", **operator.headers), 405)["message"]


def test_it_refuses_a_hand_applied_workload(operator):
    workload = {
        "apiVersion": "flotilla.dev/v1",
        "kind": "Workload",
        "metadata": {"name": "sneaky"},
        "spec": {"owner": {"kind": "Deployment", "name": "chat-small"}, "role": "serve", "nodeName": "gpu-a"},
    }
    with nothing_written():
        error = error_of(operator.apply(workload), 422)
    assert error["details"][0]["field"] == "kind"
    assert "Deployment or TrainingJob" in error["details"][0]["fix"]
