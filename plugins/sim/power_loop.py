"""One closed-loop run of a powercap plugin over a simulated Cluster, as the control plane runs it.

The Cluster's budget is ``budget_servers`` servers of 8 GPUs at nameplate. Some of them train
(one batch-priority TrainingJob drawing near TDP all the time); the rest serve Llama-3-70B
(one tensor-parallel replica per server) for two Deployments, one ``critical`` and one
``normal``, whose traffic swells to a peak and falls back -- Gamma arrivals with the
burstiness and the request lengths of the BurstGPT sample. For a count of servers:

- every ``tick_s`` (1 s) the serving engines (``plugins.sim.simulator.LivePool``) advance,
  each server's draw is worked out from the seconds it spent prefilling, decoding and idle
  (:mod:`plugins.sim.power`), the cluster's draw is compared with the budget (a second over
  it is a violation), and the training job progresses at its capped speed;
- every ``interval_s`` (5 s, the agents' heartbeat) the REAL plugin, looked up by name in
  ``plugins.manager``, decides from each GPU's mean draw over the interval, and the agents
  apply its limits at their next heartbeat, one interval later;
- the limits slow what they bind: a server's prefill and decode step times are stretched by
  :meth:`~plugins.sim.power.PowerModel.slowdown` under its lowest GPU limit (a
  tensor-parallel step waits for its slowest GPU), the training job by its lowest.

``flotilla bench powercap`` (:mod:`plugins.sim.power_bench`) runs it for each policy and count.
"""

from __future__ import annotations

import bisect
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel

from common.specs import PRIORITY_NAMES
from plugins import manager
from plugins.sim.power import PowerModel, power_model
from plugins.sim.profiles import SHAPES, GpuProfile, estimate
from plugins.sim.simulator import LivePool, SimResult
from plugins.sim.trace import SAMPLE_TRACE, load_trace
from plugins.sim.workload import Request, gamma
from plugins.types import GpuPower, PowerBudget

POLICIES = ("none", "static", "polca")
DEPLOYMENTS = (("chat-critical", "critical"), ("chat-normal", "normal"))
TRAINING_OWNER = "TrainingJob/pretrain"


@dataclass(frozen=True)
class Settings:
    """What one ``flotilla bench powercap`` run simulates (the defaults are the documented run)."""

    gpu_type: str = "H100"
    model: str = "llama-3-70b"
    gpus_per_server: int = 8  # one tensor-parallel replica per serving server
    budget_servers: int = 16  # the budget: this many servers at nameplate (GPU TDP)
    training_servers: int = 4
    duration_s: float = 300.0  # measured; the warm-up comes before it
    warmup_s: float = 60.0  # trough load, not measured: the controller settles first
    interval_s: float = 5.0  # telemetry and decisions, as the agents heartbeat
    tick_s: float = 1.0  # the resolution of the draw and of the violation count
    peak_rate: float = 7.0  # requests/s per serving server at the peak of the run
    trough_share: float = 0.3  # the rate at the start and the end, as a share of the peak
    cv: float | None = None  # inter-arrival coefficient of variation; None: the trace's
    critical_share: float = 0.5  # share of the serving servers the critical Deployment has
    ttft_ms: float = 3000.0
    tpot_ms: float = 100.0
    max_loss: float = 0.01  # SLO attainment a fitting count may lose (0.01: one point)
    p99_tolerance: float = 0.05  # the critical P99 goal: within 5% of uncapped
    goal_extra: float = 0.30  # the servers goal: 30% more than nameplate
    max_servers: int | None = None  # the search's ceiling (None: three times nameplate)
    trace: str = SAMPLE_TRACE
    seed: int = 0
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-policy plugin parameters

    def check(self) -> None:
        """A ValueError naming the flag for settings the bench cannot run."""
        counts = {
            "--gpus-per-server": self.gpus_per_server,
            "--budget-servers": self.budget_servers,
        }
        for flag, value in counts.items():
            if value < 1:
                raise ValueError(f"{flag} must be at least 1, got {value}")
        if not 0 <= self.training_servers < self.budget_servers:
            raise ValueError(
                f"--training-servers must be 0 to {self.budget_servers - 1} (below --budget-servers), "
                f"got {self.training_servers}"
            )
        ticks = {"--duration": self.duration_s, "--interval": self.interval_s, "--warmup": self.warmup_s}
        for flag, value in ticks.items():
            count = value / self.tick_s
            if not math.isfinite(value) or value < 0 or abs(count - round(count)) > 1e-9:
                raise ValueError(f"{flag} must be a whole number of {self.tick_s:g} s ticks, got {value}")
        if self.duration_s <= 0 or self.interval_s <= 0:
            raise ValueError(
                f"--duration and --interval must be positive, got {self.duration_s}, {self.interval_s}"
            )
        if not self.peak_rate > 0:
            raise ValueError(f"--peak-rate must be positive, got {self.peak_rate}")
        if not 0 < self.trough_share <= 1:
            raise ValueError(f"--trough-share must be within (0, 1], got {self.trough_share}")
        if not 0 <= self.critical_share <= 1:
            raise ValueError(f"--critical-share must be within [0, 1], got {self.critical_share}")
        if self.cv is not None and not self.cv > 0:
            raise ValueError(f"--cv must be positive, got {self.cv}")
        if self.model not in SHAPES:
            raise ValueError(f"--model must be one of {', '.join(SHAPES)}, got {self.model!r}")
        unknown = set(self.params) - set(POLICIES)
        if unknown:
            raise ValueError(f"plugin parameters for unknown policies: {', '.join(sorted(unknown))}")

    @property
    def nameplate_servers(self) -> int:
        """Serving servers the budget holds at nameplate power: no cap is ever needed."""
        return self.budget_servers - self.training_servers


