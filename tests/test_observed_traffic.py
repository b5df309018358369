"""A Deployment's traffic measured live: runtime counts, telemetry names, aggregation, sizing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import transaction

from agents.agent import flat_numbers
from agents.runtimes.serve.engine import Engine
from agents.runtimes.serve.metrics import LENGTH_BUCKETS, ServingMetrics
from agents.runtimes.serve.sampling import SamplingParams
from common.specs import DeploymentSpec, LengthHistogram
from controlplane import observed_traffic, store, tasks
from controlplane.apply import apply
from controlplane.controllers import owners
from controlplane.observed_traffic import Measurement, Reading, observation, replica_rate
from controlplane.telemetry import store as telemetry
from controlplane.telemetry.schema import MAX_METRICS, METRIC_NAME_RE, TelemetrySample
from plugins.planning import PlanProblem, demand_of
from plugins.sim.workload import DEFAULT_BUCKETS
from tests.conftest import deployment
from tests.test_serve_engine import constant_model
from tests.test_sizing_controller import CLUSTER
from tests.test_sizing_schedulers import LLAMA_8B

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def finished(metrics: ServingMetrics, prompt: int, output: int, count: int = 1, reason: str = "stop") -> None:
    for _ in range(count):
        metrics.record_finish(reason, prompt, 0.05, 0.01, output_tokens=output)


# --- the serving runtime ---------------------------------------------------------------


def test_the_runtime_counts_on_the_schedulers_default_buckets():
    assert LENGTH_BUCKETS == DEFAULT_BUCKETS
    assert observed_traffic.BUCKETS == LENGTH_BUCKETS


def test_finished_requests_are_counted_in_their_input_and_output_bucket():
    metrics = ServingMetrics()
    finished(metrics, 100, 50)  # <= 128 in, <= 64 out
    finished(metrics, 128, 64)  # edges are inclusive upper bounds
    finished(metrics, 600, 300, count=2)  # (512, 2048] in, (256, 1024] out
    finished(metrics, 50_000, 9_000)  # longer than the last edges: the last buckets
    finished(metrics, 100, 3, reason="cancelled")  # cut short: not what the traffic asks for
    finished(metrics, 100, 0, reason="abort")
    counts = metrics.snapshot({})["lengthCounts"]
    assert len(counts) == LENGTH_BUCKETS.size
    assert {key: n for key, n in counts.items() if n} == {"0_0": 2, "2_2": 2, "3_2": 1}
    assert metrics.snapshot({})["requestsTotal"] == 7  # every finish still counts as a request


def test_the_engine_records_each_finished_requests_prompt_and_output_length():
    engine = Engine(constant_model(ord("a")), kv_blocks=64)
    engine.generate(
        [[5] * 150, [5] * 10],
        [SamplingParams(max_tokens=80, ignore_eos=True), SamplingParams(max_tokens=5, ignore_eos=True)],
    )
    counts = engine.stats()["lengthCounts"]
    assert {key: n for key, n in counts.items() if n} == {"1_1": 1, "0_0": 1}


def test_the_length_counts_are_valid_telemetry_metrics_within_the_limit():
    metrics = ServingMetrics()
    for reason in ("stop", "length", "cancelled", "abort", "error"):  # every reason's metric at once
        finished(metrics, 300, 100, reason=reason)
    gauges = {"running": 1, "waiting": 0, "kvBlocksUsed": 2, "kvBlocksFree": 6, "kvBlocksTotal": 8}
    flat = flat_numbers(metrics.snapshot(gauges))
    assert flat["lengthCounts.1_1"] == 2.0 and flat["lengthCounts.0_0"] == 0.0
    assert flat["uptimeSeconds"] >= 0
    assert all(METRIC_NAME_RE.match(name) for name in flat)
    assert len(flat) <= MAX_METRICS
    TelemetrySample.model_validate({"workloads": {"chat-serve-0": flat}})


def test_prometheus_text_has_the_counts_by_bucket_edges():
    metrics = ServingMetrics()
    finished(metrics, 100, 50)
    finished(metrics, 50_000, 9_000)
    text = metrics.prometheus({})
    assert "# TYPE flotilla_serve_request_lengths_total counter" in text
    assert 'flotilla_serve_request_lengths_total{input_le="128",output_le="64"} 1' in text
    assert 'flotilla_serve_request_lengths_total{input_le="+Inf",output_le="+Inf"} 1' in text
    assert 'flotilla_serve_request_lengths_total{input_le="512",output_le="256"} 0' in text


# --- one replica's rate ----------------------------------------------------------------


def read(seconds: float, total: float | None, uptime: float | None = None) -> Reading:
    metrics = {} if total is None else {"requestsTotal": total}
    if uptime is not None:
        metrics["uptimeSeconds"] = uptime
    return Reading(T0 + timedelta(seconds=seconds), metrics)


def test_a_replicas_rate_is_its_request_increase_over_the_time_between_readings():
    assert replica_rate(read(0, 100, 1000), read(200, 300, 1200), 300) == (200, 200)


def test_a_restarted_replica_counts_from_zero_over_its_uptime():
    assert replica_rate(read(0, 5000, 9000), read(200, 60, 120), 300) == (60, 120)


def test_a_reset_without_an_uptime_counts_what_the_new_process_has():
    assert replica_rate(read(0, 5000), read(200, 60), 300) == (60, 200)


def test_a_replica_started_within_the_window_needs_no_older_reading():
    assert replica_rate(None, read(200, 90, 90), 300) == (90, 90)
    assert replica_rate(read(0, None), read(200, 90, 90), 300) == (90, 90)


def test_a_missing_older_reading_of_a_long_running_replica_gives_no_rate():
    assert replica_rate(read(0, None), read(200, 9000, 5000), 300) is None
    assert replica_rate(read(0, 10, 100), read(200, None, 300), 300) is None


# --- aggregation over a Deployment's replicas -----------------------------------------


def runtime_metrics(total: float, uptime: float, **buckets: float) -> dict[str, float]:
    """A replica's flat runtime metrics: every length bucket, zero unless given (``b0_0=3``)."""
    columns = len(DEFAULT_BUCKETS.output_edges)
    flat = {f"lengthCounts.{b // columns}_{b % columns}": 0.0 for b in range(DEFAULT_BUCKETS.size)}
    flat.update({f"lengthCounts.{key[1:]}": float(n) for key, n in buckets.items()})
    return {"requestsTotal": total, "uptimeSeconds": uptime, **flat}


