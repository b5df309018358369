"""The GPU power model (``plugins.sim.power``), the simulator's live pool that a power cap
slows, and the simulated agents' telemetry that uses the same model."""

from __future__ import annotations

import pytest

from agents import telemetry
from agents.devices import GPU_TYPES, parse_simulate
from plugins.sim import HARDWARE, SHAPES, LengthDist, estimate, poisson, simulate
from plugins.sim.power import PHASES, VOLTAGE_FLOOR_CLOCK, power_model
from plugins.sim.simulator import LivePool

H100 = power_model("H100")


@pytest.mark.parametrize("gpu_type", sorted(HARDWARE))
def test_every_gpu_type_draws_least_idle_more_decoding_and_most_prefilling(gpu_type):
    model = power_model(gpu_type)
    draws = [
        model.demand_watts("idle"),
        model.demand_watts("decode", 1),
        model.demand_watts("decode", 1000),
        model.demand_watts("train"),
        model.demand_watts("prefill"),
    ]
    assert draws == sorted(draws) and draws[-1] <= model.tdp_watts == HARDWARE[gpu_type].tdp_watts
    assert model.idle_watts < model.min_watts < model.demand_watts("prefill")


def test_the_simulated_agents_and_the_simulator_share_one_table():
    for gpu_type in GPU_TYPES:
        agent, sim = telemetry.power_model(gpu_type), power_model(gpu_type)
        assert (agent.idle_fraction, agent.min_limit_fraction) == (sim.idle, sim.min_limit)
        assert (agent.boost_mhz, agent.idle_mhz) == (sim.boost_mhz, sim.idle_mhz)


@pytest.mark.parametrize("phase", PHASES)
def test_a_limit_above_the_demand_changes_nothing(phase):
    demand = H100.demand_watts(phase, rows=16)
    assert H100.slowdown(phase, demand, rows=16) == 1.0
    assert H100.slowdown(phase, H100.tdp_watts, rows=16) == 1.0
    assert H100.draw_watts(phase, H100.tdp_watts, rows=16) == demand


@pytest.mark.parametrize("phase", PHASES)
def test_the_draw_never_exceeds_the_limit(phase):
    for limit in range(int(H100.min_watts), 701, 10):
        assert H100.draw_watts(phase, limit, rows=32) <= limit


def test_a_cap_slows_compute_bound_prefill_far_more_than_memory_bound_decode():
    cap = 0.5 * H100.tdp_watts  # Splitwise: the token phase barely notices half the TDP
    prefill, decode = H100.slowdown("prefill", cap), H100.slowdown("decode", cap, rows=64)
    assert prefill > 1.2
    assert 1.0 <= decode < 1.05
    assert H100.slowdown("decode", cap, rows=1) == 1.0  # a small batch draws less than the cap


def test_prefill_speed_at_half_power_matches_the_h100_pcie_against_the_sxm():
    # The H100 PCIe (350 W) is rated at 756 dense BF16 TFLOPS, the 700 W SXM at 989.
    assert H100.speed("prefill", 350.0) == pytest.approx(756 / 989, rel=0.05)


def test_lower_limits_slow_every_busy_phase_more_and_the_clock_is_continuous_at_the_knee():
    for phase in ("prefill", "decode", "train"):
        slowdowns = [H100.slowdown(phase, limit, rows=64) for limit in range(210, 701, 10)]
        assert slowdowns == sorted(slowdowns, reverse=True)
    demand = H100.demand_watts("prefill")
    knee = H100.idle_watts + VOLTAGE_FLOOR_CLOCK**3 * (demand - H100.idle_watts)
    assert H100.clock_share(demand, knee + 1e-6) == pytest.approx(
        H100.clock_share(demand, knee - 1e-6), abs=1e-6
    )
    assert H100.clock_share(demand, H100.idle_watts + 1) == H100.idle_mhz / H100.boost_mhz  # the floor


def test_decode_draws_more_with_a_bigger_batch_until_it_saturates():
    draws = [H100.demand_watts("decode", rows) for rows in (1, 8, 32, 64, 128)]
    assert draws[:4] == sorted(draws[:4]) and len(set(draws[:4])) == 4
    assert draws[3] == draws[4] == H100.decode_full * H100.tdp_watts


def test_an_unknown_type_needs_its_tdp_and_gets_middle_of_the_road_shares():
    with pytest.raises(ValueError, match="unknown GPU type"):
        power_model("B300")
    model = power_model("B300", tdp_watts=1000.0)
    assert model.demand_watts("prefill") == pytest.approx(950.0)
    with pytest.raises(ValueError, match="tdp_watts"):
        power_model("H100", tdp_watts=0.0)


# --- the simulator, slowed from outside -------------------------------------------------------

PROFILE = estimate("H100", SHAPES["llama-3-8b"])
TRACE = poisson(
    20.0, duration_s=20.0, inputs=LengthDist.uniform(100, 1500), outputs=LengthDist.uniform(5, 300), seed=3
)


def test_a_live_pool_advanced_in_ticks_gives_exactly_what_simulate_gives():
    pool = LivePool(TRACE, PROFILE, 2, attention="paged")
    for tick in range(1, 40):
        pool.run_until(tick * 0.5)
    expected = simulate(TRACE, PROFILE, 2, attention="paged")
    got = pool.result()
    assert len(got.requests) == len(expected.requests) == len(TRACE)
    for mine, theirs in zip(got.requests, expected.requests, strict=True):
        assert (mine.ttft_s, mine.e2e_s) == pytest.approx((theirs.ttft_s, theirs.e2e_s), rel=1e-9)
        assert mine.preemptions == theirs.preemptions


def test_phase_seconds_add_up_to_the_time_the_engine_was_busy():
    (request,) = poisson(1.0, count=1, inputs=LengthDist.fixed(800), outputs=LengthDist.fixed(50), seed=1)
    pool = LivePool([request], PROFILE)
    result = pool.result()
    prefill, decode, rows = pool.phase_seconds(0)
    assert prefill == pytest.approx(PROFILE.prefill_ms(800) / 1e3)
    assert prefill + decode == pytest.approx(result.requests[0].e2e_s)
    assert rows == pytest.approx(decode)  # one row all along


def test_scales_stretch_the_steps_that_start_after_they_are_set():
    (request,) = poisson(1.0, count=1, inputs=LengthDist.fixed(800), outputs=LengthDist.fixed(50), seed=1)
    plain = simulate([request], PROFILE).requests[0]
    pool = LivePool([request], PROFILE)
    pool.set_scales(0, 2.0, 1.5)
    slowed = pool.result().requests[0]
    assert slowed.ttft_s == pytest.approx(2.0 * plain.ttft_s)
    assert slowed.tpot_s == pytest.approx(1.5 * plain.tpot_s)
    with pytest.raises(ValueError, match="positive"):
        pool.set_scales(0, 0.0, 1.0)


# --- simulated telemetry ----------------------------------------------------------------------


def test_a_simulated_agent_under_a_cap_reports_the_model_clock():
    device = parse_simulate("1xH100")[0]
    free = telemetry.simulated_sample(device, 1.0, moment=0.0)
    capped = telemetry.simulated_sample(device, 1.0, limit=350.0, moment=0.0)
    demand = H100.busy_watts(free["utilization"] / 100)
    assert free["powerW"] == pytest.approx(demand, abs=0.01)
    assert free["powerW"] < H100.tdp_watts
    assert capped["powerW"] == 350.0
    assert capped["smClockMHz"] == pytest.approx(H100.boost_mhz * H100.clock_share(demand, 350.0), abs=0.1)