def quick_settings(settings: Settings) -> Settings:
    """A small smoke run (the tests use it): a 5-server budget, 150 s, a short search."""
    return replace(
        settings, budget_servers=5, training_servers=1, duration_s=150.0, warmup_s=20.0, max_servers=6
    )


# --- the workload -------------------------------------------------------------------------------


def _load_shape(settings: Settings) -> Callable[[float], float]:
    """The cumulative offered load per server up to time t, in peak-rate seconds. The rate is
    the trough's through the warm-up W, then ``trough + (1 - trough) * sin(pi (t - W) / D)**2``
    of the peak over the measured D seconds: a compressed day, quiet, busy, quiet again."""
    lo, d, w = settings.trough_share, settings.duration_s, settings.warmup_s

    def cumulative(t: float) -> float:
        x = max(0.0, t - w)
        return lo * t + (1 - lo) * (x / 2 - d / (4 * math.pi) * math.sin(2 * math.pi * x / d))

    return cumulative


def deployment_requests(
    settings: Settings, replicas: int, lengths: list[tuple[int, int]], cv: float, seed: int
) -> list[Request]:
    """One Deployment's requests over the run: ``replicas`` servers' worth of the load shape.

    Unit-rate Gamma arrivals (``plugins.sim.workload.gamma``) are stretched in time by the
    rising and falling rate, and each request takes the lengths of a random BurstGPT row.
    The same seed at another replica count gives the same requests, closer together.
    """
    cumulative = _load_shape(settings)
    rate = replicas * settings.peak_rate
    end = settings.warmup_s + settings.duration_s
    total = rate * cumulative(end)  # expected arrivals
    grid_step = 0.05
    grid = [i * grid_step for i in range(int(end / grid_step) + 1)]
    loads = [rate * cumulative(t) for t in grid]
    count = int(total * 1.2 + 10 * math.sqrt(total) + 20)
    while True:
        unit = gamma(1.0, cv, count=count, seed=seed)
        if unit and unit[-1].arrival_s >= loads[-1]:
            break
        count *= 2
    pick = random.Random(f"{seed}:lengths")
    requests = []
    for r in unit:
        if r.arrival_s >= loads[-1]:
            break
        k = bisect.bisect_right(loads, r.arrival_s)  # loads[k-1] <= u < loads[k]
        lo_t, hi_t, lo_u, hi_u = grid[k - 1], grid[k], loads[k - 1], loads[k]
        at = lo_t + (hi_t - lo_t) * (r.arrival_s - lo_u) / (hi_u - lo_u)
        inp, out = pick.choice(lengths)
        requests.append(Request(len(requests), at, inp, out))
    return requests