def steady(
    placed: dict[str, str],
    moments: list[datetime],
    restart_second_at: datetime | None = None,
    same_mix: bool = True,
    extra: dict[str, dict[str, float]] | None = None,
) -> None:
    """Heartbeats from both replicas' nodes at ``moments``, each replica serving 1 req/s.

    The first replica started 1000 s before T0, the second 2000 s before (or at
    ``restart_second_at``, after which its counters begin again). The first sends 3/4 of
    its requests to bucket 0_0 and 1/4 to 1_1; the second the same, or all to 2_2.
    """
    (first, first_node), (second, second_node) = sorted(placed.items())
    for moment in moments:
        total = (moment - (T0 - timedelta(seconds=1000))).total_seconds()
        metrics = runtime_metrics(total, total, b0_0=total * 3 / 4, b1_1=total / 4)
        telemetry.record(first_node, {"workloads": {first: metrics, **(extra or {})}}, moment)
        began = T0 - timedelta(seconds=2000)
        if restart_second_at is not None and moment >= restart_second_at:
            began = restart_second_at
        total = (moment - began).total_seconds()
        mix = {"b0_0": total * 3 / 4, "b1_1": total / 4} if same_mix else {"b2_2": total}
        telemetry.record(second_node, {"workloads": {second: runtime_metrics(total, total, **mix)}}, moment)


