"""The simulator against the real engine: the acceptance check of issue 5.

The tiny model (``builtin:tiny-llama``: 4 layers, hidden 256, fp32 on the CPU) is profiled on
this machine with ``flotilla profile``'s code, then one seeded Poisson trace is replayed
through the real torch engine in real time and through ``plugins.sim.simulate`` with the
measured profile. TTFT and TPOT (mean, P50, P90) must agree within 25%.

Honest by construction: every figure is measured in this run, the profile is the plain
least-squares fit, the trace runs once, and nothing is scaled after the fact. The load is
half of what the engine itself completes with the queue full (measured here too, the default
of ``flotilla profile --validate``): the engine is then busy ~90% of the time, batching and
queueing as a busy server does without being overloaded. ``pytest -s`` prints the figures,
with how much CPU the process got while sampling and while the engine was busy. Under
``MIN_CPU_PER_SECOND`` other work on the machine took the engine's core and the real latencies
include that wait; such a run is reported as skipped (inconclusive) -- never as passed, and
never run again.
"""

from __future__ import annotations

import os
import time

import pytest

from agents.runtimes.serve.profiling import Grid, Target, capacity, measure, validate
from cli.profile import DEFAULT_UTILISATION, validation_table
from plugins.sim import LengthDist

# A timing measurement, like a benchmark: inside the full suite, on CI's shared 2-core host,
# it read TPOT +25.8% and +40% while a fresh process on a quiet machine reads within 8%.
# `make validate` runs it on its own; the project's rule is that timing targets are
# checked by benchmarks, not by the test suite.
pytestmark = [pytest.mark.slow, pytest.mark.validation]

MODEL = {"source": "builtin:tiny-llama"}
INPUTS = LengthDist.uniform(32, 160)
OUTPUTS = LengthDist.uniform(16, 64)
# Prefill over the trace's prompt lengths, decode over its batch sizes and sequence lengths
# (at most 160 + 64 tokens): the range an operator would profile for this traffic.
GRID = Grid(
    prompt_lengths=(8, 16, 32, 64, 96, 128, 160, 192),
    batch_sizes=(1, 2, 4, 8, 16, 32),
    context_lengths=(16, 64, 128, 192, 256),
    repeats=4,
    passes=3,
)
UTILISATION = DEFAULT_UTILISATION
REPLAY_S = 20.0
TOLERANCE_PERCENT = 25.0
# The comparison means something only while the engine has its core: with one torch thread a
# busy engine uses ~1.00 CPU-second per second. Below this, other work on the machine took
# more than 5% of it, and at ~90% busy that alone moves the real latencies by tens of percent
# (seen here: 0.86 gave -30% to -60%), so the run measures the neighbour, not the simulator.
MIN_CPU_PER_SECOND = 0.95
# The profile is measured again after the replay. Between the two the machine must have kept
# its speed: in CI the core was free throughout (1.00 CPU-second per second) and yet decode
# steps were timed ~40% slower while profiling than they ran during the replay (a shared
# host's frequency or memory bandwidth moving under us). A profile that does not hold still
# from before to after cannot say what the simulator predicts, only how the host drifted.
MAX_DRIFT_PERCENT = 10.0
# Where the two profiles are compared: the trace's typical prompt, and a decode step of the
# batch and context a half-loaded engine runs.
DRIFT_POINTS = {"prefill 96 tokens": ("prefill", 96), "decode 8 x 128": ("decode", (8, 8 * 128))}


def step_ms(profile, kind: str, point) -> float:
    return profile.prefill_ms(point) if kind == "prefill" else profile.decode_ms(*point)


def test_the_simulator_predicts_the_real_engine_within_25_percent():
    started = time.perf_counter()
    load_before = os.getloadavg()
    # One torch thread for profiling and replay alike: see agents/runtimes/serve/profiling.py.
    target = Target.build(MODEL, "cpu", threads=1)
    measurement = measure(target, "CPU", GRID)
    full = capacity(target, INPUTS, OUTPUTS)
    rate = UTILISATION * full
    result = validate(
        target, measurement.profile, rate, round(rate * REPLAY_S), INPUTS, OUTPUTS,
        seed=0, utilisation=UTILISATION,
    )  # fmt: skip
    after = measure(target, "CPU", GRID)
    drift = {
        name: 100 * (step_ms(after.profile, *point) / step_ms(measurement.profile, *point) - 1)
        for name, point in DRIFT_POINTS.items()
    }
    load_after = os.getloadavg()
    elapsed = time.perf_counter() - started

    report = "\n".join(
        [
            f"\nprofile of {measurement.profile.model} on {measurement.measured_on}: "
            f"fit error {measurement.fit_error_percent:.1f}% over {len(measurement.prefill_samples)} prefill "
            f"and {len(measurement.decode_samples)} decode samples, "
            f"{measurement.cpu_per_second:.2f} CPU-seconds per second while sampling",
            f"capacity {full:.1f} requests/s; replayed {result.requests} requests at {rate:.1f}/s "
            f"({UTILISATION:.0%}) over {result.duration_s:.1f} s; "
            f"submit lag at most {result.max_submit_lag_ms:.1f} ms",
            f"engine busy {result.busy_fraction:.0%} of the replay, with {result.cpu_per_busy_second:.2f} "
            f"CPU-seconds per busy second (1.00: it had the core to itself); load average "
            f"{load_before[0]:.2f} before, {load_after[0]:.2f} after, on {os.cpu_count()} CPUs; "
            f"{elapsed:.0f} s in all",
            "profile re-measured after the replay, change: "
            + ", ".join(f"{name} {value:+.1f}%" for name, value in drift.items()),
            validation_table(result),
        ]
    )
    print(report)
    if max(abs(value) for value in drift.values()) > MAX_DRIFT_PERCENT:
        pytest.skip(f"inconclusive: the machine's speed drifted between profiling and replay{report}")
    got = min(measurement.cpu_per_second, after.cpu_per_second, result.cpu_per_busy_second)
    if got < MIN_CPU_PER_SECOND:
        pytest.skip(
            f"inconclusive: other work took the engine's CPU ({got:.2f} CPU-seconds per second){report}"
        )
    misses = [
        f"{metric} {stat}: {result.error_percent(metric, stat):+.1f}%"
        for metric in result.figures
        for stat in result.figures[metric]
        if abs(result.error_percent(metric, stat)) > TOLERANCE_PERCENT
    ]
    assert not misses, f"simulated vs real beyond {TOLERANCE_PERCENT:.0f}%: {', '.join(misses)}{report}"
