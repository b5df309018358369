"""``flotilla bench agents``: many simulated agents in one process against a real stack.

For each back end it starts a fresh stack (web server, Celery worker and beat),
then runs N agents as asyncio tasks. Each registers (getting its node token),
heartbeats every ``--interval`` seconds with jitter, and keeps a long-poll watch
on the Workloads bound to its node, as the real agent does, each on its own
keep-alive connection (``bench_http``, so the load generator stays light).
Watch latency is
measured with probes: the bench writes a timestamp into the status of a Workload
on some node, and the node's agent notes when the change reaches it. Server CPU
is read from /proc for the stack's processes over the measured window.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from cli import bench_http
from cli.bench_stack import GPU_MEMORY_MIB, add_backend_args, on_each_backend, percentile, print_summary
from cli.output import table
from cli.stack import Stack
from common.ports import free_port

WATCH_SECONDS = 20


def add_parser(benches: Any) -> None:
    parser = benches.add_parser("agents", help="N simulated agents: heartbeat and watch latency")
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=5.0, help="heartbeat seconds per agent")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured after start-up")
    parser.add_argument("--probes", type=int, default=50, help="Workloads used as watch-latency probes")
    parser.add_argument(
        "--web-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="gunicorn worker processes (default: one per core, as a deployment would run)",
    )
    add_backend_args(parser)
    parser.set_defaults(handler=run)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and all their descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    wanted = set(pids)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid, pgid = int(entry.name), int(fields[1]), int(fields[2])
        if pid in wanted or pgid in wanted or ppid in wanted:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


class Fleet:
    def __init__(self, url: str, admin_token: str, args: argparse.Namespace):
        self.url, self.admin_token, self.args = url, admin_token, args
        self.heartbeats: list[float] = []
        self.watch_latency: list[float] = []
        self.errors: dict[str, int] = {}
        self.first_errors: dict[str, str] = {}
        self.measuring = False
        self.stop = asyncio.Event()
        self.tokens: dict[str, str] = {}

    def error(self, what: str, exc: Exception) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1
        if what not in self.first_errors:
            self.first_errors[what] = str(exc)[:300]

    async def register(self, client: httpx.AsyncClient, name: str) -> None:
        devices = [
            {"index": g, "type": "H100", "memoryMiB": GPU_MEMORY_MIB, "simulated": True} for g in range(8)
        ]
        for attempt in range(5):
            try:
                response = await client.post(
                    "/api/v1/agent/register",
                    json={"name": name, "devices": devices},
                    headers={"Authorization": f"Bearer {self.admin_token}"},
                )
                response.raise_for_status()
                self.tokens[name] = response.json()["token"]
                return
            except httpx.HTTPError as exc:
                self.error("register", exc)
                await asyncio.sleep(0.5 * (attempt + 1))

    async def heartbeat_loop(self, conn: bench_http.Connection, name: str) -> None:
        headers = {"Authorization": f"Bearer {self.tokens[name]}"}
        await asyncio.sleep(random.uniform(0, self.args.interval))
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                response = await conn.request(
                    "POST", "/api/v1/agent/heartbeat", json_body={"name": name}, headers=headers
                )
                response.raise_for_status()
                if self.measuring:
                    self.heartbeats.append((time.monotonic() - started) * 1000)
            except bench_http.HTTPError as exc:
                if self.measuring:
                    self.error("heartbeat", exc)
            await asyncio.sleep(self.args.interval * random.uniform(0.9, 1.1))

    async def watch_loop(self, conn: bench_http.Connection, name: str) -> None:
        headers = {"Authorization": f"Bearer {self.tokens[name]}"}
        since = None
        while not self.stop.is_set():
            try:
                if since is None:
                    response = await conn.request("GET", "/api/v1/workloads", headers=headers)
                    response.raise_for_status()
                    since = response.json()["metadata"]["resourceVersion"]
                    continue
                params = {"watch": "true", "resourceVersion": since, "timeoutSeconds": WATCH_SECONDS}
                response = await conn.request("GET", "/api/v1/workloads", params=params, headers=headers)
                arrived = time.time()
                if response.status_code == 410:
                    since = None
                    continue
                response.raise_for_status()
                body = response.json()
                since = body["resourceVersion"]
                for event in body["events"]:
                    probe = event["object"].get("status", {}).get("probe")
                    if probe and self.measuring:
                        self.watch_latency.append((arrived - probe) * 1000)
            except bench_http.HTTPError as exc:
                if self.measuring:
                    self.error("watch", exc)
                await asyncio.sleep(1.0)

    async def probe_loop(self, client: httpx.AsyncClient, workloads: list[str]) -> None:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        while not self.stop.is_set():
            name = random.choice(workloads)
            try:
                response = await client.put(
                    f"/api/v1/workloads/{name}/status",
                    json={"status": {"probe": time.time()}},
                    headers=headers,
                )
                response.raise_for_status()
            except httpx.HTTPError as exc:
                self.error("probe", exc)
            await asyncio.sleep(0.5)


async def probe_workloads(
    client: httpx.AsyncClient, token: str, count: int, timeout: float = 120
) -> list[str]:
    """Apply ``count`` one-replica Deployments; return their Workloads once placed."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/yaml"}
    docs = [
        {
            "apiVersion": "flotilla.dev/v1",
            "kind": "Deployment",
            "metadata": {"name": f"probe-{i:04d}", "labels": {"bench": "agents"}},
            "spec": {"model": {"source": "builtin:tiny-llama"}, "replicas": 1},
        }
        for i in range(count)
    ]
    response = await client.post("/api/v1/apply", content=yaml.safe_dump_all(docs), headers=headers)
    response.raise_for_status()
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        listing = await client.get("/api/v1/workloads", headers={"Authorization": f"Bearer {token}"})
        if listing.status_code != 200:
            last = f"HTTP {listing.status_code}: {listing.text[:200]}"
            await asyncio.sleep(1.0)
            continue
        names = [
            w["metadata"]["name"]
            for w in listing.json()["items"]
            if w["metadata"]["name"].startswith("probe-")
        ]
        if len(names) >= count:
            return names
        await asyncio.sleep(1.0)
    placed = (
        [w["metadata"]["name"] for w in listing.json().get("items", [])] if listing.status_code == 200 else []
    )
    if placed:
        print(
            f"only {len(placed)} of {count} probe Workloads placed in {timeout:.0f}s; probing those",
            file=sys.stderr,
        )
        return placed
    raise RuntimeError(f"no probe Workload was placed within {timeout:.0f}s; last answer: {last}")


