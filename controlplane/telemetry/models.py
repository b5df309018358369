"""Telemetry tables: raw samples for the last hour, minute roll-ups for the last week.

A raw row holds one node's whole sample (every device) as JSON: one insert per
heartbeat keeps the write path cheap for a thousand agents, and the (node, at)
index serves every read, which is always one node over a time range. Minute rows
are one per node, device and minute with real columns, so the power-cap
controllers and charts can aggregate them in SQL.
"""

from __future__ import annotations

from django.db import models

# Each metric of DeviceSample (schema.DEVICE_METRICS) -> the stem of its minute columns
# (``<stem>_avg`` and ``<stem>_max``).
COLUMN_STEMS: dict[str, str] = {
    "utilization": "utilization",
    "memoryUsedMiB": "memory_used_mib",
    "powerW": "power_w",
    "powerLimitW": "power_limit_w",
    "temperatureC": "temperature_c",
    "smClockMHz": "sm_clock_mhz",
}


class RawSample(models.Model):
    """One node's sample at one moment: ``devices`` is a list of DeviceSample dicts."""

    node = models.CharField(max_length=63)
    at = models.DateTimeField()
    devices = models.JSONField(default=list)
    workloads = models.JSONField(default=dict)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["node", "at"], name="telemetry_raw_node_at")]
        # (node, at) comes with the constraint; ``at`` alone serves the retention sweep.
        indexes = [models.Index(fields=["at"], name="telemetry_raw_at")]


class MinuteSample(models.Model):
    """Average and maximum of each device metric over one minute, and how many samples made it."""

    node = models.CharField(max_length=63)
    device = models.PositiveSmallIntegerField()
    minute = models.DateTimeField()
    samples = models.PositiveIntegerField(default=0)
    utilization_avg = models.FloatField(null=True)
    utilization_max = models.FloatField(null=True)
    memory_used_mib_avg = models.FloatField(null=True)
    memory_used_mib_max = models.FloatField(null=True)
    power_w_avg = models.FloatField(null=True)
    power_w_max = models.FloatField(null=True)
    power_limit_w_avg = models.FloatField(null=True)
    power_limit_w_max = models.FloatField(null=True)
    temperature_c_avg = models.FloatField(null=True)
    temperature_c_max = models.FloatField(null=True)
    sm_clock_mhz_avg = models.FloatField(null=True)
    sm_clock_mhz_max = models.FloatField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["node", "minute", "device"], name="telemetry_minute_node_minute_dev"
            )
        ]
        indexes = [models.Index(fields=["minute"], name="telemetry_minute_minute")]
