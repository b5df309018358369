"""What the agent sends as a Workload's runtime metrics: flat numbers, latency included."""

from agents.agent import flat_numbers
from agents.runtimes.serve.metrics import ServingMetrics
from controlplane.telemetry.schema import TelemetrySample


def test_nested_latency_summaries_become_dotted_metrics():
    flat = flat_numbers(
        {"requestsTotal": 3, "ttftSeconds": {"count": 3, "p50": 0.02, "p99": None}, "ok": True, "name": "x"}
    )
    assert flat == {"requestsTotal": 3.0, "ttftSeconds.count": 3.0, "ttftSeconds.p50": 0.02}


def test_the_serving_runtimes_stats_pass_the_telemetry_schema():
    metrics = ServingMetrics()
    metrics.record_finish("stop", prompt_tokens=12, ttft=0.05, tpot=0.01)
    flat = flat_numbers(metrics.snapshot({"kvBlocksUsed": 2, "kvBlocksFree": 6}))
    assert flat["ttftSeconds.p99"] == 0.05 and flat["tpotSeconds.p50"] == 0.01
    assert flat["requests.stop"] == 1.0 and flat["kvBlocksUsed"] == 2.0
    TelemetrySample.model_validate({"devices": [], "workloads": {"chat-serve-0": flat}})
