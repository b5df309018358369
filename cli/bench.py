"""``flotilla bench apply``: apply throughput and apply→Scheduled latency, per back end.

For each back end it starts a fresh stack (web server, Celery worker, beat),
registers a fleet of simulated nodes through the agent protocol (and keeps them
heartbeating), applies N Deployments one document per request from a few client
threads, and follows the Deployments with the watch API to time the moment each
one turns ``Scheduled=True``. Every figure is measured in this run; back ends
run one after the other on the same machine so their ratios compare like with like.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from agents.runtimes.serve.bench_cache_cli import add_parser as add_cache_bench
from agents.runtimes.serve.bench_cli import add_parser as add_serve_bench
from agents.runtimes.train.bench_checkpoint_cli import add_parser as add_checkpoint_bench
from cli.bench_agents import add_parser as add_agents_bench
from cli.bench_dashboard import add_parser as add_dashboard_bench
from cli.bench_powercap import add_parser as add_powercap_bench
from cli.bench_schedulers import add_parser as add_schedulers_bench
from cli.bench_stack import GPU_MEMORY_MIB, add_backend_args, on_each_backend, percentile, print_summary
from cli.output import table
from cli.stack import Stack
from common.client import Client, ClientError
from common.ports import free_port


def add_bench_parser(sub: Any) -> None:
    parser = sub.add_parser("bench", help="run a benchmark; prints a table and JSON")
    benches = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    apply = benches.add_parser("apply", help="apply N deployments; throughput and apply→Scheduled latency")
    apply.add_argument("--deployments", type=int, default=1000)
    apply.add_argument("--gpus-per-node", type=int, default=8)
    apply.add_argument("--nodes", type=int, help="default: enough GPUs for every deployment")
    apply.add_argument("--clients", type=int, default=4, help="concurrent apply clients")
    apply.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for convergence")
    apply.add_argument(
        "--gpu-types",
        default="H100",
        help="comma-separated GPU types; nodes take them in turn (a mixed fleet: H100,A100-80GB,L40S,L4)",
    )
    apply.add_argument(
        "--scheduler",
        help="scheduler policy for every deployment; melange/distserve also get a declared workload and SLO",
    )
    apply.add_argument(
        "--worker-concurrency",
        type=int,
        default=2,
        help="Celery worker processes reconciling (default 2, as `flotilla up` starts)",
    )
    add_backend_args(apply)
    apply.set_defaults(handler=run_apply_bench)
    for add_bench in (
        add_serve_bench,
        add_cache_bench,
        add_checkpoint_bench,
        add_agents_bench,
        add_dashboard_bench,
        add_schedulers_bench,
        add_powercap_bench,
    ):
        add_bench(benches)


def deployment_doc(index: int, gpu_types: list[str] | None = None, scheduler: str | None = None) -> str:
    spec: dict[str, Any] = {
        "model": {"source": "builtin:tiny-llama"},
        "replicas": 1,
        "resources": {"gpusPerReplica": 1, "gpuTypes": gpu_types or ["H100"]},
    }
    if scheduler:
        spec["policies"] = {"scheduler": scheduler}
    if scheduler in ("melange", "distserve"):
        from plugins.sim import SHAPES

        spec["model"]["config"] = SHAPES["llama-3-8b"].to_config()
        # A different rate for every deployment (1-5 req/s): each is a problem of its own
        # for the solver and the simulator, as in a real fleet, not one cached answer.
        spec["workload"] = {
            "requestsPerSecond": round(1.0 + (index % 1000) * 0.004, 3),
            "inputTokens": 512,
            "outputTokens": 128,
        }
        spec["slo"] = {"ttftMs": 1000, "tpotMs": 100}
    return yaml.safe_dump(
        {
            "apiVersion": "flotilla.dev/v1",
            "kind": "Deployment",
            "metadata": {"name": f"bench-{index:05d}", "labels": {"bench": "apply"}},
            "spec": spec,
        }
    )


class Heartbeats(threading.Thread):
    """Keeps the simulated nodes alive while the bench runs, as their agents would."""

    def __init__(self, client: Client, names: list[str], every: float = 5.0):
        super().__init__(daemon=True)
        self.client, self.names, self.every = client, names, every
        self.stop = threading.Event()
        self.errors = 0

    def run(self) -> None:
        while not self.stop.wait(self.every):
            for name in self.names:
                try:
                    self.client.request("POST", "/api/v1/agent/heartbeat", json={"name": name})
                except ClientError:
                    self.errors += 1


def register_fleet(client: Client, nodes: int, gpus: int, gpu_types: list[str] | None = None) -> list[str]:
    """Register ``nodes`` simulated nodes of ``gpus`` GPUs each, the types taken in turn."""
    from agents.devices import parse_simulate

    names = []
    types = gpu_types or ["H100"]
    for i in range(nodes):
        name = f"sim-{i:04d}"
        gpu_type = types[i % len(types)]
        memory = GPU_MEMORY_MIB if gpu_type == "H100" else parse_simulate(f"1x{gpu_type}")[0]["memoryMiB"]
        devices = [
            {"index": g, "type": gpu_type, "memoryMiB": memory, "simulated": True} for g in range(gpus)
        ]
        client.request("POST", "/api/v1/agent/register", json={"name": name, "devices": devices})
        names.append(name)
    return names


def watch_scheduled(client: Client, since: str, want: int, deadline: float, seen: dict[str, float]) -> None:
    while len(seen) < want and time.monotonic() < deadline:
        try:
            result = client.watch("deployments", since, timeout=5, labelSelector="bench=apply")
        except ClientError:
            time.sleep(0.5)
            continue
        now = time.monotonic()
        since = result["resourceVersion"]
        for event in result["events"]:
            document = event["object"]
            name = document["metadata"]["name"]
            for condition in document.get("status", {}).get("conditions", []):
                if condition["type"] == "Scheduled" and condition["status"] == "True":
                    seen.setdefault(name, now)


def bench_backend(label: str, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    nodes = args.nodes or -(-args.deployments // args.gpus_per_node)
    with tempfile.TemporaryDirectory(prefix=f"flotilla-bench-{label}-") as home:
        stack = Stack(
            home=Path(home),
            port=free_port(),
            env={**env, "FLOTILLA_LOAD_ENTRYPOINTS": "false"},
            worker_concurrency=args.worker_concurrency,
        )
        print(f"[{label}] starting web server, worker and beat ...", file=sys.stderr)
        stack.start()
        try:
            token = stack.bootstrap_token()
            admin = Client(stack.url, token, timeout=60)
            gpu_types = [t.strip() for t in args.gpu_types.split(",") if t.strip()]
            names = register_fleet(admin, nodes, args.gpus_per_node, gpu_types)
            beats = Heartbeats(Client(stack.url, token), names)
            beats.start()
            since = admin.list("deployments")["metadata"]["resourceVersion"]
            seen: dict[str, float] = {}
            sent: dict[str, float] = {}
            errors = 0
            watcher = threading.Thread(
                target=watch_scheduled,
                args=(
                    Client(stack.url, token),
                    since,
                    args.deployments,
                    time.monotonic() + args.timeout,
                    seen,
                ),
                daemon=True,
            )
            watcher.start()
            print(
                f"[{label}] {nodes} nodes registered; applying {args.deployments} deployments ...",
                file=sys.stderr,
            )
            clients = [Client(stack.url, token, timeout=60) for _ in range(args.clients)]

            def apply_one(index: int) -> bool:
                name = f"bench-{index:05d}"
                sent[name] = time.monotonic()
                try:
                    clients[index % len(clients)].apply(deployment_doc(index, gpu_types, args.scheduler))
                    return True
                except ClientError as exc:
                    print(f"[{label}] apply {name} failed: {exc}", file=sys.stderr)
                    return False

            started = time.monotonic()
            with ThreadPoolExecutor(args.clients) as pool:
                results = list(pool.map(apply_one, range(args.deployments)))
            applied_at = time.monotonic()
            errors = results.count(False)
            watcher.join(timeout=max(0.0, args.timeout - (applied_at - started)))
            converged_at = max(seen.values()) if seen else float("nan")
            beats.stop.set()
            latencies = [(seen[name] - sent[name]) * 1000 for name in seen if name in sent]
            return {
                "backend": label,
                "scheduler": args.scheduler or "binpack",
                "gpuTypes": gpu_types,
                "workerConcurrency": args.worker_concurrency,
                "deployments": args.deployments,
                "nodes": nodes,
                "gpus": nodes * args.gpus_per_node,
                "applyErrors": errors,
                "heartbeatErrors": beats.errors,
                "scheduled": len(seen),
                "applySeconds": round(applied_at - started, 3),
                "applyPerSecond": round(args.deployments / (applied_at - started), 2),
                "scheduledPerSecond": round(len(seen) / (converged_at - started), 2) if seen else 0.0,
                "latencyMs": {
                    "p50": round(percentile(latencies, 50), 1),
                    "p99": round(percentile(latencies, 99), 1),
                    "max": round(max(latencies), 1) if latencies else None,
                    "mean": round(statistics.fmean(latencies), 1) if latencies else None,
                },
            }
        finally:
            stack.stop()


def run_apply_bench(args: argparse.Namespace) -> int:
    results = on_each_backend(args, bench_backend)
    if results is None:
        return 2
    rows = [
        [
            r["backend"],
            str(r["deployments"]),
            f"{r['scheduled']}",
            f"{r['applyPerSecond']:.1f}",
            f"{r['scheduledPerSecond']:.1f}",
            f"{r['latencyMs']['p50']:.0f}",
            f"{r['latencyMs']['p99']:.0f}",
            str(r["applyErrors"]),
        ]
        for r in results
    ]
    headers = ["BACKEND", "DEPLOYMENTS", "SCHEDULED", "APPLY/S", "SCHEDULED/S", "P50 MS", "P99 MS", "ERRORS"]
    print(table(rows, headers))
    summary: dict[str, Any] = {"bench": "apply", "results": results}
    if len(results) == 2 and results[0]["applyPerSecond"]:
        a, b = results
        summary["ratios"] = {
            f"applyPerSecond {b['backend']}/{a['backend']}": round(
                b["applyPerSecond"] / a["applyPerSecond"], 3
            ),
            f"latencyP50 {b['backend']}/{a['backend']}": round(
                b["latencyMs"]["p50"] / a["latencyMs"]["p50"], 3
            )
            if a["latencyMs"]["p50"]
            else None,
        }
    print_summary(args, summary)
    incomplete = any(r["scheduled"] < r["deployments"] or r["applyErrors"] for r in results)
    return 1 if incomplete else 0
