"""Fill this database with a large simulated fleet, then time every dashboard page.

Run by ``flotilla bench dashboard`` in a fresh database per back end (never on a
real one: it writes thousands of rows). Prints one JSON line with the figures.

Server-side render time is measured in-process through Django's full handler
(middleware, view, queries, template), which is what a page costs the server;
the network and the browser are left out on purpose.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand
from django.test import Client

from agents.runtimes.serve.metrics import percentile
from common.timeutil import now
from controlplane.apply import apply
from controlplane.controllers import nodes, owners
from controlplane.models import AuditEntry, Event, Resource
from controlplane.telemetry.models import MinuteSample, RawSample
from controlplane.users import create_or_reset

GPU_TYPES = {"H100": (81559, 700.0, 4.5), "A100-80GB": (81920, 400.0, 2.9), "L4": (23034, 72.0, 0.8)}
CLUSTERS = ("us-east", "us-west", "eu-north", "ap-south")


def _devices(node_index: int, gpus: int) -> list[dict[str, Any]]:
    gpu_type = list(GPU_TYPES)[node_index % len(GPU_TYPES)]
    memory = GPU_TYPES[gpu_type][0]
    return [
        {"index": i, "type": gpu_type, "memoryMiB": memory, "healthy": (node_index * 8 + i) % 97 != 0}
        for i in range(gpus)
    ]


def _sample(devices: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for d in devices:
        limit = GPU_TYPES[d["type"]][1]
        util = rng.uniform(0, 100)
        out.append(
            {
                "index": d["index"],
                "utilization": round(util, 1),
                "memoryUsedMiB": int(d["memoryMiB"] * util / 120),
                "powerW": round(limit * (0.15 + 0.8 * util / 100), 1),
                "powerLimitW": limit,
                "temperatureC": round(35 + util / 2.5, 1),
                "smClockMHz": 1980.0,
            }
        )
    return out


class Command(BaseCommand):
    help = "Fill a fresh database with a simulated fleet and time each dashboard page (JSON out)."

    def add_arguments(self, parser):
        parser.add_argument("--nodes", type=int, default=1000)
        parser.add_argument("--gpus-per-node", type=int, default=8)
        parser.add_argument("--deployments", type=int, default=250)
        parser.add_argument("--replicas", type=int, default=8)
        parser.add_argument("--jobs", type=int, default=40)
        parser.add_argument("--week-nodes", type=int, default=10)
        parser.add_argument("--events", type=int, default=5000)
        parser.add_argument("--renders", type=int, default=20)

    def handle(self, *args, **o):
        if Resource.objects.filter(kind="Node").exists():
            raise SystemExit("this database already holds nodes; the bench needs an empty one")
        rng = random.Random(7)
        timings: dict[str, float] = {}
        started = time.perf_counter()
        self._fleet(o, rng)
        timings["fleetSeconds"] = time.perf_counter() - started
        started = time.perf_counter()
        self._work(o)
        timings["schedulingSeconds"] = time.perf_counter() - started
        self._history(o)
        started = time.perf_counter()
        rows = self._telemetry(o, rng)
        timings["telemetrySeconds"] = time.perf_counter() - started
        pages = self._measure(o)
        self.stdout.write(
            json.dumps(
                {
                    "nodes": o["nodes"],
                    "gpus": o["nodes"] * o["gpus_per_node"],
                    "workloads": Resource.objects.filter(kind="Workload").count(),
                    "rawSamples": rows[0],
                    "minuteSamples": rows[1],
                    "events": Event.objects.count(),
                    "fill": {k: round(v, 1) for k, v in timings.items()},
                    "pages": pages,
                }
            )
        )

    def _log(self, text: str) -> None:
        self.stderr.write(text)
        self.stderr.flush()

    def _fleet(self, o: dict[str, Any], rng: random.Random) -> None:
        apply(
            [
                {
                    "apiVersion": "flotilla.dev/v1",
                    "kind": "Cluster",
                    "metadata": {"name": name},
                    "spec": {
                        "gpuPrices": {t: v[2] for t, v in GPU_TYPES.items()},
                        "powerBudgetWatts": o["nodes"] * o["gpus_per_node"] * 500 / len(CLUSTERS),
                    },
                }
                for name in CLUSTERS
            ],
            actor="bench",
        )
        for i in range(o["nodes"]):
            nodes.register(
                f"node-{i:04d}",
                cluster=CLUSTERS[i % len(CLUSTERS)],
                labels={"rack": f"r{i // 40:02d}"},
                devices=_devices(i, o["gpus_per_node"]),
                info={"hostname": f"node-{i:04d}"},
            )
            if i % 200 == 199:
                self._log(f"  {i + 1} nodes registered")

    def _work(self, o: dict[str, Any]) -> None:
        docs = [
            {
                "apiVersion": "flotilla.dev/v1",
                "kind": "Deployment",
                "metadata": {"name": f"svc-{i:04d}", "labels": {"team": f"t{i % 12}"}},
                "spec": {
                    "model": {"source": "builtin:tiny-llama"},
                    "replicas": o["replicas"],
                    "cluster": CLUSTERS[i % len(CLUSTERS)],
                    "slo": {"ttftMs": 500, "tpotMs": 50},
                },
            }
            for i in range(o["deployments"])
        ]
        docs += [
            {
                "apiVersion": "flotilla.dev/v1",
                "kind": "TrainingJob",
                "metadata": {"name": f"train-{i:03d}"},
                "spec": {
                    "model": {"source": "builtin:tiny-llama"},
                    "data": {"source": "builtin:synthetic"},
                    "steps": 10_000,
                    "cluster": CLUSTERS[i % len(CLUSTERS)],
                },
            }
            for i in range(o["jobs"])
        ]
        for start in range(0, len(docs), 200):
            apply(docs[start : start + 200], actor="bench")
        for n, doc in enumerate(docs):
            owners.reconcile(doc["kind"], doc["metadata"]["name"])
            if n % 100 == 99:
                self._log(f"  {n + 1} of {len(docs)} owners scheduled")

    def _telemetry(self, o: dict[str, Any], rng: random.Random) -> tuple[int, int]:
        """A week of minute roll-ups for ``--week-nodes`` nodes (a full fleet-week is 80
        million rows), then the last hour raw (one sample a minute) for every node. The raw
        hour is written last and ends now, as in a fleet whose agents are reporting: its
        newest samples are what the overview and node grid read."""
        minutes = self._week_of_minutes(o, rng)
        moment = now()
        batch: list[RawSample] = []
        raw = 0
        for i in range(o["nodes"]):
            devices = _devices(i, o["gpus_per_node"])
            for minute in range(60):
                at = moment - timedelta(minutes=minute)
                batch.append(RawSample(node=f"node-{i:04d}", at=at, devices=_sample(devices, rng)))
            if len(batch) >= 5000:
                RawSample.objects.bulk_create(batch)
                raw += len(batch)
                batch = []
        RawSample.objects.bulk_create(batch)
        raw += len(batch)
        self._log(f"  {raw} raw samples")
        return raw, minutes

    def _week_of_minutes(self, o: dict[str, Any], rng: random.Random) -> int:
        moment = now().replace(second=0, microsecond=0)
        minutes = 0
        rows: list[MinuteSample] = []
        for i in range(min(o["week_nodes"], o["nodes"])):
            for minute in range(60, 7 * 24 * 60):
                at = moment - timedelta(minutes=minute)
                for d in _sample(_devices(i, o["gpus_per_node"]), rng):
                    rows.append(
                        MinuteSample(
                            node=f"node-{i:04d}",
                            device=d["index"],
                            minute=at,
                            samples=12,
                            utilization_avg=d["utilization"],
                            utilization_max=d["utilization"],
                            memory_used_mib_avg=d["memoryUsedMiB"],
                            memory_used_mib_max=d["memoryUsedMiB"],
                            power_w_avg=d["powerW"],
                            power_w_max=d["powerW"],
                            power_limit_w_avg=d["powerLimitW"],
                            power_limit_w_max=d["powerLimitW"],
                            temperature_c_avg=d["temperatureC"],
                            temperature_c_max=d["temperatureC"],
                            sm_clock_mhz_avg=d["smClockMHz"],
                            sm_clock_mhz_max=d["smClockMHz"],
                        )
                    )
                if len(rows) >= 10_000:
                    MinuteSample.objects.bulk_create(rows)
                    minutes += len(rows)
                    rows = []
            self._log(f"  a week of minutes for node-{i:04d}")
        MinuteSample.objects.bulk_create(rows)
        return minutes + len(rows)

    def _history(self, o: dict[str, Any]) -> None:
        stamp = now()
        Event.objects.bulk_create(
            Event(
                kind="Deployment",
                name=f"svc-{i % max(1, o['deployments']):04d}",
                reason="Scheduled",
                message=f"bench event {i}",
                source="bench",
            )
            for i in range(o["events"])
        )
        AuditEntry.objects.bulk_create(
            AuditEntry(actor="user/bench", verb="apply", kind="Deployment", name=f"svc-{i:04d}", at=stamp)
            for i in range(o["events"] // 2)
        )

    def _measure(self, o: dict[str, Any]) -> list[dict[str, Any]]:
        user, _, _ = create_or_reset("bench-admin", "admin")
        client = Client(HTTP_HOST="127.0.0.1")
        client.force_login(user)
        pages = {
            "overview": "/",
            "overview (live)": "/overview/live",
            "nodes": "/nodes/",
            "nodes page 10": "/nodes/?page=10",
            "nodes (live)": "/nodes/live",
            "node (week of data)": "/nodes/node-0000/",
            "deployments": "/deployments/",
            "deployments (live)": "/deployments/live",
            "deployment": "/deployments/svc-0000/",
            "training jobs": "/jobs/",
            "training job": "/jobs/train-000/",
            "policies & plugins": "/policies/",
            "events": "/events/",
            "events page 40": "/events/?page=40",
            "audit": "/audit/",
            "apply": "/apply/",
        }
        results = []
        for label, url in pages.items():
            for _ in range(2):  # warm caches, as a running server would have them
                client.get(url)
            samples = []
            status = 0
            for _ in range(o["renders"]):
                started = time.perf_counter()
                response = client.get(url)
                samples.append((time.perf_counter() - started) * 1000)
                status = response.status_code
            results.append(
                {
                    "page": label,
                    "url": url,
                    "status": status,
                    "bytes": len(response.content),
                    "p50Ms": round(percentile(samples, 50), 1),
                    "p99Ms": round(percentile(samples, 99), 1),
                    "meanMs": round(statistics.fmean(samples), 1),
                }
            )
            self._log(f"  {label}: p50 {results[-1]['p50Ms']} ms")
        return results