def plugin(settings: Settings, policy: str) -> tuple[Any, BaseModel]:
    """The registered powercap plugin ``policy`` and its validated parameters; a ValueError
    names the flag and the parameter when they are refused."""
    impl = manager.get("powercap", policy)
    try:
        return impl, manager.validate_params(impl, settings.params.get(policy, {}))
    except manager.PluginError as exc:
        found = "; ".join(f"{d['field'].removeprefix('spec.params.')}: {d['message']}" for d in exc.details())
        raise ValueError(f"--{policy}-params refused: {found}") from None


# --- the fleet ----------------------------------------------------------------------------------


@dataclass
class _Server:
    """One 8-GPU server: a serving replica (``pool`` and ``slot``) or a training one."""

    node: str
    owner: str
    priority: int
    limits: list[float]
    pool: LivePool | None = None
    slot: int = 0
    seen: tuple[float, float, float] = (0.0, 0.0, 0.0)  # phase seconds read so far
    carry: tuple[float, float, float] = (0.0, 0.0, 0.0)  # busy time run past the last tick
    rows: float = 1.0  # the latest decode batch, on average
    energy: list[float] = field(default_factory=list)  # joules per GPU this interval
    busy: float = 0.0  # busy seconds this interval


@dataclass
class _Tally:
    """What a run counts as it goes."""

    over_s: float = 0.0
    peak_w: float = 0.0
    energy_j: float = 0.0
    caps: int = 0
    lifts: int = 0
    capped_gpu_s: dict[str, float] = field(default_factory=dict)
    max_capped: int = 0
    training_work: float = 0.0
    decisions: int = 0
    decide_s: float = 0.0
    notes: list[str] = field(default_factory=list)


