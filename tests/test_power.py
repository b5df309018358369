"""Power backends: simulate clamps, off refuses, nvml refuses without root and confirmation.

The nvml backend is exercised only on its refusal paths: nothing here may
change a real GPU's power limit (DESIGN §6).
"""

from __future__ import annotations

import os

import pytest

from agents import power
from agents.devices import parse_simulate
from agents.telemetry import collect


@pytest.fixture
def devices() -> list[dict]:
    return parse_simulate("1xH100,1xL4")


def test_every_backend_satisfies_the_protocol(devices):
    assert isinstance(power.make_backend("off", devices), power.PowerBackend)
    assert isinstance(power.make_backend("simulate", devices), power.PowerBackend)


def test_simulate_clamps_each_limit_to_its_devices_constraints(devices):
    backend = power.make_backend("simulate", devices)

    assert backend.constraints == {0: (210.0, 700.0), 1: (36.0, 72.0)}
    assert backend.set_limit(0, 100) == 210.0
    assert backend.set_limit(0, 5000) == 700.0
    assert backend.set_limit(0, 450.5) == 450.5
    assert backend.set_limit(1, 10) == 36.0
    assert backend.limits() == {0: 450.5, 1: 36.0}


def test_simulate_starts_at_the_default_limits_and_keeps_state_per_backend(devices):
    first = power.make_backend("simulate", devices)
    first.set_limit(0, 300)

    assert power.make_backend("simulate", devices).limits() == {0: 700.0, 1: 72.0}


def test_simulate_refuses_an_unknown_device_or_a_non_finite_limit(devices):
    backend = power.make_backend("simulate", devices)

    with pytest.raises(power.PowerBackendError, match="device 7"):
        backend.set_limit(7, 300)
    with pytest.raises(ValueError, match="finite"):
        backend.set_limit(0, float("inf"))


def test_simulated_limits_cap_the_simulated_power_draw(devices):
    backend = power.make_backend("simulate", devices)
    backend.set_limit(0, 250)

    reading = collect(devices, {0: 1.0}, limits=backend.limits())["devices"][0]

    assert reading["powerW"] == 250.0


def test_off_observes_limits_but_refuses_to_set_them(devices):
    backend = power.make_backend("off", devices)

    assert backend.limits() == {0: 700.0, 1: 72.0}
    with pytest.raises(power.PowerBackendError, match="power backend is off"):
        backend.set_limit(0, 300)


def test_nvml_refuses_without_confirmation_even_as_root(devices, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)

    with pytest.raises(PermissionError) as exc:
        power.make_backend("nvml", devices)

    assert "not confirmed" in str(exc.value) and "root" in str(exc.value)


def test_nvml_refuses_when_not_root_even_if_confirmed(devices, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)

    with pytest.raises(PermissionError) as exc:
        power.make_backend("nvml", devices, confirm=True)

    assert "not running as root" in str(exc.value)
    assert "not confirmed" not in str(exc.value)


def test_an_unknown_backend_name_is_refused_with_the_choices(devices):
    with pytest.raises(ValueError, match="off, simulate, nvml"):
        power.make_backend("turbo", devices)