@pytest.fixture
def placed(db, add_node) -> dict[str, str]:
    """Deployment ``chat`` with two replicas, one on each node: workload name -> node."""
    add_node("gpu-a", gpus=1)
    add_node("gpu-b", gpus=1)
    apply([deployment("chat", replicas=2)], actor="test")
    owners.reconcile("Deployment", "chat")
    owned = owners.owned_workloads(store.get("Deployment", "chat"))
    workloads = {w.name: w.node_name for w in owned if w.spec["role"] != "router"}  # what reports traffic
    assert sorted(workloads.values()) == ["gpu-a", "gpu-b"]
    return workloads


def observed_workload() -> dict[str, Any]:
    return store.get("Deployment", "chat").status["observedWorkload"]


def minutes(first: int, last: int) -> list[datetime]:
    """T0 + k minutes for k from ``first`` to ``last`` (seconds given in minutes)."""
    return [T0 + timedelta(minutes=k) for k in range(first, last + 1)]


def test_replicas_latest_counts_are_summed_and_rates_added_across_a_restart(placed):
    steady(placed, [T0 - timedelta(seconds=240), T0], T0 - timedelta(seconds=120), same_mix=False)
    assert observed_traffic.observe_all(now=T0) == {"measured": 1, "written": 1}
    observed = observed_workload()
    # 240 requests in 240 s from the first; 120 in the 120 s since the second restarted.
    assert observed["requestsPerSecond"] == pytest.approx(2.0)
    assert observed["windowSeconds"] == 240
    assert observed["requests"] == 1000 + 120  # the latest counts of both
    fractions = observed["histogram"]["fractions"]
    assert fractions[0][0] == pytest.approx(750 / 1120, abs=1e-4)
    assert fractions[1][1] == pytest.approx(250 / 1120, abs=1e-4)
    assert fractions[2][2] == pytest.approx(120 / 1120, abs=1e-4)
    assert observed["observedAt"] == "2025-03-01T12:00:00Z"
    # The shape of spec.workload.histogram: an operator may copy it into the spec.
    LengthHistogram.model_validate(observed["histogram"])


def test_samples_outside_the_window_and_other_owners_workloads_are_left_out(placed):
    other = {"other-serve-0": runtime_metrics(1e6, 1e6, b3_2=1e6)}
    steady(placed, [T0 - timedelta(hours=1), T0 - timedelta(seconds=240), T0], extra=other)
    observed_traffic.observe_all(now=T0)
    observed = observed_workload()
    assert observed["requests"] == 1000 + 2000 and observed["requestsPerSecond"] == pytest.approx(2.0)
    assert observed["windowSeconds"] == 240


def test_below_the_minimum_no_histogram_is_published_only_the_count(placed, settings):
    settings.FLOTILLA_OBSERVED_MIN_REQUESTS = 5000
    steady(placed, [T0 - timedelta(seconds=240), T0])
    observed_traffic.observe_all(now=T0)
    observed = observed_workload()
    assert "histogram" not in observed
    assert observed["requests"] == 3000 and observed["requestsPerSecond"] == pytest.approx(2.0)


def test_a_replica_seen_for_too_short_a_time_gives_no_rate(placed):
    steady(placed, [T0 - timedelta(seconds=10), T0])
    observed_traffic.observe_all(now=T0)
    assert "requestsPerSecond" not in observed_workload()


def test_a_replica_whose_older_reading_is_missing_leaves_the_rate_unmeasured(placed):
    steady(placed, [T0 - timedelta(seconds=240), T0])
    second, node = sorted(placed.items())[1]
    telemetry.record(node, {"workloads": {}}, T0 - timedelta(seconds=240))  # /stats did not answer
    observed_traffic.observe_all(now=T0)
    observed = observed_workload()
    assert "requestsPerSecond" not in observed  # not 1 req/s: half the traffic is unaccounted for
    assert observed["requests"] == 3000


def test_nothing_is_written_while_no_replica_reports(placed):
    assert observed_traffic.observe_all(now=T0) == {"measured": 1, "written": 0}
    assert "observedWorkload" not in store.get("Deployment", "chat").status