class PowerSim:
    """One closed-loop run of a policy with ``servers`` serving servers (see the module doc)."""

    def __init__(self, settings: Settings, policy: str, servers: int, workload: Workload):
        self.settings = settings
        self.policy = policy
        self.model: PowerModel = power_model(settings.gpu_type)
        self.profile: GpuProfile = workload.profile
        self.budget = PowerBudget("bench", budget_watts(settings))
        self.plugin, self.params = plugin(settings, policy)
        n = settings.gpus_per_server
        top = self.model.tdp_watts
        critical = int(servers * settings.critical_share + 0.5)
        self.pools: dict[str, LivePool] = {}
        self.servers: list[_Server] = []
        for (name, priority), replicas in zip(DEPLOYMENTS, (critical, servers - critical), strict=True):
            if replicas < 1:
                continue
            requests = workload.requests(name, replicas)
            pool = LivePool(requests, self.profile, replicas, "least_loaded", attention="paged")
            self.pools[name] = pool
            for slot in range(replicas):
                self.servers.append(
                    _Server(
                        f"{name}-{slot}",
                        f"Deployment/{name}",
                        PRIORITY_NAMES[priority],
                        [top] * n,
                        pool,
                        slot,
                    )
                )
        for k in range(settings.training_servers):
            self.servers.append(_Server(f"train-{k}", TRAINING_OWNER, PRIORITY_NAMES["batch"], [top] * n))
        for server in self.servers:
            server.energy = [0.0] * n
        self.pending: dict[tuple[str, int], float | None] | None = None
        self.tally = _Tally(capped_gpu_s=dict.fromkeys(PRIORITY_NAMES, 0.0))
        self.classes = {value: name for name, value in PRIORITY_NAMES.items()}

    # -- one tick ------------------------------------------------------------------------------

    def _set_speed(self, server: _Server) -> None:
        if server.pool is None:
            return
        limit = min(server.limits)
        server.pool.set_scales(
            server.slot,
            self.model.slowdown("prefill", limit),
            self.model.slowdown("decode", limit, server.rows),
        )

    def _serving_draw(self, server: _Server, horizon: float, tick: float) -> float:
        """Account the tick's energy of a serving server's GPUs; returns their total draw."""
        assert server.pool is not None
        now = server.pool.phase_seconds(server.slot)
        p = now[0] - server.seen[0] + server.carry[0]
        d = now[1] - server.seen[1] + server.carry[1]
        r = now[2] - server.seen[2] + server.carry[2]
        server.seen = now
        busy = p + d
        spill = max(server.pool.clock(server.slot) - horizon, busy - tick, 0.0)
        if busy > 0 and spill > 0:  # the last step ran past the tick: its rest is the next tick's
            keep = max(0.0, 1.0 - spill / busy)
            server.carry = (p * (1 - keep), d * (1 - keep), r * (1 - keep))
            p, d, r = p * keep, d * keep, r * keep
        else:
            server.carry = (0.0, 0.0, 0.0)
        if d > 0:
            server.rows = r / d
        idle = max(0.0, tick - p - d)
        model = self.model
        prefill, decode, rest = (
            model.demand_watts("prefill"),
            model.demand_watts("decode", server.rows),
            model.idle_watts,
        )
        total = 0.0
        for j, limit in enumerate(server.limits):
            joules = p * min(prefill, limit) + d * min(decode, limit) + idle * min(rest, limit)
            server.energy[j] += joules
            total += joules
        server.busy += p + d
        return total / tick

    def _training_draw(self, server: _Server, tick: float) -> float:
        demand = self.model.demand_watts("train")
        total = 0.0
        for j, limit in enumerate(server.limits):
            joules = min(demand, limit) * tick
            server.energy[j] += joules
            total += joules
        server.busy += tick
        return total / tick

    # -- one decision --------------------------------------------------------------------------

    def _apply(self) -> None:
        """The agents' heartbeat: the limits decided one interval ago take effect, clamped."""
        if not self.pending:
            self.pending = None
            return
        top, low = self.model.tdp_watts, self.model.min_watts
        by_node = {server.node: server for server in self.servers}
        for (node, index), watts in self.pending.items():
            server = by_node.get(node)
            if server is None or not 0 <= index < len(server.limits):
                continue
            # Down to a tenth of a watt, never up: rounding up would hand out more than asked.
            new = top if watts is None or watts >= top else math.floor(max(low, float(watts)) * 10) / 10
            old = server.limits[index]
            if new < old:
                self.tally.caps += 1
            elif new > old and new >= top:
                self.tally.lifts += 1
            server.limits[index] = new
        self.pending = None

    def _decide(self) -> None:
        interval = self.settings.interval_s
        gpus = []
        for server in self.servers:
            utilisation = min(100.0, 100.0 * server.busy / interval)
            for j, limit in enumerate(server.limits):
                gpus.append(
                    GpuPower(
                        node=server.node, index=j, gpu_type=self.settings.gpu_type,
                        draw_watts=server.energy[j] / interval, limit_watts=limit,
                        min_watts=self.model.min_watts, max_watts=self.model.tdp_watts,
                        utilisation=round(utilisation, 2), owner=server.owner, priority=server.priority,
                    )
                )  # fmt: skip
            server.energy = [0.0] * len(server.limits)
            server.busy = 0.0
        started = time.perf_counter()
        decision = self.plugin.decide(budget=self.budget, gpus=gpus, params=self.params)
        self.tally.decide_s += time.perf_counter() - started
        self.tally.decisions += 1
        if len(self.tally.notes) < 20:
            self.tally.notes.extend(decision.notes[: 20 - len(self.tally.notes)])
        self.pending = dict(decision.limits)

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        s = self.settings
        tick = s.tick_s
        warmup = round(s.warmup_s / tick)
        ticks = warmup + round(s.duration_s / tick)
        per_interval = round(s.interval_s / tick)
        started = time.perf_counter()
        training = [server for server in self.servers if server.pool is None]
        for k in range(ticks):
            horizon = (k + 1) * tick
            if k == warmup:  # the measured window starts: what the warm-up drew does not count
                kept = self.tally
                self.tally = _Tally(capped_gpu_s=dict.fromkeys(PRIORITY_NAMES, 0.0))
                self.tally.caps, self.tally.lifts, self.tally.notes = kept.caps, kept.lifts, kept.notes
                self.tally.decisions, self.tally.decide_s = kept.decisions, kept.decide_s
            for server in self.servers:
                self._set_speed(server)
            for pool in self.pools.values():
                pool.run_until(horizon)
            draw = 0.0
            capped = 0
            for server in self.servers:
                if server.pool is not None:
                    draw += self._serving_draw(server, horizon, tick)
                else:
                    draw += self._training_draw(server, tick)
                bound = sum(1 for limit in server.limits if limit < self.model.tdp_watts)
                if bound:
                    capped += bound
                    self.tally.capped_gpu_s[self.classes[server.priority]] += bound * tick
            self.tally.max_capped = max(self.tally.max_capped, capped)
            if training:
                slowest = min(min(server.limits) for server in training)
                self.tally.training_work += self.model.speed("train", slowest) * tick
            self.tally.energy_j += draw * tick
            self.tally.peak_w = max(self.tally.peak_w, draw)
            if draw > self.budget.watts * (1 + 1e-9):
                self.tally.over_s += tick
            if (k + 1) % per_interval == 0:
                self._apply()
                self._decide()
        results = {name: pool.result() for name, pool in self.pools.items()}
        return self._report(results, time.perf_counter() - started)

    def _report(self, results: dict[str, SimResult], wall: float) -> dict[str, Any]:
        s = self.settings
        results = {  # only what arrived in the measured window
            name: SimResult(
                [r for r in result.requests if r.arrival_s >= s.warmup_s], s.duration_s, result.gpus
            )
            for name, result in results.items()
        }
        everything = [r for result in results.values() for r in result.requests]
        merged = SimResult(everything, s.duration_s, sum(result.gpus for result in results.values()))
        by_class = {
            name: round(result.attainment(s.ttft_ms, s.tpot_ms), 5) for name, result in results.items()
        }
        critical = results.get(DEPLOYMENTS[0][0])
        normal = results.get(DEPLOYMENTS[1][0])
        gpus = len(self.servers) * s.gpus_per_server
        return {
            "policy": self.policy,
            "params": self.params.model_dump(),
            "servers": sum(1 for server in self.servers if server.pool is not None),
            "trainingServers": s.training_servers,
            "gpus": gpus,
            "requests": len(everything),
            "sloAttainment": round(merged.attainment(s.ttft_ms, s.tpot_ms), 5),
            "attainmentByDeployment": by_class,
            "criticalRequests": len(critical.requests) if critical else 0,
            "criticalP99TtftMs": _ms(critical, "ttft"),
            "criticalP99E2eMs": _ms(critical, "e2e"),
            "normalP99TtftMs": _ms(normal, "ttft"),
            "secondsOverBudget": round(self.tally.over_s, 3),
            "peakDrawShare": round(self.tally.peak_w / self.budget.watts, 4),
            "meanDrawShare": round(self.tally.energy_j / s.duration_s / self.budget.watts, 4),
            "capsApplied": self.tally.caps,
            "capsLifted": self.tally.lifts,
            "cappedGpuSeconds": {k: round(v, 1) for k, v in self.tally.capped_gpu_s.items()},
            "maxCappedGpus": self.tally.max_capped,
            "trainingThroughput": round(self.tally.training_work / s.duration_s, 4)
            if s.training_servers
            else None,
            "decisions": self.tally.decisions,
            "decideMs": round(1e3 * self.tally.decide_s / max(1, self.tally.decisions), 3),
            "notes": self.tally.notes[:5],
            "wallSeconds": round(wall, 2),
        }


