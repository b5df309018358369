"""Telemetry storage: record, validate, downsample with both retentions, read back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from common.timeutil import now as utcnow
from controlplane.errors import Invalid
from controlplane.telemetry import store
from controlplane.telemetry.models import MinuteSample, RawSample

pytestmark = pytest.mark.django_db

# A fixed clock, far enough in the past that nothing here is "recent" by accident.
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def device(index: int = 0, utilization: float = 50.0, power: float = 300.0, **extra: Any) -> dict[str, Any]:
    return {
        "index": index,
        "utilization": utilization,
        "memoryUsedMiB": int(utilization * 100),
        "powerW": power,
        "powerLimitW": 700.0,
        "temperatureC": 40.0 + utilization / 10,
        "smClockMHz": 1980.0,
        **extra,
    }


def sample(*devices: dict[str, Any], workloads: dict | None = None) -> dict[str, Any]:
    return {"devices": list(devices) or [device()], "workloads": workloads or {}}


def problem_fields(exc: pytest.ExceptionInfo[Invalid]) -> set[str]:
    return {detail["field"] for detail in exc.value.details}


def test_a_recorded_sample_comes_back_from_a_raw_series():
    store.record(
        "gpu-1", sample(device(0, 10), device(1, 90), workloads={"chat-0": {"tokensPerSecond": 12.5}}), T0
    )

    items = store.series("gpu-1", T0 - HOUR, T0 + HOUR, "raw")

    assert len(items) == 1
    assert items[0]["at"] == "2025-03-01T12:00:00Z"
    assert [d["utilization"] for d in items[0]["devices"]] == [10, 90]
    assert items[0]["workloads"] == {"chat-0": {"tokensPerSecond": 12.5}}


def test_a_series_can_narrow_to_one_device_and_to_its_time_range():
    for second in (0, 10, 20):
        store.record("gpu-1", sample(device(0, 10), device(1, 90)), T0 + timedelta(seconds=second))
    store.record("gpu-2", sample(device(1, 5)), T0)

    items = store.series("gpu-1", T0 + timedelta(seconds=5), T0 + timedelta(seconds=20), "raw", device=1)

    assert [item["at"] for item in items] == ["2025-03-01T12:00:10Z", "2025-03-01T12:00:20Z"]
    assert all([d["index"] for d in item["devices"]] == [1] for item in items)
    assert all(item["devices"][0]["utilization"] == 90 for item in items)


def test_a_limit_keeps_the_newest_points():
    for second in range(5):
        store.record("gpu-1", sample(device(0, second)), T0 + timedelta(seconds=second))

    items = store.series("gpu-1", T0, T0 + HOUR, "raw", limit=2)

    assert [item["devices"][0]["utilization"] for item in items] == [3, 4]


def test_recording_the_same_moment_twice_keeps_the_second_sample():
    store.record("gpu-1", sample(device(0, 10)), T0)
    store.record("gpu-1", sample(device(0, 70)), T0)

    assert RawSample.objects.filter(node="gpu-1").count() == 1
    assert store.series("gpu-1", T0, T0, "raw")[0]["devices"][0]["utilization"] == 70


def test_a_malformed_sample_is_rejected_naming_each_bad_field():
    bad = sample(device(0, utilization=150.0), device(1, bogus=1))
    with pytest.raises(Invalid) as exc:
        store.record("gpu-1", bad, T0)

    assert {"telemetry.devices.0.utilization", "telemetry.devices.1.bogus"} <= problem_fields(exc)
    assert not RawSample.objects.exists()


def test_repeated_device_indices_and_bad_workload_names_are_rejected():
    with pytest.raises(Invalid) as repeated:
        store.record("gpu-1", sample(device(0), device(0)), T0)
    with pytest.raises(Invalid) as named:
        store.record("gpu-1", sample(workloads={"Not_A_Name": {"x": 1.0}}), T0)
    with pytest.raises(Invalid) as metric:
        store.record("gpu-1", sample(workloads={"chat-0": {"bad metric!": 1.0}}), T0)

    assert problem_fields(repeated) == {"telemetry.devices"}
    assert problem_fields(named) == {"telemetry.workloads"}
    assert "bad metric!" in metric.value.details[0]["message"]


def test_oversized_samples_and_non_finite_numbers_are_rejected():
    too_many = sample(*(device(i) for i in range(257)))
    with pytest.raises(Invalid) as devices:
        store.record("gpu-1", too_many, T0)
    with pytest.raises(Invalid) as nan:
        store.record("gpu-1", sample(device(0, power=float("nan"))), T0)
    with pytest.raises(Invalid) as not_object:
        store.record("gpu-1", ["devices"], T0)  # type: ignore[arg-type]

    assert problem_fields(devices) == {"telemetry.devices"}
    assert problem_fields(nan) == {"telemetry.devices.0.powerW"}
    assert problem_fields(not_object) == {"telemetry"}


def record_minute(node: str, minute: datetime, utilizations: list[float], index: int = 0) -> None:
    for n, utilization in enumerate(utilizations):
        at = minute + timedelta(seconds=n * 10)
        store.record(node, sample(device(index, utilization, power=100 + utilization)), at)


def test_downsample_folds_expired_raw_rows_into_minute_averages_and_maxima():
    record_minute("gpu-1", T0, [10, 20, 60])

    counts = store.downsample(now=T0 + 2 * HOUR)

    row = MinuteSample.objects.get(node="gpu-1", device=0, minute=T0)
    assert counts["rawFolded"] == 3 and counts["minuteWritten"] == 1
    assert row.samples == 3
    assert row.utilization_avg == pytest.approx(30.0)
    assert row.utilization_max == 60.0
    assert row.power_w_avg == pytest.approx(130.0)
    assert row.power_w_max == 160.0
    assert row.memory_used_mib_max == 6000
    assert row.temperature_c_max == pytest.approx(46.0)
    assert row.sm_clock_mhz_avg == pytest.approx(1980.0)
    assert not RawSample.objects.exists()


def test_downsample_run_twice_does_not_double_count():
    record_minute("gpu-1", T0, [10, 20, 60])
    store.downsample(now=T0 + 2 * HOUR)

    second = store.downsample(now=T0 + 2 * HOUR)

    row = MinuteSample.objects.get(node="gpu-1", device=0, minute=T0)
    assert second["rawFolded"] == 0
    assert (row.samples, row.utilization_avg) == (3, pytest.approx(30.0))


def test_a_late_sample_merges_into_its_already_folded_minute():
    record_minute("gpu-1", T0, [10, 20])
    store.downsample(now=T0 + 2 * HOUR)
    store.record("gpu-1", sample(device(0, 90, power=190)), T0 + timedelta(seconds=50))

    store.downsample(now=T0 + 2 * HOUR)

    row = MinuteSample.objects.get(node="gpu-1", device=0, minute=T0)
    assert row.samples == 3
    assert row.utilization_avg == pytest.approx(40.0)
    assert row.utilization_max == 90.0


def test_downsample_keeps_raw_rows_still_inside_the_raw_window():
    record_minute("gpu-1", T0, [10])
    record_minute("gpu-1", T0 + 50 * timedelta(minutes=1), [20])

    store.downsample(now=T0 + HOUR + timedelta(seconds=90))

    assert list(RawSample.objects.values_list("at", flat=True)) == [T0 + timedelta(minutes=50)]
    assert MinuteSample.objects.filter(minute=T0).count() == 1


def test_downsample_drops_minute_rows_past_their_retention():
    record_minute("gpu-1", T0, [10])
    record_minute("gpu-1", T0 + 2 * HOUR, [20])
    store.downsample(now=T0 + 4 * HOUR)
    assert MinuteSample.objects.count() == 2

    counts = store.downsample(now=T0 + timedelta(days=7, minutes=30))

    assert counts["minuteExpired"] == 1
    assert list(MinuteSample.objects.values_list("minute", flat=True)) == [T0 + 2 * HOUR]


def test_both_retentions_are_read_from_the_environment_at_call_time(monkeypatch):
    monkeypatch.setenv("FLOTILLA_TELEMETRY_RAW_SECONDS", "120")
    monkeypatch.setenv("FLOTILLA_TELEMETRY_MINUTE_SECONDS", "600")
    record_minute("gpu-1", T0, [10])
    record_minute("gpu-1", T0 + timedelta(minutes=20), [20])

    store.downsample(now=T0 + timedelta(minutes=25))

    assert not RawSample.objects.exists()
    assert list(MinuteSample.objects.values_list("minute", flat=True)) == [T0 + timedelta(minutes=20)]


def test_a_metric_a_device_does_not_report_is_left_out_of_its_average():
    store.record("gpu-1", sample({"index": 0, "utilization": 40.0, "temperatureC": 50.0}), T0)
    store.record("gpu-1", sample({"index": 0, "utilization": 60.0}), T0 + timedelta(seconds=10))

    store.downsample(now=T0 + 2 * HOUR)

    row = MinuteSample.objects.get(node="gpu-1")
    assert row.utilization_avg == pytest.approx(50.0)
    assert row.temperature_c_avg == pytest.approx(50.0)
    assert row.power_w_avg is None


def test_a_minute_series_shows_averages_under_the_raw_keys_with_maxima_and_counts():
    record_minute("gpu-1", T0, [10, 20, 60])
    store.downsample(now=T0 + 2 * HOUR)

    items = store.series("gpu-1", T0 - HOUR, T0 + HOUR, "minute")

    assert items == [
        {
            "at": "2025-03-01T12:00:00Z",
            "devices": [
                pytest.approx(
                    {
                        "index": 0,
                        "samples": 3,
                        "utilization": 30.0,
                        "utilizationMax": 60.0,
                        "memoryUsedMiB": 3000.0,
                        "memoryUsedMiBMax": 6000.0,
                        "powerW": 130.0,
                        "powerWMax": 160.0,
                        "powerLimitW": 700.0,
                        "powerLimitWMax": 700.0,
                        "temperatureC": 43.0,
                        "temperatureCMax": 46.0,
                        "smClockMHz": 1980.0,
                        "smClockMHzMax": 1980.0,
                    }
                )
            ],
        }
    ]


def test_a_minute_series_includes_raw_samples_not_yet_folded():
    record_minute("gpu-1", T0, [10, 30])
    store.downsample(now=T0 + 2 * HOUR)
    record_minute("gpu-1", T0 + timedelta(minutes=1), [50, 70])

    items = store.series("gpu-1", T0, T0 + HOUR, "minute")

    assert [(item["at"], item["devices"][0]["utilization"]) for item in items] == [
        ("2025-03-01T12:00:00Z", 20.0),
        ("2025-03-01T12:01:00Z", 60.0),
    ]


def test_auto_resolution_reads_raw_for_recent_ranges_and_minutes_for_old_ones():
    moment = utcnow()
    store.record("gpu-1", sample(device(0, 10)), moment - 3 * HOUR)
    store.record("gpu-1", sample(device(0, 80)), moment - timedelta(minutes=5))

    recent = store.series("gpu-1", moment - timedelta(minutes=10), moment, "auto")
    old = store.series("gpu-1", moment - 4 * HOUR, moment, "auto")

    assert store.pick_resolution("auto", moment - timedelta(minutes=10)) == "raw"
    assert store.pick_resolution("auto", moment - 4 * HOUR) == "minute"
    assert "samples" not in recent[0]["devices"][0]
    assert [item["devices"][0]["samples"] for item in old] == [1, 1]


def test_an_unknown_resolution_is_invalid_naming_the_parameter():
    with pytest.raises(Invalid) as exc:
        store.series("gpu-1", T0, T0, "hourly")

    assert problem_fields(exc) == {"resolution"}


def test_latest_and_fleet_power_use_each_nodes_newest_sample():
    store.record("gpu-1", sample(device(0, power=100), device(1, power=200)), T0)
    store.record("gpu-1", sample(device(0, power=300), device(1, power=400)), T0 + timedelta(seconds=5))
    store.record("gpu-2", sample(device(0, power=50)), T0)

    newest = store.latest("gpu-1")

    assert newest is not None
    assert newest["at"] == "2025-03-01T12:00:05Z"
    assert newest["powerW"] == 700.0
    assert store.latest("gpu-9") is None
    assert store.fleet_power(["gpu-1", "gpu-2", "gpu-9"]) == 750.0
    assert store.fleet_power([]) == 0.0


def test_the_celery_task_downsamples_and_skips_while_another_worker_holds_the_lease():
    from controlplane import leases
    from controlplane.telemetry import tasks

    store.record("gpu-1", sample(device(0, 10)), utcnow() - 3 * HOUR)
    holder = leases.acquire(tasks.LEASE_KEY, 60)
    skipped = tasks.downsample()
    leases.release(tasks.LEASE_KEY, holder)

    counts = tasks.downsample()

    assert skipped == {"skipped": 1}
    assert counts["rawFolded"] == 1
    assert MinuteSample.objects.filter(node="gpu-1").count() == 1


@pytest.mark.parametrize("chunk", [200, 2], ids=["few nodes", "more nodes than a chunk"])
def test_latest_finds_reporting_and_long_silent_nodes_alike(db, monkeypatch, chunk):
    monkeypatch.setattr(store, "QUERY_CHUNK", chunk)
    moment = utcnow()
    for node, ages in {"live-a": [5, 65], "live-b": [20], "silent": [600, 1200], "gone": []}.items():
        for age in ages:
            store.record(
                node, {"devices": [{"index": 0, "powerW": 100.0 + age}]}, at=moment - timedelta(seconds=age)
            )
    latest = store.latest_many(["live-a", "live-b", "silent", "gone"])
    assert set(latest) == {"live-a", "live-b", "silent"}
    assert {n: item["powerW"] for n, item in latest.items()} == {
        "live-a": 105.0,
        "live-b": 120.0,
        "silent": 700.0,
    }
    assert store.fleet_power(["live-a", "silent"]) == 805.0