def test_a_hand_written_observation_is_replaced_not_a_crash(placed):
    with transaction.atomic():
        owner = store.get("Deployment", "chat", for_update=True)
        store.update_status(owner, {**owner.status, "observedWorkload": {"observedAt": 5, "histogram": "x"}})
    steady(placed, [T0 - timedelta(seconds=240), T0])
    assert observed_traffic.observe_all(now=T0)["written"] == 1
    assert observed_workload()["requests"] == 3000


def test_a_published_histogram_is_kept_when_a_restart_leaves_too_few_requests():
    published = observation({}, Measurement([300, 100] + [0] * 10, 2.0, 240), 200, T0)
    assert published["requests"] == 400
    after_restart = observation(published, Measurement([5] + [0] * 11, 0.5, 60), 200, T0)
    assert after_restart["histogram"] == published["histogram"] and after_restart["requests"] == 400
    assert after_restart["requestsPerSecond"] == 0.5  # the rate is always the latest
    no_rate = observation(published, Measurement([5] + [0] * 11, None), 200, T0)
    assert no_rate["requestsPerSecond"] == 2.0 and no_rate["windowSeconds"] == 240
    assert observation(published, Measurement(None, None), 200, T0) == {}  # nobody reported


def test_the_status_write_leaves_spec_generation_and_other_status_alone(placed):
    before = store.get("Deployment", "chat")
    steady(placed, [T0 - timedelta(seconds=240), T0])
    observed_traffic.observe_all(now=T0)
    after = store.get("Deployment", "chat")
    assert after.generation == before.generation and after.spec == before.spec
    assert after.resource_version > before.resource_version
    assert {k: v for k, v in after.status.items() if k != "observedWorkload"} == before.status


def test_steady_traffic_is_not_written_again_until_the_observation_is_stale(placed):
    steady(placed, minutes(-4, 10))
    assert observed_traffic.observe_all(now=T0)["written"] == 1
    version = store.get("Deployment", "chat").resource_version
    for k in range(1, 10):  # the same rate and mix every minute: nothing worth a write
        assert observed_traffic.observe_all(now=T0 + timedelta(minutes=k))["written"] == 0
    assert store.get("Deployment", "chat").resource_version == version
    stale = T0 + timedelta(seconds=observed_traffic.REFRESH_SECONDS)
    assert observed_traffic.observe_all(now=stale)["written"] == 1
    assert observed_workload()["observedAt"] == "2025-03-01T12:10:00Z"


def test_a_changed_rate_is_written_at_once(placed):
    steady(placed, [T0 - timedelta(seconds=240), T0])
    observed_traffic.observe_all(now=T0)
    later = T0 + timedelta(minutes=1)
    first, node = sorted(placed.items())[0]
    busier = 1060 + 300  # 300 more requests than steady in the last minute
    metrics = runtime_metrics(busier, 1060, b0_0=busier * 3 / 4, b1_1=busier / 4)
    telemetry.record(node, {"workloads": {first: metrics}}, later)
    assert observed_traffic.observe_all(now=later)["written"] == 1
    assert observed_workload()["requestsPerSecond"] == pytest.approx(2.0 + 1.0)


def test_the_beat_task_measures_under_a_lease(placed, monkeypatch):
    steady(placed, [T0 - timedelta(seconds=240), T0])
    monkeypatch.setattr(observed_traffic, "utcnow", lambda: T0)
    assert tasks.observe_traffic() == {"measured": 1, "written": 1}
    assert "observedWorkload" in store.get("Deployment", "chat").status


# --- sizing: declared > observed > default ----------------------------------------------

OBSERVED = {
    "requestsPerSecond": 12.5,
    "windowSeconds": 300,
    "requests": 4000,
    "histogram": {
        "inputEdges": list(DEFAULT_BUCKETS.input_edges),
        "outputEdges": list(DEFAULT_BUCKETS.output_edges),
        "fractions": [[0.5, 0.0, 0.0], [0.0, 0.25, 0.0], [0.0, 0.0, 0.25], [0.0, 0.0, 0.0]],
    },
    "observedAt": "2025-03-01T12:00:00Z",
}


