"""``flotilla bench powercap``: the workload it offers, the closed loop around the real powercap
plugins (looked up by name in the registry), the search for the largest count that fits, and
one quick run end to end through the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from cli.main import main
from plugins import manager
from plugins.sim import power_bench
from plugins.sim.power_bench import _largest_fitting
from plugins.sim.power_loop import (
    POLICIES,
    PowerSim,
    Settings,
    Workload,
    budget_watts,
    deployment_requests,
    quick_settings,
)

QUICK = quick_settings(Settings())


@pytest.fixture(scope="module")
def workload() -> Workload:
    return Workload.build(QUICK)


@pytest.fixture(scope="module")
def quick_runs(workload) -> dict[tuple[str, int], dict]:
    """Every policy on nameplate (4 serving servers) and one more (5): each run takes ~0.2 s."""
    return {(policy, n): PowerSim(QUICK, policy, n, workload).run() for policy in POLICIES for n in (4, 5)}


def test_the_load_rises_to_a_peak_and_falls_back_with_the_same_requests_for_the_same_seed(workload):
    requests = deployment_requests(QUICK, 2, workload.lengths, workload.cv, seed=5)
    assert requests == deployment_requests(QUICK, 2, workload.lengths, workload.cv, seed=5)
    assert requests != deployment_requests(QUICK, 2, workload.lengths, workload.cv, seed=6)
    start, end = QUICK.warmup_s, QUICK.warmup_s + QUICK.duration_s
    assert all(0 < r.arrival_s < end for r in requests)
    third = QUICK.duration_s / 3
    edges = [
        sum(1 for r in requests if start + i * third <= r.arrival_s < start + (i + 1) * third)
        for i in range(3)
    ]
    assert edges[1] > 1.5 * max(edges[0], edges[2])  # the busy middle of the compressed day
    assert {(r.input_tokens, r.output_tokens) for r in requests} <= set(workload.lengths)


def test_twice_the_replicas_offer_about_twice_the_requests(workload):
    one = deployment_requests(QUICK, 1, workload.lengths, workload.cv, seed=1)
    four = deployment_requests(QUICK, 4, workload.lengths, workload.cv, seed=1)
    assert len(four) / len(one) == pytest.approx(4, rel=0.15)


def test_the_bench_calls_the_registered_plugins_by_name(workload):
    sim = PowerSim(QUICK, "polca", 5, workload)
    assert sim.plugin is manager.get("powercap", "polca")
    assert sim.params.model_dump() == manager.validate_params(sim.plugin, {}).model_dump()
    assert sim.budget.watts == budget_watts(QUICK) == 5 * 8 * 700.0


def test_none_never_caps_and_nameplate_never_exceeds_the_budget(quick_runs):
    for n in (4, 5):
        run = quick_runs[("none", n)]
        assert run["capsApplied"] == 0 and set(run["cappedGpuSeconds"].values()) == {0.0}
        assert run["trainingThroughput"] == 1.0
    assert quick_runs[("none", 4)]["secondsOverBudget"] == 0
    assert quick_runs[("none", 4)]["peakDrawShare"] < 1


def test_static_caps_every_gpu_to_an_even_share_and_so_never_exceeds_the_budget(quick_runs):
    run = quick_runs[("static", 5)]
    assert run["secondsOverBudget"] == 0 and run["peakDrawShare"] <= 1
    assert all(seconds > 0 for seconds in run["cappedGpuSeconds"].values())


def test_polca_caps_batch_first_holds_the_budget_and_lifts_caps_when_the_load_falls(quick_runs):
    uncapped, polca = quick_runs[("none", 5)], quick_runs[("polca", 5)]
    assert uncapped["secondsOverBudget"] > 0  # the extra server needs caps at the peak
    assert polca["secondsOverBudget"] == 0
    assert polca["cappedGpuSeconds"]["batch"] > 0
    assert polca["cappedGpuSeconds"]["critical"] == 0
    assert polca["capsLifted"] > 0
    assert polca["trainingThroughput"] < 1
    assert polca["criticalP99TtftMs"] == uncapped["criticalP99TtftMs"]  # critical never capped
    assert polca["decisions"] == (QUICK.warmup_s + QUICK.duration_s) / QUICK.interval_s


def test_the_search_bisects_to_the_largest_count_that_fits():
    tried: list[int] = []

    def fits_up_to(limit: int):
        def fits(n: int) -> bool:
            tried.append(n)
            return n <= limit

        return fits

    assert _largest_fitting(12, 16, 36, fits_up_to(28)) == 28
    assert len(tried) <= 7
    assert _largest_fitting(12, 16, 36, fits_up_to(40)) == 36  # the ceiling
    assert _largest_fitting(12, 16, 36, fits_up_to(13)) == 13  # below the goal
    assert _largest_fitting(12, 16, 36, fits_up_to(5)) == 12  # nothing fits: nameplate


def test_bad_settings_and_parameters_are_refused_naming_the_flag():
    with pytest.raises(ValueError, match="--training-servers"):
        replace(QUICK, training_servers=5).check()
    with pytest.raises(ValueError, match="--interval"):
        replace(QUICK, interval_s=2.5).check()
    with pytest.raises(ValueError, match="--polca-params refused: capThreshold"):
        power_bench.run_bench(replace(QUICK, params={"polca": {"capThreshold": 0.99}}))


def test_a_quick_run_prints_the_table_and_writes_the_json(tmp_path, capsys):
    path = tmp_path / "powercap.json"

    assert main(["bench", "powercap", "--quick", "--json", str(path)]) == 0

    out = capsys.readouterr().out
    report = json.loads(path.read_text())
    assert "POLICY" in out and "CRIT P99 TTFT MS" in out and "polca:" in out
    assert report["bench"] == "powercap" and report["machine"]["simulationOnly"] is True
    assert report["settings"]["nameplateServers"] == 4
    assert {r["policy"] for r in report["results"]} == set(POLICIES)
    assert report["results"][0]["provisioning"] == "nameplate"
    goals = report["goals"]
    assert {"extraServersMet", "sloLossMet", "criticalP99Met", "violationsMet"} <= set(goals)
    fitting = [e["servers"] for e in report["search"] if e["fits"]]
    assert goals["polcaServers"] == max(fitting, default=4)
    assert report["limits"] and report["model"]["tdpWatts"] == 700.0
