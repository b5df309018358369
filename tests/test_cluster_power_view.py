"""A Cluster's power seen from outside the dashboard's HTML: the summed draw over time that
the chart plots (``telemetry.store.cluster_power_series``), and ``flotilla describe
cluster``'s power section, fed the status shape the powercap controller writes."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest

from cli import cluster_power
from cli import main as cli_main
from cli.output import describe, resource_table, table
from common.timeutil import now, parse_rfc3339
from controlplane import events, store
from controlplane.errors import Invalid
from controlplane.telemetry import store as telemetry

pytestmark = pytest.mark.django_db


def aligned(seconds_ago: int) -> datetime:
    """A moment that many seconds before now, on a whole minute (so buckets line up)."""
    moment = now() - timedelta(seconds=seconds_ago)
    return moment.replace(second=0, microsecond=0)


def report(node: str, at: datetime, watts_per_gpu: float | None, gpus: int = 8) -> None:
    devices = [{"index": i, "utilization": 50.0} for i in range(gpus)]
    if watts_per_gpu is not None:
        for device in devices:
            device["powerW"] = watts_per_gpu
    telemetry.record(node, {"devices": devices}, at=at)


def by_time(items: list[dict[str, Any]]) -> dict[datetime, dict[str, Any]]:
    return {parse_rfc3339(item["at"]): item for item in items}


# --- the series behind the chart ------------------------------------------------------------


def test_the_series_sums_each_nodes_mean_draw_per_bucket_and_leaves_other_nodes_out():
    start = aligned(600)
    for step in range(0, 300, 5):  # five minutes of 5 s heartbeats
        at = start + timedelta(seconds=step)
        report("node-a", at, 300.0 if step % 10 == 0 else 350.0)  # mean 325 W a GPU
        report("node-b", at + timedelta(seconds=2), 400.0)
        report("elsewhere", at, 700.0)
    items = telemetry.cluster_power_series(
        ["node-a", "node-b"], start, start + timedelta(seconds=299), points=10
    )
    assert len(items) == 10
    times = [parse_rfc3339(item["at"]) for item in items]
    assert times[0] == start and all(b - a == timedelta(seconds=30) for a, b in pairwise(times))
    for item in items:
        assert item["nodes"] == 2
        assert item["powerW"] == pytest.approx(8 * 325 + 8 * 400)  # means, not sums of samples


def test_a_node_that_skips_a_bucket_is_held_at_its_last_reading_for_a_minute_then_dropped():
    start = aligned(900)
    for step in range(0, 180, 5):
        report("fast", start + timedelta(seconds=step), 100.0, gpus=1)
    for step in (0, 45, 90):  # a slow heartbeat: its readings do not land in every 10 s bucket
        report("slow", start + timedelta(seconds=step), 500.0, gpus=1)
    items = by_time(
        telemetry.cluster_power_series(["fast", "slow"], start, start + timedelta(seconds=179), points=18)
    )
    for offset in range(0, 150, 10):  # held through the gaps (and 59 s past the last reading)
        item = items[start + timedelta(seconds=offset)]
        assert (item["nodes"], item["powerW"]) == (2, 600.0), offset
    assert items[start + timedelta(seconds=160)]["nodes"] == 1  # silent for over a minute: not made up
    assert items[start + timedelta(seconds=160)]["powerW"] == 100.0


def test_a_bucket_nobody_reported_in_is_a_gap_not_zero_and_powerless_samples_are_skipped():
    start = aligned(900)
    report("node-a", start, 200.0)
    report("node-a", start + timedelta(seconds=240), 200.0)
    report("cpu-only", start + timedelta(seconds=120), None)  # no device reports power
    items = by_time(
        telemetry.cluster_power_series(
            ["node-a", "cpu-only"], start, start + timedelta(seconds=299), points=5
        )
    )
    assert items[start]["powerW"] == 1600.0
    assert items[start + timedelta(seconds=120)] == {
        "at": items[start + timedelta(seconds=120)]["at"],
        "powerW": None,
        "nodes": 0,
    }
    assert items[start + timedelta(seconds=240)]["powerW"] == 1600.0


def test_older_than_the_raw_window_the_series_reads_minute_rows_in_whole_minute_buckets():
    old = aligned(3 * 3600)
    for step in range(0, 600, 5):  # ten minutes, three hours ago: folded into minute rows below
        report("node-a", old + timedelta(seconds=step), 250.0)
        report("node-b", old + timedelta(seconds=step), 150.0 if step % 10 else 250.0)  # mean 200
    recent = aligned(600)
    for step in range(0, 120, 5):
        report("node-a", recent + timedelta(seconds=step), 300.0)
    folded = telemetry.downsample()
    assert folded["rawFolded"] == 240 and folded["minuteWritten"] == 2 * 8 * 10
    since = old - timedelta(minutes=30)
    items = telemetry.cluster_power_series(["node-a", "node-b"], since, now(), points=120)
    width = {b - a for a, b in pairwise(parse_rfc3339(i["at"]) for i in items)}
    assert len(width) == 1 and next(iter(width)).total_seconds() % 60 == 0  # whole minutes
    drawn = [i for i in items if i["powerW"] is not None]
    old_items = [i for i in drawn if parse_rfc3339(i["at"]) < old + timedelta(minutes=10)]
    assert old_items and all(i["powerW"] == pytest.approx(8 * 250 + 8 * 200) for i in old_items)
    assert all(i["nodes"] == 2 for i in old_items)
    recent_items = [i for i in drawn if parse_rfc3339(i["at"]) >= recent - timedelta(minutes=5)]
    assert recent_items and recent_items[0]["powerW"] == 8 * 300.0
    assert all(i["nodes"] == 1 for i in recent_items)


def test_the_series_refuses_a_silly_number_of_points_and_an_empty_range():
    start = aligned(300)
    for points in (0, 1001, True):
        with pytest.raises(Invalid, match="points"):
            telemetry.cluster_power_series(["node-a"], start, start + timedelta(seconds=60), points=points)
    assert telemetry.cluster_power_series(["node-a"], start, start, points=10) == []
    nobody = telemetry.cluster_power_series([], start, start + timedelta(seconds=60), points=2)
    assert nobody and all(item["powerW"] is None and item["nodes"] == 0 for item in nobody)


# --- flotilla describe cluster --------------------------------------------------------------

POWER = {
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
        {
            "node": "node-a",
            "gpu": 5,
            "limitWatts": 560.0,
            "maxWatts": 700.0,
            "owner": "Deployment/chat",
            "priority": 50,
        },
        {
            "node": "node-a",
            "gpu": 3,
            "limitWatts": 420.0,
            "maxWatts": 700.0,
            "owner": "TrainingJob/pretrain",
            "priority": 10,
        },
        {"node": "node-c", "gpu": 0, "limitWatts": 500.0, "maxWatts": 700.0, "owner": None, "priority": 0},
    ],
    "updatedAt": "2026-12-07T22:30:00Z",
}
CONDITION = {
    "type": "PowerWithinBudget",
    "status": "True",
    "reason": "WithinBudget",
    "message": "draw 9,121 W of 10,000 W; 3 GPUs capped",
    "lastTransitionTime": "2026-12-07T22:29:00Z",
}


def cluster_document(status: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "kind": "Cluster",
        "metadata": {"name": "east", "creationTimestamp": "2026-12-01T00:00:00Z", "generation": 1},
        "spec": {"powerBudgetWatts": 10000.0, "policies": {"powercap": "polca"}, **spec},
        "status": status,
    }


def test_describe_cluster_shows_budget_draw_headroom_and_the_capped_gpus_lowest_priority_first():
    document = cluster_document({"power": POWER, "conditions": [CONDITION], "capacity": {"costPerHour": 1.5}})
    at = datetime(2026, 12, 7, 22, 30, 42, tzinfo=UTC)
    text = describe(document, [])
    lines = text.splitlines()
    assert "Power:         budget 10,000 W, draw 9,120 W (91% of budget), headroom 880 W" in lines
    assert "  Policy:      polca" in lines
    assert "  GPUs:        3 of 16 capped, 1,080 W below their board limits in all" in lines
    assert "  Stale nodes: node-b (no recent telemetry: counted at their limits)" in lines
    assert not any(line.lstrip().startswith("Shortfall") for line in lines)  # none to report
    header = next(n for n, line in enumerate(lines) if "BOARD MAX" in line)
    assert lines[header].split() == ["NODE", "GPU", "LIMIT", "BOARD", "MAX", "OF", "MAX", "OWNER", "PRIORITY"]
    rows = [line.split() for line in lines[header + 1 : header + 4]]
    assert [row[:2] for row in rows] == [["node-c", "0"], ["node-a", "3"], ["node-a", "5"]]
    assert rows[1][2:] == ["420", "W", "700", "W", "60%", "TrainingJob/pretrain", "batch", "(10)"]
    assert rows[0][-2:] == ["idle", "0"] and rows[2][-2:] == ["normal", "(50)"]
    # The figures are the section, not a YAML dump; the rest of the status still is.
    assert "budgetWatts" not in text and "costPerHour: 1.5" in text
    cond = next(line for line in lines if line.lstrip().startswith("PowerWithinBudget"))
    assert "True" in cond and "WithinBudget" in cond and "3 GPUs capped" in cond
    section = cluster_power.lines(document["spec"], document["status"], table, at)
    assert "  Updated:     2026-12-07T22:30:00Z (42s ago)" in section


def test_describe_cluster_says_when_the_budget_cannot_be_met_and_when_the_list_is_cut():
    power = {
        **POWER,
        "drawWatts": 10450.0,
        "headroomWatts": -450.0,
        "shortfallWatts": 450.0,
        "cappedGpus": 80,
        "staleNodes": [],
    }
    text = describe(cluster_document({"power": power}), [])
    assert "draw 10,450 W (104% of budget), over budget by 450 W" in text
    assert "  Shortfall:   450 W over budget even with every GPU at its board minimum" in text
    assert "... and 77 more (the status lists at most 64)" in text
    assert "Stale nodes" not in text


def test_describe_cluster_without_a_power_status_says_why():
    waiting = describe(cluster_document({}), [])
    assert "Power:         budget 10,000 W, no power status yet (policies.powercap: polca;" in waiting
    no_policy = describe(cluster_document({}, policies={}), [])
    assert "no policies.powercap set: nothing watches the budget" in no_policy
    document = cluster_document({})
    del document["spec"]["powerBudgetWatts"]
    assert "Power:         no budget (set spec.powerBudgetWatts and policies.powercap)" in describe(
        document, []
    )


def test_get_clusters_wide_shows_draw_of_budget_and_the_capped_count():
    capped = cluster_document({"power": POWER})
    unbudgeted = cluster_document({})
    unbudgeted["metadata"] = {**unbudgeted["metadata"], "name": "west"}
    del unbudgeted["spec"]["powerBudgetWatts"]
    lines = resource_table("Cluster", [capped, unbudgeted], wide=True).splitlines()
    assert lines[0].split()[-3:] == ["POWER", "CAPPED", "AGE"]
    assert "9,120/10,000 W" in lines[1] and lines[1].split()[-2] == "3"
    assert lines[2].split()[-3:-1] == ["-", "-"]


def test_flotilla_describe_cluster_prints_the_section_from_the_api_with_the_power_events(viewer, capsys):
    """The real command against the real API (the test client as its transport)."""
    cluster = store.create(
        "Cluster",
        "east",
        {"powerBudgetWatts": 10000.0, "policies": {"powercap": "polca"}},
        status={"power": POWER, "conditions": [CONDITION]},
    )
    events.record(cluster, "PowerCapsApplied", "draw 9,850 W > 95% of 10,000 W: capped 3 GPUs")
    events.record(cluster, "PowerBudgetUnmeetable", "short by 450 W", type_="Warning")

    class Transport:
        def get(self, plural: str, name: str) -> dict[str, Any]:
            return viewer.get(f"/{plural}/{name}").json()

        def events(self, plural: str, name: str, limit: int) -> dict[str, Any]:
            return viewer.get(f"/{plural}/{name}/events", limit=limit).json()

    assert cli_main.cmd_describe(argparse.Namespace(kind="cluster", name="east"), Transport()) == 0
    out = capsys.readouterr().out
    assert "Power:         budget 10,000 W, draw 9,120 W (91% of budget), headroom 880 W" in out
    assert "TrainingJob/pretrain" in out and "batch (10)" in out
    assert "PowerCapsApplied" in out and "capped 3 GPUs" in out
    assert "PowerBudgetUnmeetable" in out and "Warning" in out
