"""The dashboard bench's fill and measurement, at a small size: every page answers 200
with a populated fleet, and the figures it reports are real timings."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command

from controlplane.models import Resource


def test_the_bench_fills_a_fleet_and_times_every_page(db):
    out, err = StringIO(), StringIO()
    call_command(
        "flotilla_bench_dashboard",
        *("--nodes", "12", "--gpus-per-node", "4", "--deployments", "5", "--replicas", "2"),
        *("--jobs", "2", "--week-nodes", "1", "--events", "60", "--renders", "2"),
        stdout=out,
        stderr=err,
    )
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    assert result["nodes"] == 12 and result["gpus"] == 48
    assert result["workloads"] == Resource.objects.filter(kind="Workload").count() >= 10
    assert result["rawSamples"] == 12 * 60
    assert result["minuteSamples"] == 4 * (7 * 24 * 60 - 60)
    pages = {p["page"]: p for p in result["pages"]}
    assert {"overview", "nodes", "node (week of data)", "deployment", "training job", "events"} <= set(pages)
    for page in pages.values():
        assert page["status"] == 200, page
        assert 0 < page["p50Ms"] <= page["p99Ms"]
    with pytest.raises(SystemExit, match="already holds nodes"):
        call_command("flotilla_bench_dashboard", "--nodes", "1", stdout=StringIO(), stderr=StringIO())