def sizing_spec(**workload: Any) -> dict[str, Any]:
    return {
        "model": {"source": "builtin:tiny-llama", "config": LLAMA_8B},
        "slo": {"ttftMs": 2000, "tpotMs": 100},
        "workload": workload,
    }


def sizing_deployment(**workload: Any) -> DeploymentSpec:
    return DeploymentSpec.model_validate(sizing_spec(**workload))


def test_declared_lengths_and_rate_win_over_observed_ones():
    declared = {"inputEdges": [256], "outputEdges": [64], "fractions": [[1.0]]}
    demand = demand_of(sizing_deployment(requestsPerSecond=3, histogram=declared), observed=OBSERVED)
    assert (demand.rate, demand.rate_source, demand.source) == (3.0, "declared", "declared")
    assert demand.buckets.input_edges == [256]
    pair = demand_of(
        sizing_deployment(requestsPerSecond=3, inputTokens=900, outputTokens=90), observed=OBSERVED
    )
    assert (pair.source, pair.points) == ("declared", [(900, 90)])


def test_observed_lengths_and_rate_fill_in_what_the_spec_leaves_out():
    demand = demand_of(sizing_deployment(), observed=OBSERVED)
    assert (demand.rate, demand.rate_source, demand.source) == (12.5, "observed", "observed")
    assert demand.buckets == DEFAULT_BUCKETS
    assert demand.fractions[0] == pytest.approx(0.5) and sum(demand.fractions) == pytest.approx(1.0)
    assert "measured from live traffic" in demand.describe_source()


def test_without_an_observation_the_default_lengths_apply_and_a_rate_is_required():
    demand = demand_of(sizing_deployment(requestsPerSecond=3), observed={"requests": 12})
    assert (demand.source, demand.points) == ("default", [(512, 128)])
    with pytest.raises(PlanProblem) as caught:
        demand_of(sizing_deployment(), observed={"requests": 12, "requestsPerSecond": 0.0})
    assert caught.value.field == "spec.workload.requestsPerSecond"


def test_a_malformed_observation_is_ignored_rather_than_failing_the_plan():
    broken = {"requestsPerSecond": "fast", "histogram": {"inputEdges": [1], "fractions": "x"}}
    demand = demand_of(sizing_deployment(requestsPerSecond=3), observed=broken)
    assert (demand.rate, demand.source) == (3.0, "default")


def observed_chat(add_node) -> dict:
    """A melange Deployment with a declared rate, applied, with OBSERVED in its status."""
    add_node("a100-node", gpus=4, gpu_type="A100-80GB", memory_mib=81920)
    document = deployment("chat", replicas=1, **sizing_spec(requestsPerSecond=5))
    document["spec"]["policies"] = {"scheduler": "melange"}
    apply([CLUSTER, document], actor="test")
    with transaction.atomic():
        owner = store.get("Deployment", "chat", for_update=True)
        store.update_status(owner, {"observedWorkload": OBSERVED})
    return document


def test_the_owner_controller_sizes_with_the_observed_histogram_and_says_so(add_node):
    observed_chat(add_node)
    owners.reconcile("Deployment", "chat")
    plan = store.get("Deployment", "chat").status["plan"]
    assert plan["notes"][0] == (
        "workload: 5 req/s declared; lengths measured from live traffic (status.observedWorkload)"
    )


def test_the_dry_run_plan_of_a_stored_deployment_uses_its_observation(operator, add_node):
    document = observed_chat(add_node)
    response = operator.apply(document, dry_run=True)
    assert response.status_code == 200, response.content
    plans = {plan["policy"]: plan for plan in response.json()["results"][0]["schedule"]["plans"]}
    assert "lengths measured from live traffic" in plans["melange"]["notes"][0]