async def drive(stack: Stack, token: str, args: argparse.Namespace, label: str) -> dict[str, Any]:
    fleet = Fleet(stack.url, token, args)
    timeout = httpx.Timeout(WATCH_SECONDS + 30)
    # Each agent holds two connections, as a real one does: heartbeats, and its watch.
    connections: list[bench_http.Connection] = []

    def connect() -> bench_http.Connection:
        connections.append(bench_http.Connection(stack.url, timeout=WATCH_SECONDS + 30))
        return connections[-1]

    async with httpx.AsyncClient(base_url=stack.url, timeout=timeout) as client:
        names = [f"sim-{i:05d}" for i in range(args.agents)]
        started = time.monotonic()
        for batch in range(0, len(names), 50):
            await asyncio.gather(*(fleet.register(client, n) for n in names[batch : batch + 50]))
        print(
            f"[{label}] {len(fleet.tokens)} agents registered in {time.monotonic() - started:.1f}s",
            file=sys.stderr,
        )
        tasks = [asyncio.create_task(fleet.heartbeat_loop(connect(), n)) for n in fleet.tokens]
        tasks += [asyncio.create_task(fleet.watch_loop(connect(), n)) for n in fleet.tokens]
        try:
            probes = await probe_workloads(client, token, min(args.probes, args.agents))
            tasks.append(asyncio.create_task(fleet.probe_loop(client, probes)))
            await asyncio.sleep(min(10.0, args.interval * 2))  # every agent heartbeating and watching
            pids = [p.pid for p in stack.processes.values()]
            cpu_before, measured_from = cpu_seconds(pids), time.monotonic()
            fleet.measuring = True
            print(f"[{label}] measuring for {args.duration:.0f}s ...", file=sys.stderr)
            await asyncio.sleep(args.duration)
            fleet.measuring = False
            window = time.monotonic() - measured_from
            cpu = cpu_seconds(pids) - cpu_before
        finally:
            fleet.stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)
    return {
        "backend": label,
        "agents": len(fleet.tokens),
        "seconds": round(window, 1),
        "heartbeats": len(fleet.heartbeats),
        "heartbeatMs": {
            "p50": round(percentile(fleet.heartbeats, 50), 1),
            "p99": round(percentile(fleet.heartbeats, 99), 1),
        },
        "watchEvents": len(fleet.watch_latency),
        "watchMs": {
            "p50": round(percentile(fleet.watch_latency, 50), 1),
            "p99": round(percentile(fleet.watch_latency, 99), 1),
        },
        "errors": dict(fleet.errors),
        "errorCount": sum(fleet.errors.values()),
        "firstErrors": dict(fleet.first_errors),
        "serverCpuCores": round(cpu / window, 2),
    }


def bench_backend(label: str, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"flotilla-bench-agents-{label}-") as home:
        stack = Stack(
            home=Path(home),
            port=free_port(),
            env={**env, "FLOTILLA_LOAD_ENTRYPOINTS": "false"},
            # One thread per held long-poll plus headroom; any one worker may end up
            # holding most of them, so each gets that many.
            web_threads=args.agents + 64,
            web_workers=args.web_workers,
        )
        print(f"[{label}] starting web server, worker and beat ...", file=sys.stderr)
        stack.start()
        try:
            token = stack.bootstrap_token()
            return asyncio.run(drive(stack, token, args, label))
        finally:
            stack.stop()
            kept = Path(tempfile.gettempdir()) / f"flotilla-bench-agents-logs-{label}"
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(Path(home) / "logs", kept)
            print(f"[{label}] server logs kept in {kept}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    results = on_each_backend(args, bench_backend)
    if results is None:
        return 2
    rows = [
        [
            r["backend"],
            str(r["agents"]),
            str(r["heartbeats"]),
            f"{r['heartbeatMs']['p50']:.0f}",
            f"{r['heartbeatMs']['p99']:.0f}",
            str(r["watchEvents"]),
            f"{r['watchMs']['p50']:.0f}",
            f"{r['watchMs']['p99']:.0f}",
            str(r["errorCount"]),
            f"{r['serverCpuCores']:.2f}",
        ]
        for r in results
    ]
    headers = ["BACKEND", "AGENTS", "HEARTBEATS", "HB P50 MS", "HB P99 MS", "WATCH EVENTS",
               "WATCH P50 MS", "WATCH P99 MS", "ERRORS", "SERVER CPU"]  # fmt: skip
    print(table(rows, headers))
    summary: dict[str, Any] = {"bench": "agents", "results": results}
    if len(results) == 2 and results[0]["heartbeatMs"]["p99"]:
        a, b = results
        summary["ratios"] = {
            f"heartbeatP99 {b['backend']}/{a['backend']}": round(
                b["heartbeatMs"]["p99"] / a["heartbeatMs"]["p99"], 3
            )
        }
    print_summary(args, summary)
    return 1 if any(r["errorCount"] for r in results) else 0
