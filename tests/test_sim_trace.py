"""Trace replay in the simulator (plugins.sim.trace): requests dealt to GPU types by their
routing shares, served, and judged; the planners and the router are the bench's."""

from __future__ import annotations

from plugins.sim import DEFAULT_BUCKETS, SHAPES, LengthDist, Slo, estimate, poisson, replay
from plugins.sim.trace import deal

INPUTS = LengthDist.lognormal(256, 0.5, 16, 1024)
OUTPUTS = LengthDist.lognormal(64, 0.5, 8, 256)
BUCKETS = DEFAULT_BUCKETS.size  # how many length buckets


def test_each_type_gets_its_share_of_every_bucket_and_none_takes_the_rest():
    requests = poisson(4.0, count=200, inputs=INPUTS, outputs=OUTPUTS, seed=2)
    routing = {"H100": [0.75] * BUCKETS, "L4": [0.25] * BUCKETS}
    streams = deal(requests, routing, DEFAULT_BUCKETS)
    assert sum(len(s) for s in streams.values()) == 200
    assert abs(len(streams["H100"]) - 150) <= BUCKETS
    assert abs(len(streams["L4"]) - 50) <= BUCKETS
    assert streams[None] == []
    assert deal(requests, routing, DEFAULT_BUCKETS) == streams  # deterministic


def test_what_no_type_takes_counts_as_a_miss():
    requests = poisson(2.0, count=60, inputs=INPUTS, outputs=OUTPUTS, seed=1)
    profiles = {"H100": estimate("H100", SHAPES["llama-3-8b"])}
    slo = Slo(ttft_ms=5000.0, tpot_ms=200.0)
    served = replay(requests, {"H100": 1}, profiles, {"H100": [1.0] * BUCKETS}, DEFAULT_BUCKETS, slo)
    halved = replay(requests, {"H100": 1}, profiles, {"H100": [0.5] * BUCKETS}, DEFAULT_BUCKETS, slo)
    assert served["requests"] == halved["requests"] == 60
    assert served["sloAttainment"] == 1.0
    assert halved["sloAttainment"] <= 0.6
    assert halved["ttftP90Ms"] is None  # the misses sit at the top, infinitely slow
