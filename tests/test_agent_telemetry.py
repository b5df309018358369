"""Agent telemetry: the simulated power model, the CPU device, and the sample's shape."""

from __future__ import annotations

import sys

import pytest

from agents import telemetry
from agents.devices import GPU_TYPES, parse_simulate
from controlplane.telemetry.schema import TelemetrySample

MOMENT = 1_700_000_000.0


def one(gpu_type: str = "H100") -> dict:
    return parse_simulate(f"1x{gpu_type}")[0]


def test_every_simulated_type_has_a_power_model():
    assert set(telemetry.POWER_MODELS) == set(GPU_TYPES)


def test_more_load_draws_more_power_and_shows_more_utilization():
    device = one()
    readings = [telemetry.simulated_sample(device, load, moment=MOMENT) for load in (0.0, 0.3, 0.6, 1.0)]

    powers = [r["powerW"] for r in readings]
    utilizations = [r["utilization"] for r in readings]
    assert powers == sorted(powers) and len(set(powers)) == 4
    assert utilizations == sorted(utilizations) and utilizations[0] == 0.0
    assert utilizations[2] == pytest.approx(60.0, abs=telemetry.JITTER_PERCENT)
    assert readings[0]["smClockMHz"] < readings[1]["smClockMHz"] == telemetry.POWER_MODELS["H100"].boost_mhz
    assert readings[0]["memoryUsedMiB"] < readings[3]["memoryUsedMiB"] <= device["memoryMiB"]
    assert readings[0]["temperatureC"] < readings[3]["temperatureC"]


@pytest.mark.parametrize("gpu_type", sorted(GPU_TYPES))
def test_power_stays_between_idle_and_the_limit_for_every_type(gpu_type):
    device = one(gpu_type)
    limit = device["powerLimitW"]
    for step in range(11):
        reading = telemetry.simulated_sample(device, step / 10, moment=MOMENT + step)
        assert 0.1 * limit <= reading["powerW"] <= limit
        assert 0.0 <= reading["utilization"] <= 100.0
    idle = telemetry.simulated_sample(device, 0.0, moment=MOMENT)["powerW"]
    assert 0.1 <= idle / limit <= 0.15 + 1e-9


def test_a_power_cap_below_demand_clamps_draw_and_lowers_the_clock():
    device = one()
    free = telemetry.simulated_sample(device, 1.0, moment=MOMENT)
    capped = telemetry.simulated_sample(device, 1.0, limit=400.0, moment=MOMENT)

    assert capped["powerW"] == 400.0 == capped["powerLimitW"]
    assert capped["smClockMHz"] < free["smClockMHz"]
    assert capped["utilization"] == free["utilization"]


def test_collect_is_a_valid_telemetry_sample_and_deterministic_for_a_moment():
    devices = parse_simulate("2xH100,1xL4")
    load = {0: 0.9, 2: 0.5}

    first = telemetry.collect(devices, load, workloads={"chat-0": {"tokensPerSecond": 3.0}}, now=MOMENT)
    again = telemetry.collect(devices, load, workloads={"chat-0": {"tokensPerSecond": 3.0}}, now=MOMENT)

    parsed = TelemetrySample.model_validate(first)
    assert first == again
    assert [d.index for d in parsed.devices] == [0, 1, 2]
    assert parsed.devices[1].utilization == 0.0
    assert parsed.workloads == {"chat-0": {"tokensPerSecond": 3.0}}


def test_collect_applies_the_power_limits_a_backend_set():
    devices = parse_simulate("1xA100-80GB")

    reading = telemetry.collect(devices, {0: 1.0}, limits={0: 250.0}, now=MOMENT)["devices"][0]

    assert reading["powerW"] <= 250.0 == reading["powerLimitW"]


def test_a_gpu_without_a_working_nvml_never_breaks_collect():
    devices = [{"index": 0, "type": "H100", "memoryMiB": 81559, "healthy": True}]

    parsed = TelemetrySample.model_validate(telemetry.collect(devices))

    assert [d.index for d in parsed.devices] == [0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux only")
def test_the_cpu_device_reports_utilization_and_memory_on_linux():
    devices = [{"index": 0, "type": "CPU", "memoryMiB": 1024, "healthy": True}]

    reading = TelemetrySample.model_validate(telemetry.collect(devices)).devices[0]

    assert reading.utilization is not None and 0.0 <= reading.utilization <= 100.0
    assert reading.memoryUsedMiB is not None and reading.memoryUsedMiB > 0
    assert reading.powerW is None


def test_cpu_utilization_is_measured_between_calls(tmp_path):
    stat, meminfo = tmp_path / "stat", tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree: 1 kB\nMemAvailable:    6000000 kB\n")
    sampler = telemetry.CpuSampler(str(stat), str(meminfo))
    #                user nice system idle iowait irq softirq steal
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
    since_boot = sampler.utilization()
    stat.write_text("cpu  190 0 100 810 0 0 0 0 0 0\ncpu0 1 2 3 4\n")

    assert since_boot == 20.0
    assert sampler.utilization() == 90.0
    assert sampler.memory_used_mib() == 10000000 // 1024


def test_a_missing_proc_file_gives_none_rather_than_an_error(tmp_path):
    sampler = telemetry.CpuSampler(str(tmp_path / "absent"), str(tmp_path / "absent"))

    assert sampler.sample(0) == {
        "index": 0,
        "utilization": None,
        "memoryUsedMiB": None,
        "powerW": None,
        "powerLimitW": None,
        "temperatureC": None,
        "smClockMHz": None,
    }
