"""Telemetry API: a node's series and the fleet's latest samples, for viewers."""

from __future__ import annotations

from datetime import timedelta

import pytest

from common.timeutil import now, rfc3339
from controlplane.telemetry import store


def sample(utilization: float, power: float) -> dict:
    return {
        "devices": [
            {"index": 0, "utilization": utilization, "memoryUsedMiB": 1000, "powerW": power},
            {"index": 1, "utilization": 0.0, "memoryUsedMiB": 0, "powerW": 70.0},
        ]
    }


@pytest.fixture
def node_with_telemetry(add_node):
    add_node("gpu-1", gpus=2)
    moment = now()
    for seconds_ago in (30, 20, 10):
        store.record(
            "gpu-1", sample(100 - seconds_ago, 300 + seconds_ago), moment - timedelta(seconds=seconds_ago)
        )
    store.record("gpu-1", sample(40, 200), moment - timedelta(hours=3))
    return "gpu-1"


def error_fields(response) -> set[str]:
    return {detail["field"] for detail in response.json()["error"].get("details", [])}


def test_reading_telemetry_needs_a_token(anonymous, node_with_telemetry):
    assert anonymous.get("/nodes/gpu-1/telemetry").status_code == 401
    assert anonymous.get("/telemetry/latest").status_code == 401


def test_a_viewer_reads_a_nodes_recent_samples_at_raw_resolution(viewer, node_with_telemetry):
    response = viewer.get("/nodes/gpu-1/telemetry", since="60")

    assert response.status_code == 200
    body = response.json()
    assert (body["node"], body["resolution"], body["truncated"]) == ("gpu-1", "raw", False)
    assert [item["devices"][0]["utilization"] for item in body["items"]] == [70, 80, 90]


def test_one_device_can_be_asked_for(viewer, node_with_telemetry):
    body = viewer.get("/nodes/gpu-1/telemetry", since="60", device="1").json()

    assert {d["index"] for item in body["items"] for d in item["devices"]} == {1}


def test_an_old_range_is_served_as_minute_averages(viewer, node_with_telemetry):
    since = rfc3339(now() - timedelta(hours=4))

    body = viewer.get("/nodes/gpu-1/telemetry", since=since).json()

    assert body["resolution"] == "minute"
    assert body["items"][0]["devices"][0]["utilization"] == 40.0
    assert body["items"][0]["devices"][0]["samples"] == 1


def test_a_limit_keeps_the_newest_points_and_says_it_truncated(viewer, node_with_telemetry):
    body = viewer.get("/nodes/gpu-1/telemetry", since="60", limit="2").json()

    assert body["truncated"] is True
    assert [item["devices"][0]["utilization"] for item in body["items"]] == [80, 90]


def test_an_unknown_node_is_404(viewer, db):
    response = viewer.get("/nodes/nope/telemetry")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NotFound"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"since": "-5"}, "since"),
        ({"until": "2025-13-45T00:00:00Z"}, "until"),
        ({"since": "10", "until": "60"}, "since"),
        ({"resolution": "hourly"}, "resolution"),
        ({"device": "first"}, "device"),
        ({"limit": "many"}, "limit"),
    ],
)
def test_a_bad_parameter_is_422_naming_it(viewer, node_with_telemetry, params, field):
    response = viewer.get("/nodes/gpu-1/telemetry", **params)

    assert response.status_code == 422
    assert error_fields(response) == {field}


def test_latest_lists_each_nodes_newest_sample_the_missing_nodes_and_total_power(
    viewer, node_with_telemetry, add_node
):
    add_node("gpu-2", gpus=1)

    body = viewer.get("/telemetry/latest", nodes="gpu-1,gpu-2").json()

    assert [item["node"] for item in body["items"]] == ["gpu-1"]
    assert body["items"][0]["devices"][0]["utilization"] == 90
    assert body["missing"] == ["gpu-2"]
    assert body["powerW"] == 310.0 + 70.0


def test_latest_defaults_to_every_node(viewer, node_with_telemetry, add_node):
    add_node("gpu-2", gpus=1)

    body = viewer.get("/telemetry/latest").json()

    assert [item["node"] for item in body["items"]] == ["gpu-1"]
    assert body["missing"] == ["gpu-2"]


def test_latest_rejects_a_malformed_node_name(viewer, db):
    response = viewer.get("/telemetry/latest", nodes="gpu-1,Bad_Name")

    assert response.status_code == 422
    assert error_fields(response) == {"nodes"}
