"""The spec models: names, labels, unknown fields, kind lookup and schemas. No database, no Django."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from common import specs
from common.specs import KINDS, Metadata, kind_for, name_problem

MINIMAL_SPECS: dict[str, dict[str, Any]] = {
    "Cluster": {},
    "Node": {},
    "Policy": {"type": "scheduler", "plugin": "binpack"},
    "Deployment": {"model": {"source": "builtin:tiny-llama"}},
    "TrainingJob": {
        "model": {"source": "builtin:tiny-llama"},
        "data": {"source": "builtin:tiny-shakespeare"},
        "steps": 10,
    },
    "Workload": {
        "owner": {"kind": "Deployment", "name": "chat-small"},
        "role": "serve",
        "nodeName": "gpu-a",
    },
}


def error_types(exc: ValidationError) -> list[tuple[tuple, str]]:
    return [(tuple(err["loc"]), err["type"]) for err in exc.errors()]


# --- names ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "chat-small", "gpu-a-01", "0abc", "a" * 63, "x1-y2-z3"])
def test_it_accepts_dns_1123_labels_as_names(name):
    assert name_problem(name) is None
    assert Metadata.model_validate({"name": name}).name == name


@pytest.mark.parametrize(
    "name",
    ["Chat", "chat_small", "-chat", "chat-", "chat.small", "chat small", "a" * 64, "", "ünï"],
)
def test_it_rejects_names_that_are_not_dns_1123_labels(name):
    assert name_problem(name) is not None
    with pytest.raises(ValidationError) as excinfo:
        Metadata.model_validate({"name": name})
    assert ("name",) in [loc for loc, _ in error_types(excinfo.value)]


def test_it_says_how_long_a_name_may_be():
    problem = name_problem("a" * 64)
    assert problem is not None
    assert "63" in problem and "64" in problem


def test_it_explains_what_a_dns_1123_label_is():
    problem = name_problem("Chat_Small")
    assert problem is not None
    assert "lower-case" in problem


def test_it_rejects_a_name_that_is_not_a_string():
    assert name_problem(42) == "must be a non-empty string"
    assert name_problem(None) == "must be a non-empty string"


@pytest.mark.parametrize(
    "spec",
    [
        {"model": {"source": "builtin:x"}, "cluster": "Prod_Cluster"},
        {"model": {"source": "builtin:x"}, "policies": {"scheduler": "Bin-Pack"}},
        {"model": {"source": "builtin:x"}, "policies": {"cache": "-lru"}},
    ],
)
def test_it_validates_names_that_refer_to_other_objects(spec):
    with pytest.raises(ValidationError):
        specs.DeploymentSpec.model_validate(spec)


def test_it_validates_the_cluster_name_of_a_node():
    with pytest.raises(ValidationError):
        specs.NodeSpec.model_validate({"cluster": "UPPER"})
    assert specs.NodeSpec.model_validate({"cluster": "prod"}).cluster == "prod"


# --- unknown fields ---------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(MINIMAL_SPECS))
def test_the_minimal_spec_of_each_kind_is_valid(kind):
    model = KINDS[kind].spec_model.model_validate(MINIMAL_SPECS[kind])
    assert isinstance(model, specs.Spec)


@pytest.mark.parametrize("kind", sorted(MINIMAL_SPECS))
def test_it_rejects_an_unknown_field_at_the_top_of_every_spec(kind):
    with pytest.raises(ValidationError) as excinfo:
        KINDS[kind].spec_model.model_validate({**MINIMAL_SPECS[kind], "replicaz": 3})
    assert (("replicaz",), "extra_forbidden") in error_types(excinfo.value)


@pytest.mark.parametrize(
    "kind, part, value",
    [
        ("Deployment", "model", {"source": "builtin:x"}),
        ("Deployment", "resources", {}),
        ("Deployment", "slo", {}),
        ("Deployment", "workload", {}),
        ("Deployment", "policies", {}),
        ("TrainingJob", "data", {"source": "builtin:x"}),
        ("TrainingJob", "checkpoint", {}),
        ("TrainingJob", "policies", {}),
        ("TrainingJob", "resources", {}),
        ("Cluster", "policies", {}),
        ("Workload", "owner", {"kind": "Deployment", "name": "chat-small"}),
    ],
)
def test_it_rejects_an_unknown_field_nested_in_a_spec(kind, part, value):
    spec = {**MINIMAL_SPECS[kind], part: {**value, "surprise": True}}
    with pytest.raises(ValidationError) as excinfo:
        KINDS[kind].spec_model.model_validate(spec)
    assert ((part, "surprise"), "extra_forbidden") in error_types(excinfo.value)


def test_it_rejects_an_unknown_field_in_metadata():
    with pytest.raises(ValidationError) as excinfo:
        Metadata.model_validate({"name": "chat-small", "labelz": {}})
    assert (("labelz",), "extra_forbidden") in error_types(excinfo.value)


def test_it_accepts_server_owned_metadata_so_get_output_round_trips():
    metadata = Metadata.model_validate(
        {
            "name": "chat-small",
            "uid": "5b0f6f0e-1111-2222-3333-444455556666",
            "generation": 3,
            "resourceVersion": "42",
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "finalizers": ["flotilla.dev/workloads"],
            "ownerReferences": [],
        }
    )
    assert metadata.generation == 3
    assert metadata.resourceVersion == "42"


# --- labels -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels",
    [
        {"team": "search"},
        {"flotilla.dev/replica": "0"},
        {"example.com/tier": "gold", "a_b.c-d": "x_y.z-1"},
        {"empty": ""},
        {"k": "v" * 63},
    ],
)
def test_it_accepts_kubernetes_style_labels(labels):
    assert Metadata.model_validate({"name": "x", "labels": labels}).labels == labels


@pytest.mark.parametrize(
    "labels",
    [
        {"has space": "x"},
        {"-leading": "x"},
        {"team": "has space"},
        {"team": "v" * 64},
        {"team": "-leading"},
        {"team": 5},
        {"": "x"},
    ],
)
def test_it_rejects_invalid_labels(labels):
    with pytest.raises(ValidationError) as excinfo:
        Metadata.model_validate({"name": "x", "labels": labels})
    assert any(loc[0] == "labels" for loc, _ in error_types(excinfo.value))


def test_it_limits_the_number_of_labels():
    labels = {f"k{i}": "v" for i in range(65)}
    with pytest.raises(ValidationError, match="at most 64 labels"):
        Metadata.model_validate({"name": "x", "labels": labels})


def test_it_validates_node_labels_and_node_selectors_like_metadata_labels():
    with pytest.raises(ValidationError):
        specs.NodeSpec.model_validate({"labels": {"bad key": "x"}})
    with pytest.raises(ValidationError):
        specs.Resources.model_validate({"nodeSelector": {"zone": "not valid"}})
    assert specs.Resources.model_validate({"nodeSelector": {"zone": "eu-1"}}).nodeSelector == {"zone": "eu-1"}


# --- values -----------------------------------------------------------------------


def test_it_rejects_a_model_source_without_a_known_scheme():
    with pytest.raises(ValidationError, match="builtin:"):
        specs.ModelSource.model_validate({"source": "s3://bucket/weights"})


@pytest.mark.parametrize(
    "resources",
    [{"gpusPerReplica": 0}, {"gpusPerReplica": 65}, {"gpuMemoryGiB": 0}, {"gpuTypes": ["H 100"]}],
)
def test_it_rejects_resources_out_of_range(resources):
    with pytest.raises(ValidationError):
        specs.Resources.model_validate(resources)


def test_it_rejects_a_negative_replica_count():
    with pytest.raises(ValidationError):
        specs.DeploymentSpec.model_validate({**MINIMAL_SPECS["Deployment"], "replicas": -1})


def test_it_fills_deployment_defaults():
    spec = specs.DeploymentSpec.model_validate(MINIMAL_SPECS["Deployment"])
    assert spec.replicas == 1
    assert spec.resources.gpusPerReplica == 1
    assert spec.resources.gpuTypes == []


def test_it_rejects_an_unknown_policy_type_and_workload_role():
    with pytest.raises(ValidationError):
        specs.PolicySpec.model_validate({"type": "autoscaler", "plugin": "binpack"})
    with pytest.raises(ValidationError):
        specs.WorkloadSpec.model_validate({**MINIMAL_SPECS["Workload"], "role": "inference"})


# --- kinds ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "word, kind",
    [
        ("deployments", "Deployment"),
        ("deployment", "Deployment"),
        ("Deployment", "Deployment"),
        ("DEPLOYMENTS", "Deployment"),
        ("deploy", "Deployment"),
        ("trainingjobs", "TrainingJob"),
        ("trainingjob", "TrainingJob"),
        ("TrainingJob", "TrainingJob"),
        ("tj", "TrainingJob"),
        ("workloads", "Workload"),
        ("wl", "Workload"),
        ("nodes", "Node"),
        ("no", "Node"),
        ("clusters", "Cluster"),
        ("cluster", "Cluster"),
        ("policies", "Policy"),
        ("policy", "Policy"),
    ],
)
def test_kind_for_resolves_plural_singular_and_short_names(word, kind):
    info = kind_for(word)
    assert info is not None
    assert info.kind == kind


@pytest.mark.parametrize("word", ["pods", "deploymentz", "", "polices"])
def test_kind_for_returns_none_for_unknown_words(word):
    assert kind_for(word) is None


def test_every_kind_has_a_lower_case_plural():
    assert {info.plural for info in KINDS.values()} == {
        "clusters",
        "nodes",
        "policies",
        "deployments",
        "trainingjobs",
        "workloads",
        "profiles",
    }
    assert all(specs.BY_PLURAL[info.plural] is info for info in KINDS.values())


def test_owners_of_workloads_carry_the_workload_finalizer():
    with_finalizer = {kind for kind, info in KINDS.items() if info.finalizer}
    assert with_finalizer == {"Deployment", "TrainingJob"}
    assert KINDS["Deployment"].finalizer == specs.WORKLOAD_FINALIZER


def test_every_kind_has_a_json_schema():
    schemas = specs.json_schemas()
    assert set(schemas) == set(KINDS)
    for kind, schema in schemas.items():
        assert schema["type"] == "object", kind
        assert schema["properties"], kind
        assert schema.get("additionalProperties") is False, kind


def test_json_schemas_name_the_contract_fields():
    schemas = specs.json_schemas()
    assert {"model", "replicas", "resources", "slo", "workload", "policies", "cluster"} <= set(
        schemas["Deployment"]["properties"]
    )
    assert {"owner", "role", "nodeName", "gpus", "runtime", "config"} <= set(
        schemas["Workload"]["properties"]
    )
    assert {"gpuPrices", "powerBudgetWatts", "executor", "policies"} <= set(schemas["Cluster"]["properties"])
    assert schemas["TrainingJob"]["required"] == ["model", "data", "steps"]
