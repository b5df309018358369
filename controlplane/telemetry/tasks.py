"""Celery task: fold expired raw telemetry into minute rows and enforce both retentions.

Beat runs it every minute. A lease keeps two workers from folding at once, so
concurrent runs cannot race to create the same minute row; a run that finds the
lease held simply skips, and the next one catches up.
"""

from __future__ import annotations

import logging

from controlplane import leases
from controlplane.celeryapp import app
from controlplane.telemetry import store

log = logging.getLogger(__name__)
LEASE_KEY = "telemetry:downsample"
LEASE_SECONDS = 300.0


@app.task(name="controlplane.telemetry.tasks.downsample", ignore_result=True)
def downsample() -> dict[str, int]:
    with leases.held(LEASE_KEY, LEASE_SECONDS) as mine:
        if not mine:
            log.info("telemetry downsample skipped: another worker holds the lease")
            return {"skipped": 1}
        counts = store.downsample()
    if any(counts.values()):
        log.info("telemetry downsample: %s", counts)
    return counts