def _ms(result: SimResult | None, metric: str) -> float | None:
    """P99 of ``metric`` in ms (None without requests, or where it falls on a rejection)."""
    if result is None or not result.requests:
        return None
    value = result.percentile(metric, 99)
    return round(value * 1e3, 1) if math.isfinite(value) else None


@dataclass
class Workload:
    """The serving profile and the per-Deployment requests, shared by every run of a bench."""

    settings: Settings
    profile: GpuProfile
    lengths: list[tuple[int, int]]
    cv: float
    _cache: dict[tuple[str, int], list[Request]] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings) -> Workload:
        trace = load_trace(settings.trace)
        profile = estimate(
            settings.gpu_type, SHAPES[settings.model], tensor_parallel=settings.gpus_per_server
        )
        lengths = [(r.input_tokens, r.output_tokens) for r in trace.requests]
        cv = settings.cv if settings.cv is not None else trace.cv
        return cls(settings, profile, lengths, cv)

    def requests(self, deployment: str, replicas: int) -> list[Request]:
        key = (deployment, replicas)
        if key not in self._cache:
            seed = self.settings.seed * 2 + [name for name, _ in DEPLOYMENTS].index(deployment)
            self._cache[key] = deployment_requests(self.settings, replicas, self.lengths, self.cv, seed)
        return list(self._cache[key])  # the simulator reads requests, never changes them


def budget_watts(settings: Settings) -> float:
    """The Cluster's budget: ``budget_servers`` servers with every GPU at its TDP (nameplate)."""
    return settings.budget_servers * settings.gpus_per_server * power_model(settings.gpu_type).tdp_watts
